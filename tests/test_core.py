"""The core: units, contracts, geometry, configuration, atomic I/O."""

import numpy as np
import pandas as pd
import pytest

from atc_il import units
from atc_il.config import PipelineConfig, load_pipeline_config
from atc_il.errors import ConfigError, DataError
from atc_il.geometry import cpa, from_local_nm, haversine_nm, kwik_dist_nm, kwik_qdr_dist_nm, to_local_nm, wrap180
from atc_il.io import is_complete, read_table, write_partitioned
from atc_il.schemas import TRACK_SCHEMA, conform, to_ns


def test_unit_factors():
    assert units.factor("m", "ft") == pytest.approx(3.28084, rel=1e-5)
    assert units.factor("FL", "ft") == 100.0
    assert units.factor("m/s", "kt") == pytest.approx(1.943844, rel=1e-6)
    assert units.factor("m/s", "fpm") == pytest.approx(196.8504, rel=1e-6)
    with pytest.raises(ValueError, match="cannot convert 'furlong'"):
        units.factor("furlong", "ft")


@pytest.mark.parametrize("case, dx, dy, du, dv, tcpa, dcpa", [
    ("head-on", 0, 10, 0, -800, 45.0, 0.0),                 # B 10 NM north closing at 800 kt
    ("crossing at 90", 10, 10, -400, -400, 90.0, 0.0),     # both reach the crossing point in 90 s
    ("overtaking", 0, -5, 0, 100, 180.0, 0.0),             # faster one 5 NM behind, 100 kt overtake
    ("passing abeam", 3, 10, 0, -600, 60.0, 3.0),          # 3 NM lateral offset
    ("diverging", 0, 10, 0, 400, -90.0, 0.0),              # CPA in the past
])
def test_cpa_known_cases(case, dx, dy, du, dv, tcpa, dcpa):
    t, d = cpa(np.float64(dx), np.float64(dy), np.float64(du), np.float64(dv))
    assert t == pytest.approx(tcpa, abs=1e-6), case
    assert d == pytest.approx(dcpa, abs=1e-3), case


def test_distances_and_frames():
    qdr, d = kwik_qdr_dist_nm(50.0, 5.0, 50.5, 5.0)
    assert d == pytest.approx(30.0, rel=2e-3) and qdr == pytest.approx(0.0)
    assert haversine_nm(50.0, 5.0, 50.0, 6.0) == pytest.approx(kwik_qdr_dist_nm(50, 5, 50, 6)[1], rel=1e-3)
    x, y = to_local_nm(50.2, 5.3, 50.0, 5.0)
    lat, lon = from_local_nm(x, y, 50.0, 5.0)
    assert (lat, lon) == (pytest.approx(50.2), pytest.approx(5.3))
    assert wrap180(350.0 - 10.0) == pytest.approx(-20.0)


def test_conform_names_missing_columns_and_casts():
    df = pd.DataFrame({"time": pd.to_datetime(["2024-01-01T00:00Z"]), "flight_id": ["A"], "lat_deg": [1.0],
                       "lon_deg": [2.0], "alt_ft": [3000], "extra": [1]})
    out = conform(df, TRACK_SCHEMA)
    assert list(out.columns) == TRACK_SCHEMA.names and out["gs_kt"].isna().all() and out["alt_ft"].dtype == float
    with pytest.raises(DataError, match=r"missing required column\(s\) \['lat_deg'\]"):
        conform(df.drop(columns="lat_deg"), TRACK_SCHEMA, "tracks")


def test_config_rejects_unknown_and_invalid_keys(tmp_path):
    assert load_pipeline_config().conflicts.rpz_nm == 5.0
    p = tmp_path / "c.yaml"
    p.write_text("conflicts: {rpz_nm: -1}\n")
    with pytest.raises(ConfigError, match=r"conflicts.rpz_nm: Input should be greater than 0"):
        load_pipeline_config(p)
    p.write_text("conflicts: {rpz: 3}\n")
    with pytest.raises(ConfigError, match="conflicts.rpz: Extra inputs are not permitted"):
        load_pipeline_config(p)
    p.write_text("dataset: {history_steps: 12}\n")
    assert load_pipeline_config(p, dataset={"neighbours": 2}).dataset.history_steps == 12
    assert isinstance(load_pipeline_config(p), PipelineConfig)


def test_partitioned_write_is_marked_and_reads_back(tmp_path):
    times = pd.to_datetime(["2024-01-01T23:59:55Z", "2024-01-02T00:00:00Z"])
    df = pd.DataFrame({"time": times, "flight_id": ["A", "A"], "lat_deg": [1.0, 1.1], "lon_deg": [2.0, 2.0],
                       "alt_ft": [3e4, 3e4]})
    files = write_partitioned(df, TRACK_SCHEMA, tmp_path / "tracks")
    assert [f.parent.name for f in files] == ["day=2024-01-01", "day=2024-01-02"]
    assert all(is_complete(f.parent) for f in files)
    back = read_table(tmp_path / "tracks", TRACK_SCHEMA)
    assert len(back) == 2 and list(to_ns(back["time"])) == list(to_ns(times))
    assert not list((tmp_path / "tracks").rglob(".tmp-*"))


def test_kwik_dist_is_bit_identical_to_the_distance_with_bearing():
    rng = np.random.default_rng(3)
    a = [rng.uniform(-80, 80, 500), rng.uniform(-180, 180, 500), rng.uniform(-80, 80, 500), rng.uniform(-180, 180, 500)]
    np.testing.assert_array_equal(kwik_dist_nm(*a), kwik_qdr_dist_nm(*a)[1])
