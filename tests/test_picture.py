"""The request path's array picture gives exactly what the pandas stages give for the same points: the grid
(kinematics derived where missing, gaps respected, cleared levels carried), the conflicts at a decision
time with the start of each pair's current run of detections, and the features."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from atc_il.config import ConflictConfig, DatasetConfig
from atc_il.errors import DataError
from atc_il.schemas import ACTION_SCHEMA, TRACK_SCHEMA, conform
from models.serving import Predictor
from pipelines.clean import derive_kinematics, resample_tracks
from pipelines.features import TrackIndex, build_features
from pipelines.picture import Picture

STEP = 5.0


def _points(seed: int = 0) -> pd.DataFrame:
    """Six flights converging on one point at FL300-FL310 with irregular sampling (1-7 s), a 90 s gap,
    missing kinematics on some points and a cleared level known on some."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2024-03-01T10:00:02.4Z")
    rows = []
    for k in range(6):
        hdg = 60.0 * k + rng.uniform(-10, 10)
        t = np.cumsum(rng.uniform(1, 7, 90))
        if k == 2:
            t[40:] += 90.0                                     # a gap longer than max_gap_s
        d_nm = (t - 300.0) * 450 / 3600                         # reaches the centre at t = 300 s
        lat = 50.0 - d_nm * np.cos(np.radians(hdg)) / 60
        lon = 5.0 - d_nm * np.sin(np.radians(hdg)) / 60 / np.cos(np.radians(50))
        alt = 30000.0 + 500 * (k % 3) + (k == 4) * np.minimum(t, 120) * 15
        df = pd.DataFrame({"time": t0 + pd.to_timedelta(t, unit="s"), "flight_id": f"F{k}", "lat_deg": lat,
                           "lon_deg": lon, "alt_ft": alt, "gs_kt": 450.0, "trk_deg": hdg % 360,
                           "vs_fpm": 900.0 * (k == 4), "cfl_ft": np.nan})
        miss = rng.random(len(df)) < 0.3
        df.loc[miss, ["gs_kt", "trk_deg", "vs_fpm"]] = np.nan
        df.loc[rng.random(len(df)) < 0.1, "cfl_ft"] = 31000.0 + 1000 * k
        rows.append(df)
    return pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=seed)


def _pandas_grid(points: pd.DataFrame) -> pd.DataFrame:
    df = conform(points.assign(callsign=None, source="test"), TRACK_SCHEMA, "tracks")
    return resample_tracks(derive_kinematics(df.sort_values(["flight_id", "time"], kind="stable")), STEP)


@pytest.mark.parametrize("seed", [0, 1])
def test_grid_equals_the_pandas_stages(seed):
    points = _points(seed)
    want = _pandas_grid(points).sort_values(["flight_id", "time"]).reset_index(drop=True)
    got = Picture.from_frame(points, STEP).frame().sort_values(["flight_id", "time"]).reset_index(drop=True)
    assert len(got) == len(want) > 0
    assert (got["flight_id"].to_numpy() == want["flight_id"].to_numpy()).all()
    assert (got["time"].to_numpy() == want["time"].to_numpy()).all()
    for c in ("lat_deg", "lon_deg", "alt_ft", "gs_kt", "trk_deg", "vs_fpm", "cfl_ft"):
        np.testing.assert_allclose(got[c].to_numpy(float), want[c].to_numpy(float), rtol=0, atol=1e-9, err_msg=c)


@pytest.mark.parametrize("seed", [0, 1])
def test_conflicts_and_features_equal_the_pandas_stages(seed):
    points = _points(seed)
    grid = _pandas_grid(points)
    pic = Picture.from_frame(points, STEP)
    cfg = ConflictConfig()
    times = sorted(grid["time"].unique())
    n_checked = 0
    for at in times[10::7]:
        conf = Predictor.detect(SimpleNamespace(conflicts=cfg), grid[grid["time"] <= at])
        want = conf[(conf["time"] == at) & conf["conflict"].astype(bool)].sort_values(["flight_id_1", "flight_id_2"])
        got = pic.samples(pd.Timestamp(at).value, cfg).frame().sort_values(["flight_id_1", "flight_id_2"])
        assert list(got["flight_id_1"]) == list(want["flight_id_1"]) and \
            list(got["flight_id_2"]) == list(want["flight_id_2"]), at
        assert (got["first_detection"].to_numpy() == want["first_detection"].to_numpy()).all()
        for c in ("tcpa_s", "dcpa_nm", "dist_nm", "dalt_ft"):
            np.testing.assert_allclose(got[c].to_numpy(float), want[c].to_numpy(float), rtol=1e-9, atol=1e-9)
        if len(got):
            acts = ACTION_SCHEMA.empty_table().to_pandas()
            for dcfg in (DatasetConfig(), DatasetConfig(other_conflicts=True)):
                a = build_features(got.reset_index(drop=True), pic.index, acts, dcfg)
                b = build_features(want.reset_index(drop=True), TrackIndex.build(grid, STEP), acts, dcfg)
                for k in a:
                    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6, err_msg=k)
            n_checked += len(got)
    assert n_checked > 0, "the scenario should put some pairs in conflict"


def test_requested_pairs_in_conflict_or_not():
    pic = Picture.from_frame(_points(0), STEP)
    at = pic.last_ns - 20 * int(STEP * 1e9)
    present = list(pic.present(at))
    s = pic.samples(at, pairs=[(present[1], present[0])]).frame()
    assert list(s[["flight_id_1", "flight_id_2"]].iloc[0]) == sorted(present[:2])
    assert s["first_detection"].iloc[0] <= s["time"].iloc[0]
    with pytest.raises(DataError, match="no position"):
        pic.samples(at, pairs=[(present[0], "NOPE")])
    with pytest.raises(DataError, match="decision time"):
        pic.samples(pic.last_ns + 10**12)


def test_flight_codes_of_a_few_ids_equal_the_index_lookup():
    """codes_of binary-searches a request's few ids and uses the hash lookup for many: both give the same codes."""
    from pipelines.features import TrackIndex
    idx = TrackIndex.build(_pandas_grid(_points(0)), STEP)
    names = list(idx.flights)
    ids = names[::2] + ["NOPE", "", names[-1] + "Z"] + names[1::3]
    want = idx.flights.get_indexer(pd.Index(ids, dtype=object))
    assert list(idx.codes_of(ids)) == list(want) and (want == -1).sum() == 3
    many = (ids * 20)[:100]                                   # beyond the binary-search size
    assert list(idx.codes_of(many)) == list(idx.flights.get_indexer(pd.Index(many, dtype=object)))


def test_the_pictures_detection_is_kept_for_the_other_conflicts_features():
    """At the picture's latest time its detection covers every row: the index keeps it instead of detecting twice
    (dataset.other_conflicts), and it is the one the index would compute."""
    points = _points(0)
    pic = Picture.from_frame(points, STEP)
    cfg = ConflictConfig()
    pic.samples(pic.last_ns, cfg)
    kept = pic.index._conflicts[cfg.model_dump_json()]
    fresh = TrackIndex.build(_pandas_grid(points), STEP).conflict_counts(cfg)
    assert len(kept[1]) > 0 and np.array_equal(kept[1], fresh[1])
    assert sorted(kept[0].tolist()) == sorted(fresh[0].tolist())
