"""Helpers shared by the tests (tests import this module, never each other).

- tracks and workspaces: :func:`grid_tracks`, :data:`FLIGHTS`, :func:`pair_samples`, :func:`actions_frame`,
  :func:`workspace` (every stage's output for a few days of a two-aircraft conflict);
- models: :func:`model_spec` (behind the ``spec`` fixture of conftest.py), :func:`make_obs`,
  :func:`make_dec`, :func:`check_policy_interface`;
- :func:`simulated_dataset`: demonstrations of the synthetic expert in BlueSky and their data set, split by
  scenario (the user's chain: simulate -> conflicts -> actions from the clearance log -> dataset);
- :func:`spec_with_stats`: a feature spec with normalisation statistics from given feature tensors;
- :func:`untrained_policy`: a real, untrained tiny policy for tests that need a model in a loop (controller,
  features), with the feature spec of a data-set configuration and normalisation statistics taken from
  given feature tensors.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from atc_il.config import DatasetConfig
from atc_il.geometry import from_local_nm
from atc_il.io import write_partitioned
from atc_il.schemas import ACTION_LINK_SCHEMA, ACTION_SCHEMA, CONFLICT_SCHEMA, EPISODE_SCHEMA, TRACK_SCHEMA, action_id
from models.heads import RESUME
from models.interface import Decisions, Observations, PolicyInterface
from pipelines.features import feature_spec
from pipelines.shards import RunningStats

H, K, M, B = 6, 2, 3, 10
NAN = float("nan")


# -- tracks and workspaces ---------------------------------------------------------------------------
STEP = 5.0


def grid_tracks(t0: str, flights: dict, minutes: float = 20) -> pd.DataFrame:
    """Straight flights on a 5 s grid: {fid: (x0_nm, y0_nm, trk_deg, gs_kt, alt_ft)}."""
    times = pd.date_range(t0, periods=int(minutes * 60 / STEP), freq=f"{int(STEP)}s", tz="UTC")
    sec = (times - times[0]).total_seconds().to_numpy()
    rows = []
    for fid, (x0, y0, trk, gs, alt) in flights.items():
        x = x0 + gs * np.sin(np.radians(trk)) * sec / 3600
        y = y0 + gs * np.cos(np.radians(trk)) * sec / 3600
        lat, lon = from_local_nm(x, y, 50.0, 5.0)
        rows.append(pd.DataFrame({"time": times, "flight_id": fid, "callsign": fid, "lat_deg": lat, "lon_deg": lon,
                                  "alt_ft": float(alt), "gs_kt": float(gs), "trk_deg": float(trk), "vs_fpm": 0.0, "cfl_ft": np.nan,
                                  "source": "test"}))
    return pd.concat(rows, ignore_index=True)


FLIGHTS = {"A": (0, -60, 0, 450, 35000), "B": (0, 60, 180, 450, 35000),
           "N1": (20, -40, 0, 430, 35000), "N2": (-30, 0, 90, 400, 33000), "FAR": (300, 0, 90, 400, 35000)}


def pair_samples(tracks, t_from, t_to):
    times = pd.date_range(t_from, t_to, freq="5s", tz="UTC")
    return pd.DataFrame({"time": times, "flight_id_1": "A", "flight_id_2": "B",
                         "first_detection": times[0], "episode_id": "A|B|x"})


def actions_frame(times_and_flights):
    rows = [{"time": pd.Timestamp(t), "flight_id": f, "action_type": "heading", "value": v, "unit": "deg",
             "source": "clearance_log", "confidence": 1.0} for t, f, v in times_and_flights]
    df = pd.DataFrame(rows, columns=["time", "flight_id", "action_type", "value", "unit", "source", "confidence"])
    df["action_id"] = [action_id(r.flight_id, r.time, r.action_type) for r in df.itertuples()]
    return df.sort_values("time").reset_index(drop=True)


def workspace(tmp_path, days=3):
    tr, co, ep, ac, li = [], [], [], [], []
    for d in range(days):
        day = f"2024-01-0{d + 1}"
        tracks = grid_tracks(f"{day}T10:00Z", FLIGHTS)
        tr.append(tracks)
        times = pd.date_range(f"{day}T10:03:00Z", f"{day}T10:05:00Z", freq="5s", tz="UTC")
        eid = f"A|B|{day}"
        cpa_t = pd.Timestamp(f"{day}T10:08:00Z")
        co.append(pd.DataFrame({"time": times, "flight_id_1": "A", "flight_id_2": "B", "dist_nm": 10.0,
                                "dalt_ft": 0.0, "tcpa_s": (cpa_t - times).total_seconds(), "dcpa_nm": 0.0,
                                "tin_s": 1.0, "qdr_deg": 0.0, "conflict": True, "los": False, "episode_id": eid}))
        ep.append(pd.DataFrame([{"episode_id": eid, "flight_id_1": "A", "flight_id_2": "B",
                                 "first_detection": times[0], "last_detection": times[-1],
                                 "predicted_cpa_time": cpa_t, "predicted_tcpa_s": 300.0, "predicted_dcpa_nm": 0.0,
                                 "min_dist_nm": 0.0, "min_dist_time": cpa_t, "dalt_at_min_ft": 0.0, "los": True,
                                 "los_duration_s": 10.0, "n_steps": len(times), "n_actions": 1}]))
        act = actions_frame([(f"{day}T10:04:02Z", "B", 30.0)])
        ac.append(act)
        li.append(pd.DataFrame({"episode_id": eid, "action_id": act["action_id"], "time": act["time"],
                                "flight_id": "B", "aircraft": 2, "action_type": "heading", "value": 30.0,
                                "unit": "deg", "source": "clearance_log", "confidence": 1.0,
                                "time_to_cpa_s": 238.0}))
    for name, frames, schema in [("tracks", tr, TRACK_SCHEMA), ("conflicts", co, CONFLICT_SCHEMA),
                                 ("episodes", ep, EPISODE_SCHEMA), ("actions", ac, ACTION_SCHEMA),
                                 ("action_links", li, ACTION_LINK_SCHEMA)]:
        df = pd.concat(frames, ignore_index=True)
        if name == "episodes":
            df["time"] = df["first_detection"]
            write_partitioned(df, schema, tmp_path / name)
        else:
            write_partitioned(df, schema, tmp_path / name)
    return tmp_path



# -- models ------------------------------------------------------------------------------------------
def model_spec() -> dict:
    """A small feature spec (H, K, M = 6, 2, 3) with made-up normalisation statistics."""
    s = feature_spec(DatasetConfig(history_steps=H, neighbours=K, recent_clearances=M), 5.0)
    g = torch.Generator().manual_seed(0)
    s["normalisation"] = {}
    for name, t in s["tensors"].items():
        keep = torch.tensor([f["normalise"] for f in t["features"]])
        mean = torch.where(keep, torch.randn(len(keep), generator=g) * 3, 0.0)
        std = torch.where(keep, torch.rand(len(keep), generator=g) * 4 + 0.5, 1.0)
        s["normalisation"][name] = {"mean": mean.tolist(), "std": std.tolist(), "count": 100}
    return s


def make_obs(spec: dict, b: int = B, seed: int = 0) -> Observations:
    g = torch.Generator().manual_seed(seed)
    d = {}
    for name, t in spec["tensors"].items():
        x = torch.randn(b, *t["shape"], generator=g) * 5
        valid = (torch.rand(x.shape[:-1], generator=g) > 0.3).float()
        x = torch.where(valid[..., None] > 0, x, torch.zeros(()))
        x[..., -1] = valid
        d[name] = x
    d["pair"][:, -1, :, -1] = 1.0          # the pair is observed at decision time
    d["neighbours"][0, :, :, -1] = 0.0     # a sample without neighbours
    d["clearances"][1, :, -1] = 0.0        # and one without recent clearances
    d["pair"][2, :3, :, -1] = 0.0          # and one whose history starts late
    return Observations.from_dict(d)


def make_dec(b: int = B) -> Decisions:
    act = torch.tensor([0, 1, 1, 1, 1, 1, 0, 1, 1, 1])[:b]
    aircraft = torch.tensor([-1, 0, 1, 0, 1, 0, -1, 1, 0, 1])[:b]
    type_ = torch.tensor([-1, 0, 1, 2, 3, 4, -1, 0, 1, 2])[:b]
    value = torch.tensor([NAN, 20.0, -1000.0, 10.0, 30.0, 0.0, NAN, -25.0, 2000.0, -15.0])[:b]
    return Decisions(act, aircraft, type_, value)


def check_policy_interface(policy, obs, dec) -> dict:
    """The policy interface every head must honour: a finite scalar loss with its logs, a gradient for every
    parameter, and (in eval mode) samples, log-probs and predictions of the right shapes and decision coding.
    Returns the loss logs; leaves the policy in eval mode."""
    assert isinstance(policy, PolicyInterface)
    loss, logs = policy.loss(obs, dec)
    assert torch.isfinite(loss) and loss.ndim == 0
    assert {"loss", "nll", "nll_act", "nll_aircraft", "nll_type", "nll_value"} <= set(logs)
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    loss.backward()
    dead = [n for n, p in policy.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters())

    policy.eval()
    s = policy.sample(obs, 7, generator=torch.Generator().manual_seed(3))
    for x in (s.act, s.aircraft, s.type, s.value):
        assert x.shape == (B, 7)
    idle = s.act == 0
    assert (s.aircraft[idle] == -1).all() and (s.type[idle] == -1).all() and s.value[idle].isnan().all()
    assert (s.value[s.type == RESUME] == 0).all() and torch.isfinite(s.value[~idle]).all()
    lp = policy.log_prob(obs, dec)
    assert lp.shape == (B,) and torch.isfinite(lp).all() and lp.dtype == torch.float32
    torch.testing.assert_close(lp, policy.log_prob(obs, dec))            # estimates use fixed draws
    p = policy.predict(obs)
    for x in (p.act, p.aircraft, p.type, p.value):
        assert x.shape == (B,)
    p_act = policy.p_act(obs)
    assert p_act.shape == (B,) and p_act.dtype == torch.float32 and ((p_act >= 0) & (p_act <= 1)).all()
    ctx = policy.encode(obs)
    torch.testing.assert_close(policy.p_act(ctx), p_act)              # a Context stands for its observations
    a = policy.predict_action(ctx)
    assert (a.act == 1).all() and (a.type >= 0).all()
    return logs



def simulated_dataset(ws, n: int, seed: int, scenario_kwargs: dict, workers: int = 1, **fractions):
    """``n`` scenarios simulated under the synthetic expert into ``ws`` and their data set (``ws/dataset``, split by
    scenario; ``fractions``: test_fraction, val_fraction). Returns ``ws``."""
    from simulator_adapters.demonstrations import build_dataset, simulate
    simulate(ws, n, "atco", seed=seed, workers=workers, scenario_kwargs=scenario_kwargs)
    build_dataset(ws, **fractions)
    return ws


# -- a policy in a loop ------------------------------------------------------------------------------


def spec_with_stats(dcfg: DatasetConfig, feats: dict, step_s: float) -> dict:
    """The feature spec of a data-set configuration with normalisation statistics taken from feature tensors."""
    spec = feature_spec(dcfg, step_s)
    spec["normalisation"] = {}
    for key, t in spec["tensors"].items():
        st = RunningStats(len(t["features"]))
        st.update(feats[key])
        spec["normalisation"][key] = st.result([f["normalise"] for f in t["features"]])
    return spec


def untrained_policy(dcfg: DatasetConfig, feats: dict, step_s: float, encoder: str = "mlp", name: str = "tiny",
                     seed: int = 0, vae: bool = False):
    from models.config import ModelConfig
    from models.policy import build_policy
    spec = spec_with_stats(dcfg, feats, step_s)
    cfg = ModelConfig(name=name, encoder={"name": encoder, "hidden": 8, "layers": 1}, vae={"enabled": vae, "latent_dim": 4},
                      head={"name": "mdn", "hidden": 8, "components": 2})
    torch.manual_seed(seed)
    return build_policy(cfg, spec)


@contextlib.contextmanager
def served(app) -> Iterator[str]:
    """``app`` under a real uvicorn on a free loopback port, in a background thread; yields its base URL and
    stops the server afterwards."""
    import uvicorn
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.time()
    while not srv.started and th.is_alive() and time.time() - t0 < 60:
        time.sleep(0.05)
    assert srv.started, "the service did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(10)
