"""Conflict detection: CPA geometry on known cases, the pre-filter against brute force, detect over time,
episodes and the stage's run()."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atc_il.config import ConflictConfig
from atc_il.geometry import from_local_nm
from atc_il.io import read_table, write_partitioned
from atc_il.schemas import CONFLICT_SCHEMA, EPISODE_SCHEMA, TRACK_SCHEMA
from pipelines import conflicts as C
from pipelines.conflicts import build_episodes, detect, detect_snapshot, run

LAT0, LON0 = 50.0, 5.0


def pair(p1, p2, cfg=ConflictConfig(), ids=("A", "B")):
    """Two aircraft given as (x_nm, y_nm, alt_ft, gs_kt, trk_deg, vs_fpm) around (LAT0, LON0)."""
    a = np.array([p1, p2], dtype=float)
    lat, lon = from_local_nm(a[:, 0], a[:, 1], LAT0, LON0)
    return detect_snapshot(list(ids), lat, lon, a[:, 2], a[:, 3], a[:, 4], a[:, 5], cfg)


def one(df):
    assert len(df) == 1, df
    return df.iloc[0]


# ---------------------------------------------------------------------------------------- geometry
def test_head_on():
    r = one(pair((-10, 0, 30000, 400, 90, 0), (10, 0, 30000, 400, 270, 0)))
    assert r.conflict and not r.los
    assert r.dist_nm == pytest.approx(20, rel=1e-6)
    assert r.tcpa_s == pytest.approx(90, rel=1e-6)          # 20 NM at 800 kt closure
    assert r.dcpa_nm == pytest.approx(0, abs=1e-6)
    assert r.tin_s == pytest.approx(67.5, rel=1e-6)         # 15 NM to go before 5 NM
    assert r.qdr_deg == pytest.approx(90, abs=1e-6) and r.dalt_ft == 0


def test_crossing_at_90_degrees():
    r = one(pair((-20, 0, 30000, 400, 90, 0), (0, -20, 30000, 400, 0, 0)))
    # (positions are placed with one cos(lat) scale, the detection uses the pair's mean latitude: ~0.3 % apart)
    assert r.conflict and r.tcpa_s == pytest.approx(180, rel=1e-2) and r.dcpa_nm == pytest.approx(0, abs=0.1)
    # B 20 NM further back: CPA 270 s later at 14.1 NM, no conflict
    assert pair((-20, 0, 30000, 400, 90, 0), (0, -40, 30000, 400, 0, 0)).empty


def test_overtaking_and_lookahead_boundary():
    a, b = (0, 0, 30000, 300, 90, 0), (-10, 0, 30000, 450, 90, 0)
    r = one(pair(a, b))                                       # 150 kt closure, 10 NM: tcpa 240 s, tin 120 s
    assert r.conflict and r.tcpa_s == pytest.approx(240, rel=1e-6) and r.tin_s == pytest.approx(120, rel=1e-6)
    assert one(pair(a, b, ConflictConfig(lookahead_s=120.5))).conflict
    assert pair(a, b, ConflictConfig(lookahead_s=119.5)).empty
    # diverging (the faster one in front): nothing
    assert pair((0, 0, 30000, 450, 90, 0), (-10, 0, 30000, 300, 90, 0)).empty


def test_vertical_crossing_climb_through_level():
    level = (-10, 0, 30000, 400, 90, 0)
    # climbing from 28000 at 2000 fpm: inside +-1000 ft between 30 s and 90 s; horizontal from 67.5 s
    r = one(pair(level, (10, 0, 28000, 400, 270, 2000)))
    assert r.conflict and r.tin_s == pytest.approx(67.5, rel=1e-6)
    # climbing from 25000: inside only between 120 s and 180 s, after the horizontal window (67.5-112.5 s)
    assert pair(level, (10, 0, 25000, 400, 270, 2000)).empty
    # descending through from above
    r = one(pair(level, (10, 0, 33000, 400, 270, -2000)))     # inside between 60 s and 120 s
    assert r.conflict and r.tin_s == pytest.approx(67.5, rel=1e-6) and r.dalt_ft == -3000


def test_level_separated_pairs_never_conflict():
    for dalt in (1000, 1001, 2000, 5000):
        assert pair((-10, 0, 30000, 400, 90, 0), (10, 0, 30000 + dalt, 400, 270, 0)).empty, dalt
        assert pair((0, 0, 30000, 400, 90, 0), (1, 0, 30000 - dalt, 400, 90, 0)).empty, dalt   # 1 NM, same track
    assert one(pair((-10, 0, 30000, 400, 90, 0), (10, 0, 30999, 400, 270, 0))).conflict


def test_los_flagged():
    r = one(pair((0, 0, 30000, 400, 90, 0), (3, 0, 30500, 400, 0, 0)))
    assert r.los and r.conflict and r.tin_s == 0 and r.dist_nm == pytest.approx(3, rel=1e-6)
    # horizontally close but 1500 ft apart, level: neither
    assert pair((0, 0, 30000, 400, 90, 0), (3, 0, 31500, 400, 0, 0)).empty


def test_output_orders_pair_by_flight_id_and_flips_geometry():
    r = one(pair((-10, 0, 31000, 400, 90, 0), (10, 0, 30500, 400, 270, 0), ids=("Z9", "A1")))
    assert (r.flight_id_1, r.flight_id_2) == ("A1", "Z9")
    assert r.dalt_ft == -500 and r.qdr_deg == pytest.approx(270, abs=1e-6)


def test_min_alt_and_missing_state_ignored():
    a, b = (-10, 0, 3000, 200, 90, 0), (10, 0, 3000, 200, 270, np.nan)
    assert one(pair(a, b)).conflict                           # missing vs = level
    assert pair(a, b, ConflictConfig(min_alt_ft=5000)).empty
    df = pair(a, (10, 0, 3000, np.nan, 270, 0))
    assert df.empty and df.attrs["skipped_missing_state"] == 1


def test_evaluate_matches_a_transcription_of_bluesky_cstatebased():
    """_evaluate against a line-by-line scalar transcription of cstatebased.hpp (SI units)."""
    rng = np.random.default_rng(3)
    n = 300
    lat, lon = rng.uniform(49, 51, n), rng.uniform(4, 6, n)
    alt = rng.choice([30000.0, 30500.0, 31000.0, 33000.0], n)
    gs, trk = rng.uniform(150, 500, n), rng.uniform(0, 360, n)
    vs = np.where(rng.random(n) < 0.4, rng.uniform(-3000, 3000, n), 0.0)
    cfg = ConflictConfig(lookahead_s=300)
    st = C._State(lat, lon, alt, gs, trk, vs, np.zeros(n, dtype=np.int64))
    i, j = np.triu_indices(n, 1)
    ev = C._evaluate(st, i, j, cfg)
    R, H, T = 5 * 1852.0, 1000 * 0.3048, 300.0
    gs_m, alt_m, vs_m = gs * 1852 / 3600, alt * 0.3048, vs * 0.3048 / 60
    for k in rng.choice(len(i), 4000, replace=False):
        a, b = i[k], j[k]
        dalt, dvs = alt_m[a] - alt_m[b], vs_m[a] - vs_m[b]
        vlos = abs(dalt) < H
        if abs(dvs) > 1e-6:
            hi, lo = (dalt + H) / -dvs, (dalt - H) / -dvs
            vtin, vtout = max(0.0, min(lo, hi)), max(lo, hi)
            ver = vtin <= T and vtout > 0.0
        else:
            vtin, vtout, ver = 0.0, 1e4, vlos
        la1, lo1, la2, lo2 = np.radians([lat[a], lon[a], lat[b], lon[b]])
        cav = np.cos(0.5 * (la1 + la2))
        d = 6371000.0 * np.sqrt((la2 - la1) ** 2 + ((lo2 - lo1) * cav) ** 2)
        q = np.arctan2((lo2 - lo1) * cav, la2 - la1)
        dx, dy = d * np.sin(q), d * np.cos(q)
        t1, t2 = np.radians(trk[a]), np.radians(trk[b])
        du = gs_m[a] * np.sin(t1) - gs_m[b] * np.sin(t2)
        dv = gs_m[a] * np.cos(t1) - gs_m[b] * np.cos(t2)
        vdx = du * dx + dv * dy
        hlos = d < R
        conflict = False
        if ver and not (vdx < 0.0 and not hlos):
            v2 = du * du + dv * dv
            tcpa = vdx / v2
            cpa2 = d * d - vdx * tcpa
            dt = np.sqrt(max(R * R - cpa2, 0.0) / v2)
            if hlos or tcpa - dt <= T:
                tin, tout = max(tcpa - dt, vtin), min(tcpa + dt, vtout)
                conflict = tin <= T and tin < tout and tout > 0.0
                if conflict:
                    assert ev["tcpa_s"][k] == pytest.approx(tcpa, rel=1e-9)
                    assert ev["dcpa_nm"][k] * 1852 == pytest.approx(np.sqrt(max(cpa2, 0)), rel=1e-6, abs=1e-3)
                    assert ev["tin_s"][k] == pytest.approx(tin, rel=1e-9, abs=1e-9)
        assert ev["conflict"][k] == conflict, (a, b)
        assert ev["los"][k] == (hlos and vlos)
    assert ev["conflict"].sum() > 50


# ---------------------------------------------------------------------------------------- pre-filter
def random_traffic(n, seed, lat=(49.0, 52.0), lon=(3.0, 6.0), climb=0.3, gs=(200.0, 520.0), levels=False):
    rng = np.random.default_rng(seed)
    alt = np.round(rng.uniform(200, 400, n)) * 100 if levels else rng.uniform(20000, 40000, n)
    vs = np.where(rng.random(n) < climb, rng.choice([-1, 1], n) * rng.uniform(500, 4000, n), 0.0)
    return (rng.uniform(*lat, n), (rng.uniform(*lon, n) + 180) % 360 - 180, alt,
            rng.uniform(*gs, n), rng.uniform(0, 360, n), vs)


def brute_force(st, cfg):
    i, j = np.triu_indices(len(st.lat), 1)
    ev = C._evaluate(st, i, j, cfg)
    hit = ev["conflict"] | ev["los"]
    return set(zip(i[hit].tolist(), j[hit].tolist()))


CASES = {
    "dense": dict(n=800),
    "flight levels": dict(n=800, levels=True),
    "slow and fast": dict(n=600, gs=(0.0, 600.0)),
    "all climbing": dict(n=500, climb=1.0),
    "large area, bands": dict(n=1500, lat=(30.0, 70.0), lon=(-20.0, 30.0)),
    "equator": dict(n=600, lat=(-2.0, 2.0), lon=(-2.0, 2.0)),
    "date line": dict(n=600, lat=(60.0, 64.0), lon=(177.0, 183.0)),
    "all round the globe": dict(n=1500, lat=(40.0, 42.0), lon=(-180.0, 180.0)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("lookahead", [120.0, 600.0])
def test_prefilter_never_misses_a_pair(name, lookahead):
    cfg = ConflictConfig(lookahead_s=lookahead)
    for seed in range(2):
        st = C._State(*random_traffic(seed=seed, **CASES[name]), np.zeros(CASES[name]["n"], dtype=np.int64))
        expected = brute_force(st, cfg)
        for k in (None, 1, 5):
            stats = {}
            i, j, _ = C._detect_rows(st, cfg, n_slices=k, stats=stats)
            assert set(zip(i.tolist(), j.tolist())) == expected, (name, seed, k, stats)
        if name == "dense" and lookahead == 600.0:
            assert len(expected) > 100 and stats["candidates"] < 0.1 * len(st.lat) ** 2 / 2, stats
        if name == "large area, bands":
            assert stats["bands"] > 1
    if name == "date line" and lookahead == 600.0:
        assert any(abs(a - b) > 180 for a, b in [(st.lon[p], st.lon[q]) for p, q in expected]), "no pair across 180"


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_kernel_equals_numpy_prefilter_and_brute_force(name):
    """The compiled sweep (pipelines/cd_kernel.py) finds exactly the pairs the numpy pre-filter and brute force
    find, with bit-identical pair columns (the exact test is the same numpy code), over several snapshots."""
    if not C.cd_kernel.AVAILABLE:
        pytest.skip("numba is not installed")
    cfg = ConflictConfig()
    n = CASES[name]["n"]
    arrays = [random_traffic(seed=seed, **CASES[name]) for seed in range(3)]
    st = C._State(*[np.concatenate([a[k] for a in arrays]) for k in range(6)], np.repeat(np.arange(3), n))
    stats = {}
    ik, jk, ck = C._detect_rows(st, cfg, stats=stats, method="kernel")
    inum, jnum, cnum = C._detect_rows(st, cfg, method="numpy")
    # the kernel's own test leaves the hits and the pairs within rounding of a threshold (e.g. dalt = hpz)
    assert stats["kernel"] and len(ik) <= stats["candidates"] <= 1.1 * len(ik) + 5
    assert np.array_equal(ik, inum) and np.array_equal(jk, jnum)
    for c in C.PAIR_COLUMNS:
        assert np.array_equal(ck[c], cnum[c]), c
    for g in range(3):
        sub = C._State(*arrays[g], np.zeros(n, dtype=np.int64))
        sel = st.group[ik] == g
        assert set(zip((ik[sel] - g * n).tolist(), (jk[sel] - g * n).tolist())) == brute_force(sub, cfg)


def test_compiled_kernel_in_float64_when_float32_margins_do_not_cover_the_reach():
    """A long look-ahead (pairs up to thousands of NM apart can conflict) takes the float64 sweep; same pairs."""
    if not C.cd_kernel.AVAILABLE:
        pytest.skip("numba is not installed")
    cfg = ConflictConfig(lookahead_s=7200.0)
    st = C._State(*random_traffic(300, 5), np.zeros(300, dtype=np.int64))
    gs_max = float(np.hypot(st.u, st.v).max())
    reach, ri = cfg.rpz_nm + 2 * gs_max * cfg.lookahead_s, 1.05 * cfg.rpz_nm + 0.05
    assert reach * reach * 1e-5 >= ri * ri - cfg.rpz_nm ** 2            # the float32 margins do not hold here
    i, j, _ = C._detect_rows(st, cfg, method="kernel")
    assert set(zip(i.tolist(), j.tolist())) == brute_force(st, cfg) and len(i) > 50


def test_compiled_kernel_keeps_pairs_at_the_thresholds():
    """Pairs placed exactly at (or within rounding of) rpz, hpz, the look-ahead and the 1e-6 m/s level
    threshold get the reference's answer: the kernel's inflated test keeps them for the exact one."""
    cfg = ConflictConfig()
    cases = [
        ((0, 0, 30000, 400, 0, 0), (cfg.rpz_nm, 0, 30000, 400, 0, 0)),                   # distance = rpz
        ((0, 0, 30000, 400, 0, 0), (cfg.rpz_nm - 1e-9, 0, 30000, 400, 0, 0)),            # just inside
        ((0, 0, 30000, 400, 0, 0), (0, 1, 30000 + cfg.hpz_ft, 400, 0, 0)),               # dalt = hpz
        ((0, 0, 30000, 400, 0, 0), (0, 1, 30000 + cfg.hpz_ft - 1e-7, 400, 0, 0)),        # just inside
        ((0, 0, 30000, 450, 90, 0), (cfg.rpz_nm, 0, 30000, 450, 270, 0)),                # head-on at rpz
        ((0, 0, 30000, 400, 90, 0), (100.0, cfg.rpz_nm - 1e-6, 30000, 200, 270, 0)),     # dcpa just inside
        ((0, 0, 30000, 400, 90, 0), (400 * 600 / 3600 + 400 * 600 / 3600 + cfg.rpz_nm, 0, 30000, 400, 270, 0)),
        ((0, 0, 30000, 400, 90, 0), (0, 3, 30000 + cfg.hpz_ft + 600 * 1e-6 / 0.3048 * 60, 400, 90,
                                     1e-6 / 0.3048 * 60)),                               # |dvs| at the threshold
        ((0, 0, 30000, 400, 90, 1000), (50, 0, 40000, 400, 270, 0)),                     # climbs into it
    ]
    for p1, p2 in cases:
        a = np.array([p1, p2], dtype=float)
        lat, lon = from_local_nm(a[:, 0], a[:, 1], LAT0, LON0)
        st = C._State(lat, lon, a[:, 2], a[:, 3], a[:, 4], a[:, 5], np.zeros(2, dtype=np.int64))
        got = C._detect_rows(st, cfg, method="kernel")
        ref = C._detect_rows(st, cfg, method="numpy")
        assert got[0].tolist() == ref[0].tolist() and got[1].tolist() == ref[1].tolist(), (p1, p2)
        assert set(zip(got[0].tolist(), got[1].tolist())) == brute_force(st, cfg), (p1, p2)


def test_detect_rows_over_many_groups_equals_per_group():
    cfg = ConflictConfig()
    arrays = [random_traffic(200, seed) for seed in range(4)]
    cat = [np.concatenate([a[k] for a in arrays]) for k in range(6)]
    st = C._State(*cat, np.repeat(np.arange(4), 200))
    i, j, cols = C._detect_rows(st, cfg)
    assert (st.group[i] == st.group[j]).all()
    for g, a in enumerate(arrays):
        ig, jg, _ = C._detect_rows(C._State(*a, np.zeros(200, dtype=np.int64)), cfg)
        sel = st.group[i] == g
        assert set(zip((i[sel] - 200 * g).tolist(), (j[sel] - 200 * g).tolist())) == set(zip(ig.tolist(), jg.tolist()))


# ---------------------------------------------------------------------------------------- detect over time
def make_tracks(n_flights=60, n_steps=40, step_s=5.0, seed=0, t0="2024-03-01T10:00:00Z"):
    """Straight-line flights on a regular grid (some climbing), many of them in conflict."""
    lat, lon, alt, gs, trk, vs = random_traffic(n_flights, seed, lat=(50.0, 50.6), lon=(4.0, 4.9), gs=(250, 450))
    times = pd.Timestamp(t0) + pd.to_timedelta(np.arange(n_steps) * step_s, unit="s")
    rows = []
    for k in range(n_flights):
        t = np.arange(n_steps) * step_s
        x = gs[k] * np.sin(np.radians(trk[k])) * t / 3600
        y = gs[k] * np.cos(np.radians(trk[k])) * t / 3600
        la, lo = from_local_nm(x, y, lat[k], lon[k])
        rows.append(pd.DataFrame({"time": times, "flight_id": f"F{k:03d}", "callsign": f"CS{k}", "lat_deg": la,
                                  "lon_deg": lo, "alt_ft": alt[k] + vs[k] * t / 60, "gs_kt": gs[k], "trk_deg": trk[k],
                                  "vs_fpm": vs[k], "cfl_ft": np.nan, "source": "test"}))
    return pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=1).reset_index(drop=True)


def test_detect_equals_detect_snapshot_per_time():
    tracks = make_tracks()
    out = detect(tracks)
    assert list(out.columns) == CONFLICT_SCHEMA.names and out["episode_id"].isna().all()
    assert len(out) > 20 and out.attrs["snapshots"] == 40
    assert (out["flight_id_1"] < out["flight_id_2"]).all()
    assert out.equals(out.sort_values(["time", "flight_id_1", "flight_id_2"]).reset_index(drop=True))
    for t, snap in tracks.groupby("time"):
        ref = detect_snapshot(snap.flight_id, snap.lat_deg, snap.lon_deg, snap.alt_ft, snap.gs_kt, snap.trk_deg,
                              snap.vs_fpm)
        got = out[out.time == t].reset_index(drop=True)
        assert list(zip(got.flight_id_1, got.flight_id_2)) == list(zip(ref.flight_id_1, ref.flight_id_2))
        for c in C.PAIR_COLUMNS:
            np.testing.assert_allclose(got[c].to_numpy(float), ref[c].to_numpy(float), rtol=1e-9, atol=1e-9)


def test_detect_chunks_and_rejects_duplicates(monkeypatch):
    tracks = make_tracks(n_steps=12)
    whole = detect(tracks)
    monkeypatch.setattr(C, "CHUNK_ROWS", 100)                # a few snapshots per pass
    pd.testing.assert_frame_equal(detect(tracks), whole)
    with pytest.raises(Exception, match="duplicate"):
        detect(pd.concat([tracks, tracks.iloc[:1]]))
    assert detect(tracks.iloc[:0]).empty


# ---------------------------------------------------------------------------------------- episodes
def conflict_rows(pairs):
    """Conflict records from (f1, f2, seconds after t0, tcpa, dcpa, los)."""
    t0 = pd.Timestamp("2024-03-01T10:00:00Z")
    return pd.DataFrame([{"time": t0 + pd.Timedelta(seconds=s), "flight_id_1": a, "flight_id_2": b, "dist_nm": 10.0,
                          "dalt_ft": 0.0, "tcpa_s": tc, "dcpa_nm": dc, "tin_s": 10.0, "qdr_deg": 0.0,
                          "conflict": True, "los": los, "episode_id": None} for a, b, s, tc, dc, los in pairs])


def line_tracks(spec, n_steps=50, step_s=5.0):
    """Flights F (x0, y0, alt, gs, trk) in local NM, on a 5 s grid from t0."""
    t0 = pd.Timestamp("2024-03-01T10:00:00Z")
    t = np.arange(n_steps) * step_s
    rows = []
    for fid, (x0, y0, alt, gs, trk) in spec.items():
        la, lo = from_local_nm(x0 + gs * np.sin(np.radians(trk)) * t / 3600, y0 + gs * np.cos(np.radians(trk)) * t / 3600,
                               LAT0, LON0)
        rows.append(pd.DataFrame({"time": t0 + pd.to_timedelta(t, unit="s"), "flight_id": fid, "lat_deg": la,
                                  "lon_deg": lo, "alt_ft": alt, "gs_kt": gs, "trk_deg": trk, "vs_fpm": 0.0}))
    return pd.concat(rows, ignore_index=True)


def test_episodes_grouping_and_statistics():
    tracks = line_tracks({"A": (-10, 0, 30000, 400, 90), "B": (10, 0.5, 30300, 400, 270), "C": (0, -30, 35000, 300, 0)})
    recs = conflict_rows([("A", "B", 0, 90, 0.5, False), ("A", "B", 5, 85, 0.5, False), ("A", "B", 30, 60, 0.5, False),
                          ("A", "B", 65, 25, 0.5, True), ("A", "B", 70, 20, 0.5, True),
                          ("A", "C", 0, 100, 3.0, False), ("A", "C", 200, 50, 3.0, False)])
    episodes, conf = build_episodes(recs, tracks, ConflictConfig(max_episode_gap_s=30))
    assert list(episodes.columns) == EPISODE_SCHEMA.names
    assert list(episodes.episode_id) == ["A|B|20240301T100000", "A|C|20240301T100000", "A|B|20240301T100105",
                                         "A|C|20240301T100320"]
    e1, e3 = episodes.iloc[0], episodes.iloc[2]
    assert e1.n_steps == 3 and not e1.los and e1.los_duration_s == 0 and e1.n_actions == 0   # the 35 s gap splits
    assert e1.last_detection - e1.first_detection == pd.Timedelta(seconds=30)
    assert e1.predicted_tcpa_s == 90 and e1.predicted_dcpa_nm == 0.5
    assert e1.predicted_cpa_time == e1.first_detection + pd.Timedelta(seconds=90)
    # window up to the predicted CPA (90 s): A and B meet then, 0.5 NM and 300 ft apart
    assert e1.min_dist_nm == pytest.approx(0.5, abs=1e-3)
    assert e1.min_dist_time == e1.first_detection + pd.Timedelta(seconds=90) and e1.dalt_at_min_ft == -300
    assert e3.n_steps == 2 and e3.los and e3.los_duration_s == 10.0 and e3.min_dist_nm == pytest.approx(0.5, abs=1e-3)
    assert episodes.iloc[1].n_steps == 1 and not episodes.iloc[1].los
    assert list(conf.episode_id) == ["A|B|20240301T100000"] * 3 + ["A|B|20240301T100105"] * 2 \
        + ["A|C|20240301T100000", "A|C|20240301T100320"]
    # a gap of exactly max_episode_gap_s still joins
    joined = build_episodes(recs, tracks, ConflictConfig(max_episode_gap_s=35))[0]
    assert list(joined.n_steps) == [5, 1, 1] and joined.iloc[0].los_duration_s == 10.0
    assert len(build_episodes(recs.iloc[:0], tracks)[0]) == 0


def test_episodes_min_distance_window_ends_at_later_of_last_detection_and_cpa():
    tracks = line_tracks({"A": (-20, 0, 30000, 400, 90), "B": (20, 1, 30000, 400, 270)})   # CPA at t = 180 s
    one_detection = conflict_rows([("A", "B", 0, 180, 1.0, False)])
    ep = build_episodes(one_detection, tracks)[0].iloc[0]
    assert ep.min_dist_nm == pytest.approx(1.0, abs=1e-3) and ep.min_dist_time.second == 0 and ep.min_dist_time.minute == 3
    short = conflict_rows([("A", "B", 0, 50, 1.0, False)])    # predicted CPA at 50 s: window stops there
    ep = build_episodes(short, tracks)[0].iloc[0]
    assert ep.min_dist_time == ep.first_detection + pd.Timedelta(seconds=50) and ep.min_dist_nm > 10


# ---------------------------------------------------------------------------------------- run
def test_run_writes_partitioned_conflicts_and_episodes(tmp_path):
    tracks = make_tracks(n_steps=30)
    write_partitioned(tracks, TRACK_SCHEMA, tmp_path / "tracks")
    summary = run(tmp_path / "tracks", tmp_path / "out")
    conf = read_table(tmp_path / "out" / "conflicts", CONFLICT_SCHEMA)
    eps = read_table(tmp_path / "out" / "episodes", EPISODE_SCHEMA)
    assert summary["grid_times"] == 30 and summary["aircraft_snapshots"] == len(tracks)
    assert summary["conflict_steps"] == len(conf) > 0 and summary["episodes"] == len(eps) > 0
    assert conf.episode_id.notna().all() and set(conf.episode_id) == set(eps.episode_id)
    assert (tmp_path / "out" / "conflicts" / "day=2024-03-01" / "_SUCCESS").exists()
    assert summary["los_episodes"] == int(eps.los.sum()) and summary["snapshots_per_s"] > 0
    assert eps.groupby("episode_id").n_steps.sum().sum() == len(conf)
