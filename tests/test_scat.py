"""The SCAT reader (pipelines/scat.py) on fixture files written in the data set's documented structure: a
folder of per-flight JSON documents and a weekly zip; `atc-il ingest --format scat` then `atc-il actions`
on the clearance log it writes (the real-clearance path end to end)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from atc_il.errors import ReadError
from atc_il.geometry import from_local_nm
from atc_il.io import read_table
from atc_il.schemas import ACTION_SCHEMA, TRACK_SCHEMA
from atc_il.units import KT_MPS
from atc_il_cli.cli import app
from pipelines.actions import read_clearance_log, read_flight_plans
from pipelines.ingest import ingest
from pipelines.scat import ScatSink, read_scat

T0 = pd.Timestamp("2016-10-20T11:30:00")          # SCAT times: ISO 8601 without a zone, UTC
LAT0, LON0 = 58.0, 16.0


def iso(t: pd.Timestamp) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")


def clearance(t_s: float, cfl=None, unit=None, hdg=None, beacon=None, spd=None, spd_unit=None) -> dict:
    return {"assign_heading_beacon": beacon, "assigned_heading_val": hdg, "assigned_speed_unit": spd_unit,
            "assigned_speed_val": spd, "cfl": cfl, "cfl_unit": unit, "time_stamp": iso(T0 + pd.Timedelta(seconds=t_s))}


def flight_doc(fid: int, callsign: str, x0: float, y0: float, trk: float, gs: float = 450.0, fl: float = 350.0,
               minutes: float = 12, clearances=(), route=()) -> dict:
    """A SCAT flight document: straight flight, a plot every 4 s (the data set's radar update)."""
    t = np.arange(0, minutes * 60, 4.0)
    x = x0 + gs * np.sin(np.radians(trk)) * t / 3600
    y = y0 + gs * np.cos(np.radians(trk)) * t / 3600
    lat, lon = from_local_nm(x, y, LAT0, LON0)
    v = gs * KT_MPS
    plots = [{"I062/105": {"lat": float(a), "lon": float(o)}, "I062/136": {"measured_flight_level": fl},
              "I062/185": {"vx": v * np.sin(np.radians(trk)), "vy": v * np.cos(np.radians(trk))},
              "I062/200": {"adf": False, "long": 0, "trans": 0, "vert": 0}, "I062/220": {"rocd": 0.0},
              "I062/380": {"subitem3": {"mag_hdg": trk}, "subitem7": {"altitude": fl * 100, "ah": False, "am": False,
                                                                       "mv": False}},
              "time_of_track": iso(T0 + pd.Timedelta(seconds=float(s)))} for a, o, s in zip(lat, lon, t)]
    fixes = [{"fix_name": name, "fix_kind": "RP", "lat": la, "lon": lo, "eto": iso(T0 + pd.Timedelta(minutes=m)),
              "afl_value": fl, "rfl_value": fl, "is_ato": False} for name, la, lo, m in route]
    return {"id": fid, "centre_ctrl": [{"centre_id": 1, "start_time": iso(T0)}],
            "fpl": {"fpl_base": [{"adep": "ESSA", "ades": "EKCH", "aircraft_type": "A320", "callsign": callsign,
                                  "equip_status_rvsm": True, "flight_rules": "I", "time_stamp": iso(T0), "wtc": "M"}],
                    "fpl_clearance": list(clearances), "fpl_plan_update": [], "fpl_arr": [], "fpl_dep": []},
            "plots": plots, "predicted_trajectory": [{"time_stamp": iso(T0), "route": fixes}] if fixes else []}


BEACON = ("ABENI", *from_local_nm(np.array([40.0]), np.array([40.0]), LAT0, LON0))


def documents() -> dict[str, dict]:
    beacon = (BEACON[0], float(BEACON[1][0]), float(BEACON[2][0]), 8)
    a = flight_doc(100001, "SAS123", 0, -50, 0, clearances=[
        clearance(-600),                                           # the initial record: nothing cleared yet
        clearance(60, cfl=350, unit="F"),                          # altitude FL350
        clearance(90, cfl=350, unit="F"),                          # restated: unchanged
        clearance(120, cfl=350, unit="F", hdg=30),                 # heading 030
        clearance(240, cfl=350, unit="F", beacon="ABENI"),         # direct ABENI
        clearance(300, cfl=350, unit="F", beacon="ABENI", spd=280, spd_unit="N"),   # speed 280 kt
        clearance(330, cfl=350, unit="F", beacon="ABENI", spd=0.78, spd_unit="M"),  # Mach: unmapped
        clearance(400, cfl=None, beacon=None),                     # cfl, beacon and speed removed: unmapped
    ], route=[("ESSA", LAT0 - 1, LON0, 0), beacon, ("EKCH", LAT0 + 1, LON0 + 1, 20)])
    b = flight_doc(100002, "NAX456", -50, 0, 90, fl=350, clearances=[
        clearance(30, cfl=1070, unit="S"),                          # metric level S1070: 10,700 m
        clearance(150, cfl=1070, unit="S", hdg=120),
        clearance(420, cfl=1070, unit="S"),                         # heading removed: resume own navigation
        clearance(450, cfl=1070, unit="S", spd=300, spd_unit="X"),  # unknown speed unit: unmapped
    ])
    return {"100001.json": a, "100002.json": b}


def write_dir(folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, doc in documents().items():
        (folder / name).write_text(json.dumps(doc))
    (folder / "airspace.json").write_text(json.dumps([{"name": "ESMM", "points": [{"name": "ABENI", "lat": 58.6,
                                                                                  "lon": 16.7}]}]))


def write_zip(path, corrupt: bool = False) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, doc in documents().items():
            zf.writestr(f"week1/{name}", json.dumps(doc))
        zf.writestr("week1/airspace.json", "[]")
        zf.writestr("week1/grib_meteo.json", "[]")
        if corrupt:
            zf.writestr("week1/100003.json", "{not json")


def test_reader_maps_plots_onto_the_track_contract(tmp_path):
    write_dir(tmp_path / "scat")
    sink = ScatSink()
    df = pd.concat(list(read_scat(tmp_path / "scat" / "100001.json", sink=sink)), ignore_index=True)
    assert len(df) == 180 and (df["flight_id"] == "100001").all() and (df["callsign"] == "SAS123").all()
    assert df["time"].iloc[0] == pd.Timestamp("2016-10-20T11:30:00Z") and df["source"].eq("scat").all()
    assert df["alt_ft"].eq(35000.0).all() and df["gs_kt"].to_numpy() == pytest.approx(450.0)
    assert df["trk_deg"].to_numpy() % 360 == pytest.approx(0.0, abs=1e-9) and df["_unparseable"].isna().all()
    # the cleared level in force: none before the first altitude clearance (60 s), FL350 from then on
    assert df["cfl_ft"].iloc[:15].isna().all() and df["cfl_ft"].iloc[15:].eq(35000.0).all()
    assert sink.stats["flights"] == 1 and sink.stats["plots"] == 180


def test_clearance_changes_map_to_canonical_actions_and_the_rest_is_counted(tmp_path):
    write_dir(tmp_path / "scat")
    sink = ScatSink()
    for name in ("100001.json", "100002.json", "airspace.json"):
        list(read_scat(tmp_path / "scat" / name, sink=sink))
    log = sink.clearance_log()
    got = [(r.flight_id, (r.time - pd.Timestamp(T0, tz="UTC")).total_seconds(), r.action_type, r.target_value,
            r.waypoint) for r in log.itertuples()]
    got = [(f, s, k, None if np.isnan(v) else round(v, 3), w if isinstance(w, str) else None) for f, s, k, v, w in got]
    assert got == [("100002", 30.0, "altitude", round(10700 / 0.3048, 3), None),
                   ("100001", 60.0, "altitude", 35000.0, None),
                   ("100001", 120.0, "heading", 30.0, None),
                   ("100002", 150.0, "heading", 120.0, None),
                   ("100001", 240.0, "direct_to", None, "ABENI"),
                   ("100001", 300.0, "speed", 280.0, None),
                   ("100002", 420.0, "resume", None, None)]
    s = sink.summary()
    assert s["clearance_actions"] == {"altitude": 2, "direct_to": 1, "heading": 2, "resume": 1, "speed": 1}
    assert s["clearance_changes_unmapped"] == {"beacon_removed": 1, "cfl_removed": 1, "speed_mach": 1,
                                               "speed_removed": 1, "speed_unit_X": 1}
    assert s["clearance_records"] == 12 and s["clearance_records_unchanged"] == 2 and s["documents_skipped"] == 1
    plans = sink.flight_plans()
    assert plans["waypoint"].tolist() == ["ESSA", "ABENI", "EKCH"] and plans["alt_ft"].eq(35000.0).all()
    assert s["flights_without_plan"] == 1


@pytest.mark.parametrize("layout", ["dir", "zip"])
def test_ingest_scat_then_actions_runs_the_real_clearance_path(tmp_path, layout):
    if layout == "dir":
        write_dir(tmp_path / "scat")
        inputs, fmt = [tmp_path / "scat"], "scat"
    else:
        write_zip(tmp_path / "week1.zip")
        inputs, fmt = [tmp_path / "week1.zip"], "auto"              # auto reads a .zip as SCAT
    ws = tmp_path / "ws"
    report = ingest(inputs, ws, fmt=fmt, progress=False)
    assert report.rows_in == 360 == report.rows_kept and not report.files_failed
    assert report.scat["flights"] == 2 and report.scat["clearance_actions"]["heading"] == 2
    assert json.loads((ws / "ingest_report.json").read_text())["scat"]["clearance_changes_unmapped"]["speed_mach"] == 1
    tracks = read_table(ws / "tracks", TRACK_SCHEMA)
    assert set(tracks["flight_id"]) == {"100001", "100002"} and tracks["cfl_ft"].notna().any()
    plans = read_flight_plans(ws / "scat" / "flight_plans.parquet")
    log = read_clearance_log(ws / "scat" / "clearances.parquet", tracks=tracks, flight_plans=plans)
    assert len(log) == 7 and set(log["action_type"]) == {"altitude", "heading", "direct_to", "speed", "resume"}
    by = log.set_index(["flight_id", "action_type"])
    assert by.loc[("100001", "heading"), "value"] == pytest.approx(30.0, abs=0.5)   # 030 from a track of 000
    assert by.loc[("100001", "speed"), "value"] == pytest.approx(280.0 - 450.0, abs=0.5)
    assert by.loc[("100001", "direct_to"), "value"] == pytest.approx(by.loc[("100001", "direct_to"), "target_value"]
                                                                      - 0.0, abs=0.5)
    res = CliRunner().invoke(app, ["actions", "-w", str(ws), "--no-infer", "--log", str(ws / "scat" / "clearances.parquet"),
                                   "--flight-plans", str(ws / "scat" / "flight_plans.parquet")])
    assert res.exit_code == 0, res.output
    actions = read_table(ws / "actions", ACTION_SCHEMA)
    assert len(actions) == 7 and actions["source"].eq("clearance_log").all()


def test_zip_member_that_is_not_json_is_reported_and_the_rest_goes_through(tmp_path):
    write_zip(tmp_path / "week1.zip", corrupt=True)
    report = ingest([tmp_path / "week1.zip"], tmp_path / "ws", fmt="scat", progress=False)
    assert report.rows_kept == 360 and report.scat["flights"] == 2 and report.scat["documents_skipped"] == 2
    [(name, cause)] = report.files_failed.items()
    assert name.endswith("week1.zip!week1/100003.json") and "not a JSON document" in cause
    res = CliRunner().invoke(app, ["ingest", str(tmp_path / "week1.zip"), "-w", str(tmp_path / "ws2")])
    assert res.exit_code == 1 and "100003.json" in res.output and "SCAT: 2 flights" in res.output


def test_unreadable_scat_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ReadError, match="bad.zip: not a readable zip file"):
        list(read_scat(tmp_path / "bad.zip"))
    (tmp_path / "x.json").write_text(json.dumps({"something": "else"}))
    with pytest.raises(ReadError, match="not a SCAT flight document"):
        list(read_scat(tmp_path / "x.json"))
    (tmp_path / "t.csv").write_text("a,b\n")
    with pytest.raises(ReadError, match="not a SCAT file"):
        list(read_scat(tmp_path / "t.csv"))


def test_ingest_help_documents_scat():
    res = CliRunner().invoke(app, ["ingest", "--help"])
    assert res.exit_code == 0 and "or scat" in res.output and "SCAT flight documents" in res.output
