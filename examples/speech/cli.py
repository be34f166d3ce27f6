"""What the three commands (``kws``, ``denoise``, ``tts``) share on the
command line: run lists, option parsers for argparse, progress on stderr,
the thread count."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


def parse_runs(text: str, names: Sequence[str], option: str = "--runs", aliases: Mapping[str, str] | None = None) -> list[str]:
    """The run names of ``option``'s comma-separated value: known (after
    ``aliases``), each once."""
    runs = [r.strip() for r in text.split(",") if r.strip()]
    runs = [(aliases or {}).get(r, r) for r in runs]
    bad = [r for r in runs if r not in names]
    if bad or not runs:
        raise ValueError(f"Invalid {option} value: {bad or text!r} (choose from {', '.join(names)})")
    twice = sorted({r for r in runs if runs.count(r) > 1})
    if twice:
        raise ValueError(f"Invalid {option} value: {text!r} lists {', '.join(twice)} more than once")
    return runs


def as_argparse(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` for argparse: its ValueError message becomes the usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__.lstrip("_")
    return convert


def add_run_args(p: argparse.ArgumentParser) -> None:
    """``--seed``, ``--threads``, ``--cache``, ``--quiet``: every command has them."""
    p.add_argument("--seed", type=int, default=0, help="seed of the data (split, noise, corpus) and of the training (unless --seeds)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a small machine shared with other work, more threads oversubscribe; "
        "0 keeps torch's default)",
    )
    p.add_argument("--cache", help="corpus cache directory (default $PROXOPT_CACHE or ~/.cache/proxopt)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def start(args) -> Callable[[str], None]:
    """Apply ``--threads``; the progress log of ``--quiet`` (stderr, or nothing)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quiet:
        return lambda s: None
    return lambda s: print(s, file=sys.stderr, flush=True)
