"""Closed-loop evaluation: every controller on the identical scenario set, the same metrics for all.

Per controller: conflicts and losses of separation (atc-il detection on the true tracks), LoS
severity (1 - closest horizontal distance / protected radius, averaged over LoS episodes), the share of
conflict pairs resolved (a pair is unresolved only if it later loses separation), clearances issued,
extra track miles (distance flown minus the great-circle distance between where the flight entered
and left, summed over flights; the generated routes are straight), mean absolute deviation from the
planned level, and, against the synthetic expert on the same scenarios, agreement in aircraft, type
and timing of the clearance closest in time (within 120 s, on either aircraft) to the expert's first
clearance for each conflict pair it acted on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from atc_il.config import ConflictConfig
from atc_il.geometry import haversine_nm
from atc_il.io import write_json
from simulator_adapters.rollout import RolloutResult
from simulator_adapters.scenarios import Scenario

AGREE_WINDOW_S = 120.0


def rollout_metrics(res: RolloutResult, scenario: Scenario, cfg: ConflictConfig = ConflictConfig()) -> dict:
    from pipelines.conflicts import build_episodes, detect
    tr = res.tracks
    conf = detect(tr, cfg, progress=False) if len(tr) else pd.DataFrame()
    eps, _ = build_episodes(conf, tr, cfg) if len(conf) else (pd.DataFrame(), None)
    n_pairs = len(eps)
    los = eps[eps["los"]] if n_pairs else eps
    resolved = 1.0 if n_pairs == 0 else 1.0 - len(los) / n_pairs
    severity = float((1 - los["min_dist_nm"] / cfg.rpz_nm).clip(lower=0).mean()) if len(los) else 0.0
    tr = tr.sort_values(["flight_id", "time"], kind="stable")
    lat, lon, fid = tr["lat_deg"].to_numpy(), tr["lon_deg"].to_numpy(), tr["flight_id"].to_numpy()
    same = fid[1:] == fid[:-1]
    seg = np.where(same, haversine_nm(lat[:-1], lon[:-1], lat[1:], lon[1:]), 0.0)
    flown = pd.Series(seg, index=fid[1:]).groupby(level=0).sum()
    ends = tr.groupby("flight_id").agg(lat0=("lat_deg", "first"), lon0=("lon_deg", "first"),
                                       lat1=("lat_deg", "last"), lon1=("lon_deg", "last"))
    direct = pd.Series(haversine_nm(ends["lat0"], ends["lon0"], ends["lat1"], ends["lon1"]), index=ends.index)
    extra = float((flown.reindex(direct.index).fillna(0) - direct).clip(lower=0).sum())
    plan = pd.Series({f.flight_id: f.cleared_alt_ft for f in scenario.flights})
    level_dev = float((tr["alt_ft"] - tr["flight_id"].map(plan)).abs().mean()) if len(tr) else 0.0
    return {"scenario": res.scenario, "controller": res.controller, "conflicts": n_pairs, "los": len(los),
            "los_severity": severity, "resolved_pct": 100 * resolved, "clearances": len(res.actions),
            "extra_track_nm": extra, "level_dev_ft": level_dev, "wall_s": res.meta.get("wall_s"),
            "style": res.meta.get("style")}


def agreement(res: RolloutResult, expert: RolloutResult) -> dict:
    """First clearance per conflict pair that the expert acted on, compared with ``res``'s clearances."""
    t = expert.truth
    if t.empty or not t["acted"].any():
        return {"pairs": 0, "aircraft_agree": np.nan, "type_agree": np.nan, "timing_mae_s": np.nan}
    acted = t[t["acted"]].sort_values("sim_s").drop_duplicates(["flight_id_1", "flight_id_2"])
    ac = res.actions.copy()
    ac["sim_s"] = (ac["time"] - res.meta["t0"]).dt.total_seconds() if len(ac) else []
    n, same_ac, same_type, dts = 0, 0, 0, []
    for r in acted.itertuples():
        n += 1
        cand = ac[ac["flight_id"].isin([r.flight_id_1, r.flight_id_2]) & (ac["action_type"] != "resume")
                  & ((ac["sim_s"] - r.sim_s).abs() <= AGREE_WINDOW_S)] if len(ac) else ac
        if len(cand) == 0:
            continue
        first = cand.loc[(cand["sim_s"] - r.sim_s).abs().idxmin()]
        chosen = r.flight_id_1 if r.aircraft == 0 else r.flight_id_2
        same_ac += int(first["flight_id"] == chosen)
        same_type += int(first["action_type"] == r.action_type)
        dts.append(abs(first["sim_s"] - r.sim_s))
    return {"pairs": n, "aircraft_agree": same_ac / n, "type_agree": same_type / n,
            "timing_mae_s": float(np.mean(dts)) if dts else np.nan, "answered": len(dts) / n}


