"""A progress display on stderr: rich if installed, else tqdm, else plain lines.
The table goes to stdout, so progress never mixes into it."""

from __future__ import annotations

import sys
import time


class _Plain:
    """One line per task and at most one every few seconds: readable in CI logs."""

    def __init__(self, total: int):
        self.total, self.done, self.last, self.desc = total, 0, 0.0, ""

    def update(self, advance: int = 0, desc: str | None = None) -> None:
        self.done += advance
        now = time.monotonic()
        if desc is not None and desc != self.desc or now - self.last > 5:
            self.desc = desc or self.desc
            self.last = now
            print(f"[{100 * self.done / max(self.total, 1):3.0f}%] {self.desc}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class _Tqdm:
    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, file=sys.stderr, unit="step", leave=False)

    def update(self, advance: int = 0, desc: str | None = None) -> None:
        if desc is not None:
            self.bar.set_description(desc)
        self.bar.update(advance)

    def close(self) -> None:
        self.bar.close()


class _Rich:
    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
            refresh_per_second=2,  # its thread shares the CPUs being measured: keep it idle
        )
        self.progress.start()
        self.task = self.progress.add_task("", total=total)

    def update(self, advance: int = 0, desc: str | None = None) -> None:
        kwargs = {"description": desc} if desc is not None else {}
        self.progress.update(self.task, advance=advance, **kwargs)

    def close(self) -> None:
        self.progress.stop()


def make(total: int, enabled: bool = True):
    """The best display available; says once when it falls back to plain lines."""
    if not enabled:
        return _Null()
    for cls in (_Rich, _Tqdm):
        try:
            return cls(total)
        except ImportError:
            continue
    print("proxopt-bench: rich (or tqdm) is not installed, showing plain progress lines; "
          "`pip install rich` (or proxopt[bench]) for a progress bar", file=sys.stderr)
    return _Plain(total)


class _Null:
    def update(self, advance: int = 0, desc: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass
