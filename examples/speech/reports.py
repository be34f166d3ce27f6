"""What every recipe writes: the text table, ``<name>.json`` with the
configuration, the environment and every run, and the PNG figures (drawn
with matplotlib when it is installed)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import proxopt
import torch

Column = tuple[str, Callable[[Any], str]]  # header, the cell of a result


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells (the first is the header) as aligned text columns, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def results_table(results: Sequence[Any], columns: Sequence[Column]) -> str:
    """One row per result, one column per (header, cell)."""
    return text_table([tuple(h for h, _ in columns)] + [tuple(cell(r) for _, cell in columns) for r in results])


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only), or None when matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    return plt


def bars(ax, labels: Sequence[str], series: Sequence[tuple[Sequence[float], str | None, Any]], *, ylabel: str, title: str,
         annotate: bool = False) -> None:  # fmt: skip
    """One group of bars per run (labelled under it), one bar per
    ``(values, legend label, color)`` of ``series``, side by side; the value
    over each bar when ``annotate``."""
    x = list(range(len(labels)))
    width = 0.8 / len(series)
    for k, (values, name, color) in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * width
        ax.bar([i + offset for i in x], values, width, label=name, color=color)
        if annotate:
            for i, v in enumerate(values):
                ax.text(i + offset, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    if any(name for _, name, _ in series):
        ax.legend(fontsize=8)


def save_figure(plt, fig, path: Path, title: str | None = None, dpi: int = 110) -> Path:
    if title is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def environment() -> dict[str, Any]:
    try:
        backend = proxopt.backend_info()
    except Exception as e:  # pragma: no cover
        backend = {"error": str(e)}
    return {
        "torch": torch.__version__,
        "proxopt": getattr(proxopt, "__version__", "?"),
        "backend": backend,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def write_reports(
    out: Path, name: str, text: str, payload: dict[str, Any], figures: dict[str, Callable[[Path], Path | None]] | None = None
) -> dict[str, Any]:
    """``<name>.txt`` (``text``), ``<name>.json`` (``payload``, the
    environment after its config) and each figure ``key`` drawn by
    ``draw(path)`` at ``<name>.png`` (key ``png``) or ``<name>_<key>.png``.
    Returns the paths by key (``table``, ``json``, the figures drawn)."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"table": out / f"{name}.txt", "json": out / f"{name}.json"}
    paths["table"].write_text(text + "\n")
    payload = {"config": payload.get("config"), "environment": environment(), **payload}
    paths["json"].write_text(json.dumps(payload, indent=2, default=float))
    for key, draw in (figures or {}).items():
        if (png := draw(out / (f"{name}.png" if key == "png" else f"{name}_{key}.png"))) is not None:
            paths[key] = png
    return paths
