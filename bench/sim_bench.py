"""Closed-loop simulation throughput at 10, 100 and 500 aircraft with no controller, the synthetic expert
and a learned model in control (``model:URI``, default: the default configuration), and each controller's
overhead per decision step, side by side on identical scenarios.

    .venv/bin/python bench/sim_bench.py [--sizes 10 100 500] [--duration 600] [--model URI ...]

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

    def __getattr__(self, name):          # name, sim_resolution, spawn_commands, style...: the controller's
        return getattr(self.inner, name)

    def reset(self, *a):
        self.inner.reset(*a)

    def decide(self, obs):
        t = time.perf_counter()
        d = self.inner.decide(obs)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return d


def default_model(workdir: Path) -> str:
    """The default configuration (gru_mdn) trained briefly on a small sample, as bench/predict_bench.py builds
    it (cached in ``workdir``): the forward pass costs the same whatever the weights."""
    from predict_bench import make_model
    return str(make_model(workdir / "gru_mdn", "gru_mdn"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500])
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--model", action="append", default=None,
                    help="a model URI to put in control (repeatable); default: the default configuration "
                         "(gru_mdn) trained briefly, built in --workdir")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/atc-il-predict"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from simulator_adapters.bluesky_sim import BlueSkySim
    from simulator_adapters.controller_registry import make_controller
    from simulator_adapters.rollout import rollout

    models = args.model or [default_model(args.workdir)]
    names = ["none", "atco"] + [f"model:{m}" for m in models]
    label = {"none": "no controller", "atco": "synthetic expert"}
    label.update({f"model:{m}": f"model {i + 1}" for i, m in enumerate(models)})
    rows = []
    with BlueSkySim() as sim:
        rollout(dense_scenario(10, 120.0, seed=0), make_controller("none"), sim, seed=1)    # warm-up, untimed
        for n in args.sizes:
            sc = dense_scenario(n, args.duration, seed=n)
            base = None
            for name in names:
                ctrl = Timed(make_controller(name))
                t = time.perf_counter()
                r = rollout(sc, ctrl, sim, seed=1)
                wall = time.perf_counter() - t
                steps = r.meta["decision_steps"]
                base = wall if base is None else base
                row = (n, label[name], args.duration / wall, wall / base, (wall - base) / steps * 1e3,
                       ctrl.seconds / max(ctrl.calls, 1) * 1e3, len(r.actions))
                rows.append(row)
                print(f"{n:5d} aircraft, {label[name]:16s}: {row[2]:7.1f} sim s/wall s (wall x{row[3]:.2f} of none), "
                      f"overhead {row[4]:.2f} ms/step, decide {row[5]:.2f} ms, {row[6]} clearances", flush=True)
    lines = ["| aircraft | controller | sim s / wall s | wall time vs no controller | overhead per decision step (ms) "
             "| decide() per step (ms) | clearances |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {c} | {a:.1f} | {r:.2f} | {o:.2f} | {d:.2f} | {k} |" for n, c, a, r, o, d, k in rows]
    import torch
    body = (f"`.venv/bin/python bench/sim_bench.py --sizes {' '.join(map(str, args.sizes))} --duration {args.duration:g}"
            f"{''.join(' --model ' + m for m in args.model or [])}`: "
            f"BlueSky 1.1.1, CSTATEBASED, DT 1 s, decision step 5 s, all aircraft present from t = 0, "
            f"{args.duration:g} simulated seconds per run, identical scenario for every controller. Every row includes "
            "the loop's state reads, radar noise and atc-il detection; a controller's own cost is the overhead column "
            f"(wall time above the no-controller row, per decision step). Models: "
            + "; ".join(f"model {i + 1} = `{m}`" for i, m in enumerate(models))
            + f" (PyTorch, {torch.get_num_threads()} threads; the sampling controller, `model:URI`).\n\n"
            + "\n".join(lines))
    print(body)
    if not args.no_record:
        append_results("Simulation throughput: BlueSky alone, the synthetic expert and a learned model in control "
                       "(bench/sim_bench.py)", body)


if __name__ == "__main__":
    main()
