"""Actions: inference from synthetic resampled tracks with known manoeuvres, clearance logs, linking, stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atc_il.config import ActionConfig
from atc_il.errors import DataError
from atc_il.geometry import bearing_deg, from_local_nm, to_local_nm, velocity_kt, wrap180
from atc_il.io import read_table, write_frame, write_partitioned
from atc_il.schemas import ACTION_LINK_SCHEMA, ACTION_SCHEMA, EPISODE_SCHEMA, FLIGHT_PLAN_SCHEMA, TRACK_SCHEMA
from pipelines.actions import infer_actions, link_actions, read_clearance_log, read_flight_plans, run

DT = 5.0
T0 = pd.Timestamp("2024-01-01T10:00:00Z")
LAT0, LON0 = 50.0, 5.0
TS = np.arange(200) * DT      # 1000 s of flight on a 5 s grid


def synth(fid, trk=90.0, gs=450.0, alt=33000.0, n=len(TS)):
    """A resampled track with the given track / ground speed / altitude profiles (positions integrated)."""
    trk, gs, alt = (np.broadcast_to(np.asarray(v, float), (n,)).copy() for v in (trk, gs, alt))
    vx, vy = velocity_kt(gs, trk)
    x, y = np.r_[0, np.cumsum(vx[:-1] * DT / 3600)], np.r_[0, np.cumsum(vy[:-1] * DT / 3600)]
    lat, lon = from_local_nm(x, y, LAT0, LON0)
    return pd.DataFrame({"time": T0 + pd.to_timedelta(np.arange(n) * DT, unit="s"), "flight_id": fid,
                         "lat_deg": lat, "lon_deg": lon, "alt_ft": alt, "gs_kt": gs, "trk_deg": trk % 360,
                         "vs_fpm": np.gradient(alt, DT) * 60})


def ramp(start_s, rate, total):
    return np.clip((TS - start_s) * rate, min(0, total), max(0, total))


def one(df, kind):
    got = df[df["action_type"] == kind]
    assert len(got) == 1, df.to_string()
    return got.iloc[0]


def test_straight_flight_gives_nothing():
    assert infer_actions(synth("S")).empty


def test_right_turn():
    act = infer_actions(synth("R", trk=90 + ramp(300, 3.0, 30)))
    assert len(act) == 1
    a = one(act, "heading")
    assert a["value"] == pytest.approx(30, abs=2)
    assert a["target_value"] == pytest.approx(120, abs=2)
    assert abs((a["time"] - (T0 + pd.Timedelta(seconds=300))).total_seconds()) <= 2 * DT
    assert a["source"] == "track_inferred" and a["unit"] == "deg" and 0.8 < a["confidence"] <= 1
    assert a["action_id"].startswith("R@")


def test_left_turn_through_north_is_negative():
    a = one(infer_actions(synth("L", trk=10 + ramp(402, -3.0, -40))), "heading")
    assert a["value"] == pytest.approx(-40, abs=2)
    assert a["target_value"] == pytest.approx(330, abs=2)
    assert abs((a["time"] - (T0 + pd.Timedelta(seconds=402))).total_seconds()) <= 2 * DT


def test_descent_fl330_to_fl310():
    act = infer_actions(synth("D", alt=33000 + ramp(300, -2000 / 60, -2000)))
    a = one(act, "altitude")
    assert len(act) == 1
    assert a["value"] == pytest.approx(-2000) and a["target_value"] == pytest.approx(31000) and a["unit"] == "ft"
    assert abs((a["time"] - (T0 + pd.Timedelta(seconds=300))).total_seconds()) <= 2 * DT


def test_speed_reduction():
    a = one(infer_actions(synth("V", gs=460 + ramp(300, -0.5, -40))), "speed")
    assert a["value"] == pytest.approx(-40, abs=2) and a["target_value"] == pytest.approx(420, abs=2)
    assert abs((a["time"] - (T0 + pd.Timedelta(seconds=300))).total_seconds()) <= 2 * DT


def test_positions_only_and_gaps():
    tr = synth("P", trk=90 + ramp(300, 3.0, 30)).drop(columns=["trk_deg", "gs_kt", "vs_fpm"])
    tr = tr.drop(index=range(150, 160))                          # a 55 s gap after the turn: two pieces
    a = one(infer_actions(tr), "heading")
    assert a["value"] == pytest.approx(30, abs=2)


def test_short_or_small_changes_are_not_actions():
    dogleg = 90 + ramp(300, 3.0, 30) - ramp(315, 3.0, 30)       # turns back after 5 s: not sustained
    small = 90 + ramp(300, 3.0, 6)                                # under heading_min_deg
    assert infer_actions(pd.concat([synth("A", trk=dogleg), synth("B", trk=small)])).empty


@pytest.mark.parametrize("dist", ["uniform", "normal"])
def test_noise_gives_no_false_actions(dist):
    rng = np.random.default_rng(7)
    draw = (lambda s, n: rng.uniform(-s, s, n)) if dist == "uniform" else (lambda s, n: rng.normal(0, s / 2, n))
    n = 400
    tracks = pd.concat([synth(f"N{i}", trk=90 + draw(1.0, n), alt=33000 + draw(50.0, n), gs=450 + draw(3.0, n), n=n)
                        for i in range(30)])
    assert infer_actions(tracks).empty
    # and a real turn inside noise is still found
    noisy_turn = synth("T", trk=90 + ramp(300, 3.0, 30) + draw(1.0, len(TS)), alt=33000 + draw(50.0, len(TS)))
    assert one(infer_actions(noisy_turn), "heading")["value"] == pytest.approx(30, abs=2)


# ---------------------------------------------------------------- direct-to against a flight plan
WX, WY = np.array([0.0, 60.0, 100.0, 140.0]), np.array([0.0, 0.0, -40.0, -40.0])   # A, B, C, D (NM)
WLAT, WLON = from_local_nm(WX, WY, LAT0, LON0)


def plan_frame(fid="F"):
    return pd.DataFrame({"flight_id": fid, "seq": np.arange(4), "waypoint": list("ABCD"), "lat_deg": WLAT, "lon_deg": WLON})


def fly_route(fid, n=250, direct_c_at=None, gs=450.0, rate=3.0):
    """Fly A->B->C->D (fly-by, 2 NM anticipation); from step ``direct_c_at`` skip B and go direct to C."""
    lat, lon, trk = np.full(n, LAT0), np.full(n, LON0), np.full(n, 90.0)
    x = y = 0.0
    leg = 1
    for i in range(1, n):
        if direct_c_at is not None and i >= direct_c_at and leg < 2:
            leg = 2
        if leg < 3 and np.hypot(*to_local_nm(WLAT[leg], WLON[leg], lat[i - 1], lon[i - 1])) < 2.0:
            leg += 1
        want = bearing_deg(lat[i - 1], lon[i - 1], WLAT[leg], WLON[leg])
        trk[i] = trk[i - 1] + np.clip(wrap180(want - trk[i - 1]), -rate * DT, rate * DT)
        vx, vy = velocity_kt(gs, trk[i])
        x, y = x + vx * DT / 3600, y + vy * DT / 3600
        lat[i], lon[i] = from_local_nm(x, y, LAT0, LON0)
    return pd.DataFrame({"time": T0 + pd.to_timedelta(np.arange(n) * DT, unit="s"), "flight_id": fid,
                         "lat_deg": lat, "lon_deg": lon, "alt_ft": 33000.0, "gs_kt": gs, "trk_deg": trk % 360})


def test_direct_to_skipping_a_waypoint(tmp_path):
    path = tmp_path / "plans.csv"
    plan_frame().to_csv(path, index=False)
    plans = read_flight_plans(path)
    assert list(plans.columns) == FLIGHT_PLAN_SCHEMA.names and plans["seq"].tolist() == [0, 1, 2, 3]
    act = infer_actions(fly_route("F", direct_c_at=40), flight_plans=plans)
    a = one(act, "direct_to")
    assert a["waypoint"] == "C" and a["value"] > 10 and a["unit"] == "deg"
    assert abs((a["time"] - (T0 + pd.Timedelta(seconds=39 * DT))).total_seconds()) <= 2 * DT
    assert (act["action_type"] == "heading").sum() == 0        # the later turn at C is the route
    # following the route: turns at waypoints are not controller actions
    assert infer_actions(fly_route("F"), flight_plans=plans).empty
    # without a plan the same manoeuvre is a heading action
    free = infer_actions(fly_route("F", direct_c_at=40))
    assert free["action_type"].tolist() == ["heading", "heading"] and free["value"].iloc[0] > 10


# ---------------------------------------------------------------- clearance logs
def test_clearance_log_in_contract_with_deltas(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("time,flight_id,action_type,value\n2024-01-01T10:05:00Z,R,heading,+30\n"
                    "2024-01-01T10:06:00Z,R,resume,\n")
    log = read_clearance_log(path)
    assert list(log.columns) == ACTION_SCHEMA.names
    assert log["value"].tolist() == [30.0, 0.0] and (log["confidence"] == 1).all()
    assert (log["source"] == "clearance_log").all() and log["unit"].tolist() == ["deg", ""]


def test_clearance_log_absolute_values_with_yaml_mapping(tmp_path):
    tracks = pd.concat([synth("R", trk=90 + ramp(300, 3.0, 30)), synth("D", alt=33000 + ramp(300, -2000 / 60, -2000))])
    path, mapping = tmp_path / "log.csv", tmp_path / "map.yaml"
    path.write_text("ts,callsign,kind,clearance\n2024-01-01T10:05:00Z,R,HDG,HDG 120\n"
                    "2024-01-01T10:05:00Z,D,level,FL310\n2024-01-01T10:10:00Z,R,spd,-20\n"
                    "2024-01-01T10:11:00Z,R,speed,430\n")
    mapping.write_text("columns: {time: ts, flight_id: callsign, action_type: kind, value: clearance}\n"
                       "value_kind: absolute\n")
    log = read_clearance_log(path, mapping, tracks).set_index(["flight_id", "action_type", "time"]).sort_index()
    hdg = log.loc[("R", "heading")].iloc[0]
    assert hdg["value"] == pytest.approx(30) and hdg["target_value"] == pytest.approx(120)
    alt = log.loc[("D", "altitude")].iloc[0]
    assert alt["value"] == pytest.approx(-2000) and alt["target_value"] == pytest.approx(31000)
    spd = log.loc[("R", "speed")]
    assert spd["value"].tolist() == pytest.approx([-20, -20])        # explicit sign = change; bare 430 = absolute
    assert spd["target_value"].tolist() == pytest.approx([430, 430])
    # a dict mapping works the same; without tracks absolute values stay unresolved and are counted
    raw = read_clearance_log(path, {"columns": {"time": "ts", "flight_id": "callsign", "action_type": "kind",
                                                "value": "clearance"}, "value_kind": "absolute"})
    assert raw["value"].isna().sum() == 3 and raw.attrs["value_unresolved"] == 3


def test_parquet_log_with_unit_column(tmp_path):
    tracks = synth("U", alt=33000 + ramp(300, 1000 / 60, 2000))
    pd.DataFrame({"time": [T0 + pd.Timedelta(seconds=300)], "flight_id": ["U"], "action_type": ["altitude"],
                  "target_value": [10668.0], "unit": ["m"]}).to_parquet(tmp_path / "log.parquet")
    a = read_clearance_log(tmp_path / "log.parquet", tracks=tracks).iloc[0]
    assert a["target_value"] == pytest.approx(35000, abs=1) and a["value"] == pytest.approx(2000, abs=1)
    assert a["unit"] == "ft"


def test_malformed_log_row_names_file_row_and_column(tmp_path):
    path = tmp_path / "bad_log.csv"
    path.write_text("time,flight,type,val\n2024-01-01T10:05:00Z,R,heading,+30\n2024-01-01T10:06:00Z,R,heading,left-ish\n"
                    "not-a-time,R,heading,+10\n")
    with pytest.raises(DataError) as exc:
        read_clearance_log(path, {"flight_id": "flight", "action_type": "type", "value": "val"})
    msg = str(exc.value)
    assert "bad_log.csv" in msg and "row 1" in msg and "'val'" in msg and "left-ish" in msg
    assert "row 2" in msg and "'time'" in msg
    with pytest.raises(DataError, match="FL"):
        path.write_text("time,flight_id,action_type,value\n2024-01-01T10:05:00Z,R,heading,FL310\n")
        read_clearance_log(path)


# ---------------------------------------------------------------- linking
def episodes_frame():
    return pd.DataFrame({"episode_id": ["e1"], "flight_id_1": ["A"], "flight_id_2": ["B"],
                         "first_detection": [T0 + pd.Timedelta(seconds=100)],
                         "last_detection": [T0 + pd.Timedelta(seconds=400)],
                         "predicted_cpa_time": [T0 + pd.Timedelta(seconds=300)]})


def actions_frame():
    rows = [("B", 200, "heading"), ("B", 350, "heading"), ("C", 200, "heading"), ("A", 80, "altitude"),
            ("A", 20, "speed")]
    return pd.DataFrame({"action_id": [f"{f}{t}" for f, t, _ in rows], "flight_id": [r[0] for r in rows],
                         "time": [T0 + pd.Timedelta(seconds=r[1]) for r in rows], "action_type": [r[2] for r in rows],
                         "value": 20.0, "unit": "deg", "source": "clearance_log", "confidence": 1.0})


def test_link_actions():
    links = link_actions(actions_frame(), episodes_frame(), ActionConfig(link_margin_s=30))
    assert list(links.columns) == ACTION_LINK_SCHEMA.names
    assert links["action_id"].tolist() == ["A80", "B200"]     # B350 after CPA, C200 third aircraft, A20 too early
    assert links["aircraft"].tolist() == [1, 2]
    assert links["time_to_cpa_s"].tolist() == pytest.approx([220, 100])


# ---------------------------------------------------------------- the stage
def test_run_end_to_end(tmp_path):
    tracks = pd.concat([synth("A", trk=90 + ramp(300, 3.0, 30)), synth("B", alt=33000 + ramp(300, -2000 / 60, -2000)),
                        synth("C")])
    write_partitioned(tracks, TRACK_SCHEMA, tmp_path / "tracks")
    ep = episodes_frame().assign(first_detection=T0 + pd.Timedelta(seconds=250), predicted_cpa_time=T0 + pd.Timedelta(seconds=600))
    write_frame(ep, EPISODE_SCHEMA, tmp_path / "episodes" / "part-0.parquet")
    log = tmp_path / "log.csv"
    log.write_text("time,flight_id,action_type,value\n2024-01-01T10:04:55Z,A,heading,HDG 120\n")
    s = run(tmp_path / "tracks", tmp_path / "out", log=log, episodes_dir=tmp_path / "episodes")
    assert s["logged_actions"] == 1 and s["inferred_dropped_as_log_duplicates"] == 1
    assert s["actions_by_source"] == {"clearance_log": 1, "track_inferred": 1}
    assert s["actions_by_type"] == {"altitude": 1, "heading": 1}
    assert s["links"] == 2 and s["episodes_with_action"] == 1 and s["linked_actions"] == 2
    actions = read_table(tmp_path / "out" / "actions", ACTION_SCHEMA)
    assert len(actions) == 2 and actions.loc[actions["flight_id"] == "A", "value"].iloc[0] == pytest.approx(30, abs=1)
    assert len(read_table(tmp_path / "out" / "action_links", ACTION_LINK_SCHEMA)) == 2
    assert (tmp_path / "out" / "actions_summary.json").exists()
