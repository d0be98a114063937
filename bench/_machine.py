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


def save_figure(fig, path) -> None:
    """Lay out, write (110 dpi) and close a matplotlib figure."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_cache_args(ap, scenarios: int = 160, test: int = 30, val: int = 20) -> None:
    """bench/fidelity.py's demonstration cache as arguments (``--cache --scenarios --test --val``): the benchmarks
    that reuse its simulations and data set take the same ones."""
    from pathlib import Path
    ap.add_argument("--cache", type=Path, default=Path("/tmp/atc-il-fidelity"), help="fidelity.py's cache: simulations "
                    "and data set (reused when present)")
    ap.add_argument("--scenarios", type=int, default=scenarios, help="simulated demonstration scenarios (cache)")
    ap.add_argument("--test", type=int, default=test, help="held-out test scenarios")
    ap.add_argument("--val", type=int, default=val, help="validation scenarios")