def simeval(controllers: list[str], n_scenarios: int, seed: int, out: str | Path, scenario_kwargs: dict | None = None,
            progress: bool | None = None, workers: int = 1) -> pd.DataFrame:
    """Run each controller on the same scenarios; write results.json, results.md and plots; return the table.
    ``workers`` > 1: the scenarios in that many parallel BlueSky processes (:func:`run_parallel`; a script calling
    this needs the ``if __name__ == "__main__":`` guard), each running every controller on its share; the results
    are the same as with one (every rollout is seeded by its scenario)."""
    from atc_il.progress import track
    from simulator_adapters.scenarios import scenario_set

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scenarios = scenario_set(n_scenarios, seed, **(scenario_kwargs or {}))
    names = list(dict.fromkeys(["atco"] + list(controllers)))      # the expert runs for agreement
    n = max(1, min(int(workers), len(scenarios)))
    if n == 1:
        from simulator_adapters.bluesky_sim import BlueSkySim
        with BlueSkySim() as sim:
            rows = [r for sc in track(scenarios, "simeval", show=progress)
                    for r in _simeval_scenario(sim, sc, names, controllers)]
    else:
        from simulator_adapters.parallel import run_parallel
        items = [(i, sc.to_json()) for i, sc in enumerate(scenarios)]
        done = run_parallel(_simeval_batch, [(items[k::n], names, list(controllers)) for k in range(n)], workers=n)
        rows = [r for _, part in sorted((x for b in done for x in b), key=lambda x: x[0]) for r in part]
    per = pd.DataFrame(rows)
    per.to_csv(out / "per_scenario.csv", index=False)
    agg = per.groupby("controller", sort=False).agg(
        scenarios=("scenario", "count"), conflicts=("conflicts", "sum"), los=("los", "sum"),
        los_severity=("los_severity", "mean"), resolved_pct=("resolved_pct", "mean"),
        clearances=("clearances", "sum"), extra_track_nm=("extra_track_nm", "sum"),
        level_dev_ft=("level_dev_ft", "mean"), agree_aircraft=("agree_aircraft_agree", "mean"),
        agree_type=("agree_type_agree", "mean"), agree_timing_mae_s=("agree_timing_mae_s", "mean"))
    agg = agg.reindex(controllers).reset_index()
    write_json({"seed": seed, "scenarios": n_scenarios, "results": agg.to_dict("records")}, out / "results.json")
    (out / "results.md").write_text(markdown_table(agg))
    _plot(agg, out / "results.png")
    return agg


def _simeval_scenario(sim, sc: Scenario, names: list[str], controllers: list[str]) -> list[dict]:
    """Every controller of ``names`` on one scenario; the rows of ``controllers`` (agreement with the expert's run)."""
    from simulator_adapters.controller_registry import make_controller
    from simulator_adapters.rollout import rollout
    runs = {name: rollout(sc, make_controller(name), sim, seed=sc.seed) for name in names}
    rows = []
    for name in controllers:
        m = rollout_metrics(runs[name], sc)
        m.update({f"agree_{k}": v for k, v in agreement(runs[name], runs["atco"]).items()})
        rows.append(m)
    return rows


def _simeval_batch(job: tuple[list[tuple[int, str]], list[str], list[str]]) -> list[tuple[int, list[dict]]]:
    """A worker's share of :func:`simeval`: (scenario index, its rows) for each scenario, on one BlueSky."""
    from simulator_adapters.bluesky_sim import BlueSkySim
    items, names, controllers = job
    with BlueSkySim() as sim:
        return [(i, _simeval_scenario(sim, Scenario.from_json(js), names, controllers)) for i, js in items]


def markdown_table(df: pd.DataFrame) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _plot(agg: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = [("los", "losses of separation"), ("resolved_pct", "conflicts resolved (%)"),
            ("clearances", "clearances"), ("extra_track_nm", "extra track miles (NM)")]
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.2))
    for ax, (c, title) in zip(axes, cols):
        ax.bar(agg["controller"], agg[c], color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][:len(agg)])
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
