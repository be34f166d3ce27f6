"""What the numbers were measured on."""

from __future__ import annotations

import os
import platform

import torch

import proxopt


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """1-minute load average: other work on the machine that the timings share it with."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def info(device: str) -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    out = {
        "cpu": cpu_model(),
        "cpus_available": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "proxopt": proxopt.__version__,
        "backend": proxopt.backend_info(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "load_average": load_average(),
    }
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out
