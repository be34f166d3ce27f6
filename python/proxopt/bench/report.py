"""Turning results into the table on stdout, the JSON file and the PNG plot."""

from __future__ import annotations

import json
import os
import sys

FAMILY_COLORS = {"proxopt": "#1f77b4", "torch": "#7f7f7f", "loss penalty": "#d62728", "prox pass": "#ff7f0e"}


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def header(doc: dict) -> str:
    m, c = doc["machine"], doc["config"]
    b = m["backend"]
    repeats = ", ".join(f"{g['param_set']}/{g['optimizer']} {g['repeats']}" for g in doc["groups"])
    lines = [
        f"proxopt-bench · proxopt {m['proxopt']} (backend {b['backend']}, simd {b.get('simd')}) · "
        f"torch {m['torch']} · Python {m['python']}",
        f"CPU: {m['cpu']} · {m['cpus_available']} CPUs available · {m['torch_threads']} torch threads · "
        f"device {m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''} · dtype {c['dtype']}",
        f"repeats: {repeats}; "
        f"interleaved round-robin; median and IQR (q3 - q1) over repeats; {c['warmup']} warmup steps; "
        f"a sample is >= {c['min_sample_ms']:g} ms of consecutive steps",
    ]
    # The run itself keeps about torch_threads CPUs busy; more load than that is someone else's.
    before, after = m.get("load_average_before"), m.get("load_average")
    others = max(before or 0.0, (after or 0.0) - m["torch_threads"])
    if others > 0.75:
        lines.append(f"WARNING: other processes kept ~{others:.1f} CPUs busy (load average {before or 0:.1f} before, "
                     f"{after or 0:.1f} after) on {m['cpus_available']} CPUs: times are inflated and noisy")
    return "\n".join(lines)


def group_table(g: dict) -> str:
    bw = g["bandwidth"]
    hyper = ", ".join(f"{k}={v}" for k, v in g["hyper"].items())
    out = [
        "",
        f"== {g['param_set']}: {_count(g['numel'])} params in {g['tensors']} tensors · "
        f"{g['optimizer_class']}({hyper}) · {g['dtype']} · {g['bytes_per_param']} B/param/step ==",
        f"memory bandwidth ({_count(g['numel'])} elements): copy {bw['copy_gbs']['median']:.3g}, "
        f"triad {bw['triad_gbs']['median']:.3g}, in-place axpy {bw['axpy_gbs']['median']:.3g} GB/s "
        f"-> roofline {bw['roofline_gbs']:.3g} GB/s = {bw['roofline_ms']:.3g} ms/step",
    ]
    w = max([len(v["name"]) for v in g["variants"]] + [20]) + 2
    cols = (f"{'variant':<{w + 2}}{'median ms':>11}{'IQR ms':>9}{'GB/s':>8}{'roofline':>10}{'vs proxopt':>12}"
            f"{'extra peak MiB':>16}")
    out += [cols, "-" * len(cols)]
    section = None
    for v in g["variants"]:
        if v["regularizer"] != section:
            section = v["regularizer"]
            out.append(f"[{section}]" if section != "none" else "[no regularizer]")
        out.append(
            f"  {v['name']:<{w}}{v['median_ms']:>11.3f}{v['iqr_ms']:>9.3f}{v['gbs']:>8.3g}"
            f"{100 * v['roofline_fraction']:>9.0f}%{v['ratio']:>12.2f}{_mib(v['extra_peak_bytes']):>16}"
        )
    if g["skipped"]:
        out.append(f"  not run (reasons in the JSON): {', '.join(s['name'] for s in g['skipped'])}")
    return "\n".join(out)


LEGEND = """
GB/s: the optimizer's own traffic (B/param/step x params) / time, for every row: extra passes show as lower GB/s.
roofline: that GB/s / the measured bandwidth (the best median of copy, triad and in-place axpy).
vs proxopt: time / time of the section's first proxopt row, median of the per-repeat ratios; > 1: proxopt is faster.
extra peak MiB: memory a step allocates beyond what existed before it (the least of a few steps)."""


def table(doc: dict) -> str:
    return "\n".join([header(doc)] + [group_table(g) for g in doc["groups"]] + [LEGEND])


def write_json(doc: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def write_plot(doc: dict, path: str) -> bool:
    """A horizontal bar chart per group (median, IQR whiskers, roofline line).
    Returns False, with a message, when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("proxopt-bench: matplotlib is not installed, no plot written "
              "(`pip install matplotlib`, or proxopt[bench])", file=sys.stderr)
        return False
    groups = doc["groups"]
    heights = [0.28 * len(g["variants"]) + 1.2 for g in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, sum(heights)), gridspec_kw={"height_ratios": heights},
                             squeeze=False)
    from matplotlib.patches import Patch

    for ax, g in zip(axes[:, 0], groups):
        vs = g["variants"][::-1]
        med = [v["median_ms"] for v in vs]
        err = [[v["median_ms"] - v["q1_ms"] for v in vs], [v["q3_ms"] - v["median_ms"] for v in vs]]
        ax.barh([v["name"] for v in vs], med, xerr=err, capsize=2,
                color=[FAMILY_COLORS.get(v["family"], "#999") for v in vs])
        ax.set_xscale("log")  # times span orders of magnitude
        roof = ax.axvline(g["bandwidth"]["roofline_ms"], color="k", linestyle="--", linewidth=1)
        handles = [Patch(color=c, label=f) for f, c in FAMILY_COLORS.items()] + [roof]
        labels = list(FAMILY_COLORS) + [f"roofline ({g['bandwidth']['roofline_gbs']:.3g} GB/s)"]
        ax.legend(handles, labels, fontsize=7, loc="best")
        ax.set_title(f"{g['param_set']} ({_count(g['numel'])} params, {g['tensors']} tensors) · "
                     f"{g['optimizer_class']} · {g['dtype']} · {g['device']}", fontsize=9)
        ax.set_xlabel("ms per step (median, IQR whiskers; log scale)")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
