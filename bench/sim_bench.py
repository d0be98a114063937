"""Simulation throughput with the synthetic expert in the loop, at 10, 100 and 500 aircraft, and the
controller's overhead per decision step, side by side with no controller on identical scenarios.

    .venv/bin/python bench/sim_bench.py [--sizes 10 100 500] [--duration 600]

Every run: BlueSky (CSTATEBASED detection, DT 1 s), decision step 5 s (state read, radar noise,
atc-il detection for the controller, the controller's decision, its clearances). Appends to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import append_results  # noqa: E402


def dense_scenario(n: int, duration_s: float, seed: int):
    """n aircraft all present from the start (spawned at t = 0) in a box sized for en-route density,
    with about n/10 injected conflict pairs."""
    from simulator_adapters.scenarios import Scenario, ScenarioSpec, Sector, _Builder
    half = max(40.0, 8.0 * np.sqrt(n))
    spec = ScenarioSpec(name=f"bench{n}", seed=seed, half_size_nm=half, duration_s=duration_s, density=0,
                        conflicts=0)
    b = _Builder(spec)
    for j in range(max(1, n // 20)):
        b.conflict(j)
    r = b.rng
    while len(b.flights) < n:
        x, y = r.uniform(-0.9 * half, 0.9 * half, 2)
        b.flight(f"BG{len(b.flights):04d}", 0.0, x, y, r.uniform(0, 360), b.level(), r.uniform(0.74, 0.79))
    flights = [replace(f, spawn_s=0.0) for f in b.flights]
    return Scenario(spec.name, seed, duration_s, Sector.box(spec.center_lat_deg, spec.center_lon_deg, half * 1.5),
                    flights, [], spec.model_dump(mode="json"))


class Timed:
    """Wraps a controller and times its decide() calls."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0
        self.name, self.sim_resolution = inner.name, inner.sim_resolution

    def reset(self, *a):
        self.inner.reset(*a)

    def decide(self, obs):
        t = time.perf_counter()
        d = self.inner.decide(obs)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500])
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from simulator_adapters.bluesky_sim import BlueSkySim
    from simulator_adapters.controller_registry import make_controller
    from simulator_adapters.rollout import rollout

    rows = []
    with BlueSkySim() as sim:
        for n in args.sizes:
            sc = dense_scenario(n, args.duration, seed=n)
            res = {}
            for name in ("none", "atco"):
                ctrl = Timed(make_controller(name))
                t = time.perf_counter()
                r = rollout(sc, ctrl, sim, seed=1)
                wall = time.perf_counter() - t
                res[name] = (wall, ctrl.seconds / max(ctrl.calls, 1), r.meta["decision_steps"], len(r.actions))
            (w0, _, steps, _), (w1, dec, _, clr) = res["none"], res["atco"]
            rows.append((n, args.duration / w0, args.duration / w1, w1 / w0, (w1 - w0) / steps * 1e3, dec * 1e3, clr))
            print(f"{n:5d} aircraft: none {args.duration / w0:7.1f} sim s/wall s, atco {args.duration / w1:7.1f} "
                  f"(ratio {w1 / w0:.2f}), overhead {(w1 - w0) / steps * 1e3:.2f} ms/step, decide {dec * 1e3:.2f} ms, "
                  f"{clr} clearances", flush=True)
    lines = ["| aircraft | no controller: sim s / wall s | synthetic expert: sim s / wall s | wall ratio expert/none "
             "| expert overhead per decision step (ms) | decide() per step (ms) | clearances |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {a:.1f} | {b:.1f} | {r:.2f} | {o:.2f} | {d:.2f} | {c} |" for n, a, b, r, o, d, c in rows]
    body = (f"`.venv/bin/python bench/sim_bench.py --sizes {' '.join(map(str, args.sizes))} --duration {args.duration:g}`: "
            f"BlueSky 1.1.1, CSTATEBASED, DT 1 s, decision step 5 s, all aircraft present from t = 0, "
            f"{args.duration:g} simulated seconds per run, identical scenario for both controllers. Both columns include "
            "the loop's state reads, radar noise and atc-il detection; the expert's own cost is the overhead column.\n\n"
            + "\n".join(lines))
    print(body)
    if not args.no_record:
        append_results("Simulation throughput with the synthetic expert in the loop (bench/sim_bench.py)", body)


if __name__ == "__main__":
    main()
