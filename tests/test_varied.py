"""The ``varied`` demonstration controller and dense routes (no simulator needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from atc_il.geometry import haversine_nm
from simulator_adapters.controller_registry import make_controller
from simulator_adapters.controllers import Observation
from simulator_adapters.scenarios import generate
from simulator_adapters.varied import VariedController, VariedParams, _next_index, dense_routes


def test_dense_routes_keep_the_plan_and_space_waypoints_minutes_apart():
    sc = generate(name="d", seed=3, conflicts=2, density=2.0)
    dense = dense_routes(sc, seed=1)
    assert [f.flight_id for f in dense.flights] == [f.flight_id for f in sc.flights]
    for f0, f1 in zip(sc.flights, dense.flights):
        names = [w.name for w in f1.route]
        assert len(set(names)) == len(names) and {w.name for w in f0.route} <= set(names)
        lat = np.array([f1.lat_deg] + [w.lat_deg for w in f1.route])
        lon = np.array([f1.lon_deg] + [w.lon_deg for w in f1.route])
        legs = haversine_nm(lat[:-1], lon[:-1], lat[1:], lon[1:])
        assert legs.max() < 45.0                       # < 6 min at 450 kt
    assert dense_routes(sc, seed=1).to_json() == dense.to_json()


def test_next_index_and_controller_kinds():
    route = [("A", 51.0, 5.5, None), ("B", 51.0, 6.0, None), ("C", 51.0, 6.5, None)]
    assert _next_index(route, 51.0, 5.0, 90.0) == 0
    assert _next_index(route, 51.0, 5.7, 90.0) == 1
    assert _next_index(route, 51.0, 7.0, 90.0) == 3
    assert isinstance(make_controller("varied"), VariedController)
    ctl = VariedController(VariedParams(rate_per_s=1.0, min_seen_s=0.0, min_gap_s=0.0, exit_margin_nm=1.0))
    ctl.reset("s", 0)
    radar = pd.DataFrame({"flight_id": ["X"], "lat_deg": [51.0], "lon_deg": [5.0], "alt_ft": [33000.0],
                          "gs_kt": [450.0], "trk_deg": [90.0], "vs_fpm": [0.0]})
    plans = {"X": {"route": route, "level_ft": 33000.0}}
    seen = []
    for k in range(200):
        dec = ctl.decide(Observation(pd.Timestamp("2024-01-01", tz="UTC"), float(k), radar, pd.DataFrame(), plans,
                                     pd.DataFrame()))
        assert not dec.truth
        seen += dec.clearances
    kinds = {c.action_type for c in seen}
    assert kinds <= {"heading", "altitude", "speed", "direct_to"} and {"heading", "altitude", "speed"} <= kinds
    for c in seen:
        if c.action_type == "heading":
            assert 5 <= abs(c.value) <= 40
        elif c.action_type == "speed":
            assert 5 <= abs(c.value) <= 20
        elif c.action_type == "altitude":
            assert abs(c.value) >= 1000 and (33000 + c.value) % 1000 == 0 and 20000 <= 33000 + c.value <= 35000
        else:
            assert c.waypoint in {"B", "C"}
