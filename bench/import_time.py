"""What ``import proxopt`` adds to ``import torch``: each in fresh interpreters,
alternating, median of the repeats (whole-process wall time, so the
interpreter's own start is in both and cancels in the difference).

    python bench/import_time.py [repeats]
"""

import statistics
import subprocess
import sys
import time


def _run(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    base, full = [], []
    _run("import torch, proxopt")  # warm the file cache
    for _ in range(repeats):
        base.append(_run("import torch"))
        full.append(_run("import torch, proxopt"))
    diffs = [b - a for a, b in zip(base, full)]
    print(f"import torch: {statistics.median(base):.3f} s; import torch, proxopt: {statistics.median(full):.3f} s; "
          f"proxopt adds {statistics.median(diffs):.3f} s (median of {repeats} paired runs)")
    check = subprocess.run([sys.executable, "-c", "import sys, proxopt; print('torch._dynamo' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    print(f"torch._dynamo imported by import proxopt: {check.stdout.strip()}")


if __name__ == "__main__":
    main()
