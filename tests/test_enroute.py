"""The en-route focus: airspace polygons (atc_il/airspace.py) and the altitude floor and airspace filter of the
conflicts, actions and dataset stages (pipelines/enroute.py), with the counts of what was left out."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from atc_il.airspace import load_airspace
from atc_il.config import EnRouteConfig, PipelineConfig
from atc_il.errors import ConfigError
from atc_il.geometry import from_local_nm
from atc_il.io import read_table, write_partitioned
from atc_il.schemas import ACTION_SCHEMA, CONFLICT_SCHEMA, EPISODE_SCHEMA, TRACK_SCHEMA
from atc_il_cli.cli import app
from pipelines import actions as A
from pipelines import conflicts as C
from pipelines.dataset import build
from tests.helpers import grid_tracks

LAT0, LON0 = 50.0, 5.0
# three head-on pairs: en route inside the sector, terminal (3,000 ft) inside it, en route outside it
FLIGHTS = {"A": (0, -60, 0, 450, 35000), "B": (0, 60, 180, 450, 35000),
           "C": (15, -60, 0, 250, 3000), "D": (15, 60, 180, 250, 3000),
           "E": (200, -60, 0, 450, 35000), "F": (200, 60, 180, 450, 35000)}


def corners(xs, ys):
    lat, lon = from_local_nm(np.asarray(xs, float), np.asarray(ys, float), LAT0, LON0)
    return [[float(o), float(a)] for a, o in zip(lat, lon)]


def sector_file(tmp_path) -> str:
    """A FeatureCollection: sector WEST (x -50..50 NM, y -80..80 NM, with a hole far from the traffic) and EAST."""
    west = {"type": "Feature", "properties": {"name": "WEST"}, "geometry": {"type": "Polygon", "coordinates": [
        corners([-50, 50, 50, -50, -50], [-80, -80, 80, 80, -80]),
        corners([-40, -30, -30, -40], [-10, -10, 10, 10])]}}
    east = {"type": "Feature", "id": "EAST", "properties": {}, "geometry": {"type": "MultiPolygon", "coordinates": [
        [corners([150, 250, 250, 150], [-80, -80, 80, 80])]]}}
    path = tmp_path / "sectors.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [west, east]}))
    return str(path)


def test_polygons_from_geojson_and_csv(tmp_path):
    path = sector_file(tmp_path)
    lat, lon = from_local_nm(np.array([0.0, -35.0, 60.0, 200.0, 0.0]), np.array([0.0, 0.0, 0.0, 0.0, 90.0]), LAT0, LON0)
    west = load_airspace(path, "west")                                # names are case-insensitive
    assert west.contains(lat, lon).tolist() == [True, False, False, False, False]   # the hole is outside
    assert load_airspace(path, "EAST").contains(lat, lon).tolist() == [False, False, False, True, False]
    assert load_airspace(path).contains(lat, lon).tolist() == [True, False, False, True, False]   # the union
    assert not load_airspace(path).contains([np.nan], [np.nan])[0]
    with pytest.raises(ConfigError, match="no feature named 'NORTH'.*'EAST', 'WEST'"):
        load_airspace(path, "NORTH")
    ring = corners([-50, 50, 50, -50], [-80, -80, 80, 80])
    (tmp_path / "poly.csv").write_text("lat,lon\n" + "".join(f"{a},{o}\n" for o, a in ring))
    (tmp_path / "bare.csv").write_text("".join(f"{a},{o}\n" for o, a in ring))
    for name in ("poly.csv", "bare.csv"):
        assert load_airspace(tmp_path / name).contains(lat, lon).tolist() == [True, True, False, False, False]
    with pytest.raises(ConfigError, match="a CSV polygon has no sectors"):
        load_airspace(tmp_path / "poly.csv", "WEST")
    (tmp_path / "line.geojson").write_text(json.dumps({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}))
    with pytest.raises(ConfigError, match="not an area"):
        load_airspace(tmp_path / "line.geojson")
    with pytest.raises(ConfigError, match="no such airspace file"):
        load_airspace(tmp_path / "missing.geojson")


def tracks_ws(tmp_path):
    ws = tmp_path / "ws"
    write_partitioned(grid_tracks("2024-01-01T10:00Z", FLIGHTS), TRACK_SCHEMA, ws / "tracks")
    return ws


def test_conflicts_keep_en_route_episodes_and_count_the_rest(tmp_path):
    ws = tracks_ws(tmp_path)
    everything = C.run(ws / "tracks", ws, progress=False)
    assert everything["episodes"] == 3 and everything["episodes_left_out"] == 0
    cfg = EnRouteConfig(min_alt_ft=10000, airspace=sector_file(tmp_path), sector="WEST")
    s = C.run(ws / "tracks", ws, progress=False, enroute=cfg)
    assert s["episodes"] == 1 and s["episodes_left_out"] == 2
    assert s["episodes_left_out_by_reason"] == {"below_floor": 1, "outside_airspace": 1}
    assert s["conflict_steps"] + s["conflict_steps_left_out"] == everything["conflict_steps"]
    assert s["enroute"] == {"min_alt_ft": 10000.0, "airspace": cfg.airspace, "sector": "WEST"}
    episodes = read_table(ws / "episodes", EPISODE_SCHEMA)
    assert episodes[["flight_id_1", "flight_id_2"]].values.tolist() == [["A", "B"]]
    assert set(read_table(ws / "conflicts", CONFLICT_SCHEMA)["episode_id"]) == set(episodes["episode_id"])
    record = json.loads((ws / "episodes" / "_RUN_COMPLETE.json").read_text())
    assert record["episodes_left_out_by_reason"] == {"below_floor": 1, "outside_airspace": 1}
    floor_only = C.run(ws / "tracks", ws, progress=False, enroute=EnRouteConfig(min_alt_ft=10000))
    assert floor_only["episodes"] == 2 and floor_only["episodes_left_out_by_reason"] == {"below_floor": 1}


def test_actions_keep_en_route_actions_and_count_the_rest(tmp_path):
    ws = tracks_ws(tmp_path)
    log = tmp_path / "log.csv"
    pd.DataFrame({"time": ["2024-01-01T10:02:00Z"] * 4, "flight_id": ["A", "C", "E", "ZZZ"],
                  "action_type": "heading", "value": "+20"}).to_csv(log, index=False)
    C.run(ws / "tracks", ws, progress=False)
    cfg = EnRouteConfig(min_alt_ft=10000, airspace=sector_file(tmp_path), sector="WEST")
    s = A.run(ws / "tracks", ws, log=log, infer=False, episodes_dir=ws / "episodes", enroute=cfg)
    assert s["logged_actions"] == 4 and s["actions"] == 1 and s["actions_left_out"] == 3
    assert s["actions_left_out_by_reason"] == {"below_floor": 1, "no_track_state": 1, "outside_airspace": 1}
    assert read_table(ws / "actions", ACTION_SCHEMA)["flight_id"].tolist() == ["A"] and s["links"] == 1
    assert json.loads((ws / "actions_summary.json").read_text())["actions_left_out"] == 3


def test_dataset_leaves_out_the_samples_of_terminal_episodes(tmp_path):
    ws = tracks_ws(tmp_path)
    C.run(ws / "tracks", ws, progress=False)
    A.run(ws / "tracks", ws, infer=False, episodes_dir=ws / "episodes")
    cfg = PipelineConfig.model_validate({"dataset": {"history_steps": 4, "neighbours": 1, "recent_clearances": 2},
                                         "enroute": {"min_alt_ft": 10000}})
    all_ = build(ws, tmp_path / "all", PipelineConfig.model_validate({"dataset": cfg.dataset.model_dump()}),
                 progress=False)
    s = build(ws, tmp_path / "enroute", cfg, progress=False)
    assert s["episodes_left_out"] == 1 and s["episodes_left_out_by_reason"] == {"below_floor": 1}
    assert s["episodes"] == 2 and all_["episodes"] == 3
    assert s["samples"] + s["samples_left_out"] == all_["samples"] and s["samples_left_out"] > 0


@pytest.mark.parametrize("cmd", ["conflicts", "actions", "dataset"])
def test_stage_help_documents_the_en_route_options(cmd):
    res = CliRunner().invoke(app, [cmd, "--help"])
    assert res.exit_code == 0
    for opt in ("--min-alt-ft", "--airspace", "--sector"):
        assert opt in res.output, opt


def test_cli_prints_what_was_left_out(tmp_path):
    ws = tracks_ws(tmp_path)
    res = CliRunner().invoke(app, ["conflicts", "-w", str(ws), "--min-alt-ft", "10000", "--airspace",
                                   sector_file(tmp_path), "--sector", "WEST"])
    assert res.exit_code == 0, res.output
    assert "en-route focus (min_alt_ft=10000.0" in res.output and "episodes_left_out=2" in res.output
    res = CliRunner().invoke(app, ["conflicts", "-w", str(ws), "--sector", "WEST"])
    assert res.exit_code == 2 and "give --airspace too" in res.output
