"""The benchmark command: ``python -m proxopt.bench`` or ``proxopt-bench``.

Races proxopt's fused regularized step against torch.optim and against the
usual Python ways of regularizing, on parameter sets shaped like speech
models, side by side in one process. ``proxopt-bench --help`` for options.
"""

from .cli import main

__all__ = ["main"]
