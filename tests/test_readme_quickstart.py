"""The README's quick start runs as written: its first code block is a
complete script, and the block after it continues that script."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import proxopt

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _quick_start_blocks() -> list[str]:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_quick_start_runs_as_written(tmp_path):
    first, second = _quick_start_blocks()[:2]
    # The first block is the whole script; the second continues it (run after
    # it, in the same process: one interpreter start, and the first block's
    # output comes first).
    script = tmp_path / "quickstart.py"
    script.write_text(first + "\n" + second)
    # proxopt as this test imported it (a checkout on PYTHONPATH, or installed)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(proxopt.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the first block's sparsity report ends with the total: L1 made exact zeros
    total = re.search(r"^total\s+(\d+\.\d+)%", proc.stdout, flags=re.M)
    assert total is not None, proc.stdout
    assert float(total.group(1)) > 10.0, proc.stdout
    # the second block's report compares the regularized tensors with the target
    assert re.search(r"^target\s+50\.00%", proc.stdout, flags=re.M), proc.stdout
