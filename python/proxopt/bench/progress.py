"""A progress display on stderr, drawn by rich (required by the ``bench``
extra). The table goes to stdout, so progress never mixes into it."""

from __future__ import annotations

import sys


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
