"""Progress: a bar on stderr, drawn by rich (required by the ``bench``
extra), and one line per finished section on stdout when stdout is not a
terminal (a log file, a pipe, a batch job), before the table."""

from __future__ import annotations

import sys
import time


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


class _Null:
    def update(self, advance: int = 0, desc: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def make(total: int, enabled: bool = True):
    """rich's progress bar; none (said once) when rich is not installed."""
    if not enabled:
        return _Null()
    try:
        return _Rich(total)
    except ImportError:
        print("proxopt-bench: no progress display (rich is not installed: `pip install proxopt[bench]`)", file=sys.stderr)
        return _Null()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class SectionLines:
    """One line per finished section (a parameter set x optimizer x thread
    count), flushed at once, when stdout is not a terminal: a redirected run
    would otherwise show nothing until the table at the end (the bar is on
    stderr, and a pipe or a file is block-buffered)."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def finished(self, group: dict) -> None:
        self.done += 1
        out = sys.stdout  # (looked up now: whatever stdout is at the time)
        if _is_terminal(out):
            return  # the table will follow on the screen; the bar shows the progress
        plain = next((f"; proxopt {v['median_ms']:.3g} ms/step" for v in group["variants"] if v["name"] == "proxopt"), "")
        threads = f"{group['threads']} thread{'s' if group['threads'] != 1 else ''}"
        print(f"[{self.done}/{self.total}] {group['param_set']}/{group['optimizer']}, {threads}: "
              f"{group['repeats']} repeats in {group['elapsed_s']:.1f} s{plain} "
              f"({time.perf_counter() - self.start:.0f} s elapsed)", file=out, flush=True)
