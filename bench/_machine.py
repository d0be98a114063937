"""Describe the machine a benchmark ran on (for bench/RESULTS.md)."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime


def describe() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 1024 ** 2:.0f} GiB RAM"
                break
    except OSError:
        pass
    import numpy
    import pandas
    return (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {cpu}, {os.cpu_count()} cores{mem}; "
            f"Python {platform.python_version()}, numpy {numpy.__version__}, pandas {pandas.__version__}")


def append_results(section: str, body: str, path: str = None) -> None:
    path = path or os.path.join(os.path.dirname(__file__), "RESULTS.md")
    new = not os.path.exists(path)
    with open(path, "a") as fh:
        if new:
            fh.write("# Benchmark results\n\nEach section is appended by the script named in it; newest last.\n")
        fh.write(f"\n## {section}\n\nMachine: {describe()}\n\n{body.rstrip()}\n")


def fmt(v) -> str:
    """A table cell: "-" for missing or NaN, 3 significant digits for floats."""
    import math
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)
