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
    repeats = ", ".join(f"{g['param_set']}/{g['optimizer']}/{g.get('threads', '?')}t {g['repeats']}" for g in doc["groups"])
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
    if loaded(doc):
        lines.append(f"WARNING: other processes kept ~{others:.1f} CPUs busy (load average {before or 0:.1f} before, "
                     f"{after or 0:.1f} after) on {m['cpus_available']} CPUs: times are inflated and noisy, "
                     "every ratio is marked unreliable (?)")
    return "\n".join(lines)


def loaded(doc: dict) -> bool:
    """Whether other processes kept more than ~3/4 of a CPU busy during the run."""
    m = doc["machine"]
    before, after = m.get("load_average_before"), m.get("load_average")
    return max(before or 0.0, (after or 0.0) - m["torch_threads"]) > 0.75


def mark_reliability(doc: dict) -> None:
    """A machine under other load makes every ratio unreliable (in the JSON too)."""
    if loaded(doc):
        for g in doc["groups"]:
            for v in g["variants"]:
                v["ratio_reliable"] = False
                if "vs_plain" in v:
                    v["vs_plain_reliable"] = False


def _ratio(x: float | None, reliable: bool) -> str:
    return "" if x is None else f"{x:.2f}{'' if reliable else '?'}"


def group_table(g: dict) -> str:
    bw = g["bandwidth"]
    hyper = ", ".join(f"{k}={v}" for k, v in g["hyper"].items())
    out = [
        "",
        f"== {g['param_set']}: {_count(g['numel'])} params in {g['tensors']} tensors · "
        f"{g['optimizer_class']}({hyper}) · {g['dtype']} · {g['bytes_per_param']} B/param/step · "
        f"{g.get('threads', '?')} thread(s) ==",
        f"memory bandwidth ({_count(g['numel'])} elements): copy {bw['copy_gbs']['median']:.3g}, "
        f"triad {bw['triad_gbs']['median']:.3g}, in-place axpy {bw['axpy_gbs']['median']:.3g} GB/s "
        f"-> roofline {bw['roofline_gbs']:.3g} GB/s = {bw['roofline_ms']:.3g} ms/step",
    ]
    w = max([len(v["name"]) for v in g["variants"]] + [20]) + 2
    cols = (f"{'variant':<{w + 2}}{'median ms':>11}{'IQR ms':>9}{'GB/s':>8}{'roofline':>10}{'vs proxopt':>12}"
            f"{'vs plain':>10}{'extra peak MiB':>16}")
    out += [cols, "-" * len(cols)]
    section = None
    for v in g["variants"]:
        if v["regularizer"] != section:
            section = v["regularizer"]
            out.append(f"[{section}]" if section != "none" else "[no regularizer]")
        out.append(
            f"  {v['name']:<{w}}{v['median_ms']:>11.3f}{v['iqr_ms']:>9.3f}{v['gbs']:>8.3g}"
            f"{100 * v['roofline_fraction']:>9.0f}%{_ratio(v['ratio'], v.get('ratio_reliable', True)):>12}"
            f"{_ratio(v.get('vs_plain'), v.get('vs_plain_reliable', True)):>10}{_mib(v['extra_peak_bytes']):>16}"
        )
    if g["skipped"]:
        out.append(f"  not run (reasons in the JSON): {', '.join(s['name'] for s in g['skipped'])}")
    return "\n".join(out)


LEGEND = """
GB/s: the optimizer's own traffic (B/param/step x params) / time, for every row: extra passes show as lower GB/s.
roofline: that GB/s / the measured bandwidth (the best median of copy, triad and in-place axpy).
vs proxopt: time / time of the section's first proxopt row, median of the per-repeat ratios; > 1: proxopt is faster.
vs plain: a proxopt row's time / proxopt's plain step on the same tensors: what the regularizer costs.
?: unreliable -- fewer than 5 repeats, the ratio's IQR above 10% of it, or a machine under other load.
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
        ax.barh(range(len(vs)), med, xerr=err, capsize=2, color=[FAMILY_COLORS.get(v["family"], "#999") for v in vs])
        ax.set_yticks(range(len(vs)), [v["name"] for v in vs])
        ax.set_xscale("log")  # times span orders of magnitude
        # one band per regularizer section, separated by a line and labelled
        for i in range(1, len(vs)):
            if vs[i]["regularizer"] != vs[i - 1]["regularizer"]:
                ax.axhline(i - 0.5, color="#bbb", linewidth=0.8)
        ax.axvline(g["bandwidth"]["roofline_ms"], color="k", linestyle="--", linewidth=1)
        ax.set_title(f"{g['param_set']} ({_count(g['numel'])} params, {g['tensors']} tensors) · "
                     f"{g['optimizer_class']} · {g['dtype']} · {g['device']} · {g.get('threads', '?')} thread(s)",
                     fontsize=9)
        ax.set_xlabel("ms per step (median, IQR whiskers; log scale)")
        ax.tick_params(axis="y", labelsize=7)
    # one legend for the figure, below the plots, where it covers no bar
    handles = [Patch(color=c, label=f) for f, c in FAMILY_COLORS.items()]
    handles.append(plt.Line2D([], [], color="k", linestyle="--", label="memory-bandwidth roofline"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / sum(heights), 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
