"""Readers, validation, quarantine, streaming and the ingest stage, on files made in tmp_path."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from atc_il.errors import ReadError
from atc_il.geometry import from_local_nm
from atc_il.io import read_table
from atc_il.schemas import QUARANTINE_REASONS, TRACK_SCHEMA
from atc_il.units import FT_M, KT_MPS
from pipelines.ingest import ColumnMapping, ingest, load_mapping, read_tracks, validate_chunk

T0 = 1_709_287_200.0          # 2024-03-01T10:00:00Z
COLS = [f.name for f in TRACK_SCHEMA]


def raw_flight(icao="abc123", n=30, dt=5.0, t0=T0, gs_kt=420.0, alt_ft=30000.0, north=0.0):
    t = t0 + np.arange(n) * dt
    x = gs_kt * (t - t0) / 3600.0
    lat, lon = from_local_nm(x, np.full(n, north), 50.0, 5.0)
    return pd.DataFrame({"t": t, "icao24": icao, "callsign": f"CS{icao[:3]}", "lat": lat, "lon": lon,
                         "alt_ft": np.full(n, alt_ft), "gs_kt": gs_kt, "trk": 90.0, "vs": 0.0})


def read_all(path, **kw) -> pd.DataFrame:
    return pd.concat(list(read_tracks(path, **kw)), ignore_index=True)


def test_generic_csv_with_mapping_in_metres_and_mps(tmp_path):
    f = raw_flight()
    src = pd.DataFrame({"ts": pd.to_datetime(f.t, unit="s").dt.strftime("%Y-%m-%d %H:%M:%S"),   # naive = UTC
                        "hex": f.icao24, "latitude": f.lat, "longitude": f.lon,
                        "altitude": f.alt_ft * FT_M, "speed": f.gs_kt * KT_MPS})
    src.to_csv(tmp_path / "a.csv", index=False)
    m = load_mapping({"columns": {"time": "ts", "flight_id": "hex", "lat_deg": "latitude", "lon_deg": "longitude",
                                  "alt_ft": "altitude", "gs_kt": "speed"}, "units": {"alt_ft": "m", "gs_kt": "m/s"}})
    df = read_all(tmp_path / "a.csv", mapping=m)
    assert list(df.columns[:len(COLS)]) == COLS and len(df) == 30
    assert df["alt_ft"].to_numpy() == pytest.approx(30000.0)
    assert df["gs_kt"].to_numpy() == pytest.approx(420.0)
    assert df["time"].iloc[0] == pd.Timestamp(T0, unit="s", tz="UTC")
    assert (df["flight_id"] == "abc123").all() and (df["source"] == "csv").all()


def test_mapping_from_cli_string_and_yaml(tmp_path):
    cli = load_mapping("alt_ft=altitude:m,gs_kt=speed:m/s,time=ts:s,lat=la,lon=lo,flight_id=icao+cs")
    assert cli.columns == {"alt_ft": "altitude", "gs_kt": "speed", "time": "ts", "lat_deg": "la", "lon_deg": "lo"}
    assert cli.units == {"alt_ft": "m", "gs_kt": "m/s"} and cli.time_unit == "s"
    assert cli.flight_id_from == ["icao", "cs"]
    (tmp_path / "m.yaml").write_text("time: ts:ms\nflight_id: id\nlat_deg: la\nlon_deg: lo\nalt_ft: fl:fl\n")
    pd.DataFrame({"ts": [T0 * 1000 + i * 5000 for i in range(3)], "id": "X", "la": 50.0, "lo": [5.0, 5.01, 5.02],
                  "fl": [350, 351, 352]}).to_csv(tmp_path / "b.csv", index=False)
    df = read_all(tmp_path / "b.csv", mapping=str(tmp_path / "m.yaml"))
    assert df["alt_ft"].tolist() == [35000.0, 35100.0, 35200.0]
    assert df["time"].iloc[1] == pd.Timestamp(T0 + 5, unit="s", tz="UTC")
    with pytest.raises(Exception, match="unknown canonical column"):
        load_mapping("nonsense=a")


def opensky_frame(n=20) -> pd.DataFrame:
    f = raw_flight(n=n)
    return pd.DataFrame({"time": f.t.astype(int), "icao24": f.icao24, "lat": f.lat, "lon": f.lon,
                         "velocity": f.gs_kt * KT_MPS, "heading": 90.0, "vertrate": 5.08,
                         "callsign": "AFR123  ", "onground": False, "baroaltitude": f.alt_ft * FT_M,
                         "geoaltitude": f.alt_ft * FT_M + 100})


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_opensky_detected_and_converted(tmp_path, suffix):
    path = tmp_path / f"states.{suffix}"
    frame = opensky_frame()
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    df = read_all(path)
    assert (df["source"] == "opensky").all() and (df["flight_id"] == "abc123").all()
    assert (df["callsign"] == "AFR123").all()
    assert df["alt_ft"].to_numpy() == pytest.approx(30000.0)
    assert df["gs_kt"].to_numpy() == pytest.approx(420.0)
    assert df["vs_fpm"].to_numpy() == pytest.approx(1000.0, rel=1e-3)
    assert df["time"].iloc[0] == pd.Timestamp(int(T0), unit="s", tz="UTC")


def traffic_frame() -> pd.DataFrame:
    f = raw_flight()
    return pd.DataFrame({"timestamp": pd.to_datetime(f.t, unit="s", utc=True), "icao24": f.icao24,
                         "callsign": f.callsign, "latitude": f.lat, "longitude": f.lon, "altitude": f.alt_ft,
                         "groundspeed": f.gs_kt, "track": f.trk, "vertical_rate": f.vs})


@pytest.mark.parametrize("how", ["records.json", "columns.json.gz", "frame.parquet"])
def test_traffic_formats(tmp_path, how):
    path = tmp_path / how
    frame = traffic_frame()
    if how.endswith("parquet"):
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient=how.split(".")[0], date_format="epoch", date_unit="ms")
    df = read_all(path)
    assert len(df) == 30 and (df["source"] == "traffic").all()
    assert df["time"].iloc[3] == pd.Timestamp(T0 + 15, unit="s", tz="UTC")
    assert df["alt_ft"].to_numpy() == pytest.approx(30000.0) and df["gs_kt"].to_numpy() == pytest.approx(420.0)


def write_bluesky_log(path, rows=10):
    lines = ["# BlueSky Datalogger, positions of all aircraft", "# simt, id, lat, lon, alt, tas"]
    for i in range(rows):
        for j, ac in enumerate(("KL204", "AF1")):
            lines.append(f"{i * 5.0:.8f},{ac},{52.0 + 0.01 * i:.8f},{4.0 + j:.8f},{10000.0:.8f},{230.0:.8f}")
    path.write_text("\n".join(lines) + "\n")


def test_bluesky_log(tmp_path):
    write_bluesky_log(tmp_path / "LOG_scen_20240101.log")
    df = read_all(tmp_path / "LOG_scen_20240101.log")
    assert len(df) == 20 and set(df["flight_id"]) == {"KL204", "AF1"} and (df["source"] == "bluesky").all()
    assert df["time"].min() == pd.Timestamp("2000-01-01T00:00Z") and df["time"].max() == pd.Timestamp("2000-01-01T00:00:45Z")
    assert df["alt_ft"].to_numpy() == pytest.approx(10000 / FT_M)
    assert df["gs_kt"].to_numpy() == pytest.approx(230 / KT_MPS)          # tas: no wind in BlueSky's default
    df2 = read_all(tmp_path / "LOG_scen_20240101.log", fmt="bluesky", mapping="t0=2024-05-01T12:00:00Z")
    assert df2["time"].min() == pd.Timestamp("2024-05-01T12:00Z")


def test_chunked_read_equals_unchunked(tmp_path):
    frame = pd.concat([opensky_frame(23), opensky_frame(17).assign(icao24="def456")])
    frame.to_csv(tmp_path / "s.csv", index=False)
    frame.to_parquet(tmp_path / "s.parquet")
    for path in (tmp_path / "s.csv", tmp_path / "s.parquet"):
        chunks = list(read_tracks(path, chunk_rows=7))
        assert len(chunks) == 6 and max(len(c) for c in chunks) == 7
        pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), read_all(path))


def test_validate_chunk_reasons_and_columns():
    f = raw_flight(n=5)
    df = pd.DataFrame({"time": pd.to_datetime(f.t, unit="s", utc=True), "flight_id": "X", "lat_deg": f.lat,
                       "lon_deg": f.lon, "alt_ft": [1000.0, np.nan, 99999.0, 1000.0, 1000.0], "gs_kt": -5.0,
                       "_unparseable": [None, None, None, "alt_ft='x'", None]})
    df.loc[4, "gs_kt"] = 300.0
    kept, q = validate_chunk(df, "f.csv")
    assert list(kept.columns) == COLS and len(kept) == 1
    assert list(q.columns) == COLS + ["reason", "detail", "file"]
    assert q["reason"].tolist() == ["out_of_range", "missing_required", "out_of_range", "unparseable"]
    assert "gs_kt=-5 outside" in q["detail"].iloc[0] and (q["file"] == "f.csv").all()


def test_on_ground_rows_are_quarantined_as_on_ground_not_missing_required():
    f = raw_flight(n=5)
    df = pd.DataFrame({"time": pd.to_datetime(f.t, unit="s", utc=True), "flight_id": "X", "lat_deg": f.lat,
                       "lon_deg": f.lon, "alt_ft": [np.nan, 1500.0, np.nan, 30000.0, 99999.0],
                       "_on_ground": pd.array([True, True, False, None, None], dtype="boolean"),
                       "_unparseable": None})
    kept, q = validate_chunk(df, "f.json")
    assert len(kept) == 1 and kept["alt_ft"].tolist() == [30000.0]          # an unknown flag is not on the ground
    assert q["reason"].tolist() == ["on_ground", "on_ground", "missing_required", "out_of_range"]
    assert q["detail"].iloc[0] == "on the ground (the feed's onground flag); alt_ft missing"
    assert q["detail"].iloc[1] == "on the ground (the feed's onground flag)"


@pytest.mark.parametrize("values", [[True, False, False], ["true", "False", None], [1, 0, 0]])
def test_readers_carry_the_feeds_ground_flag(tmp_path, values):
    frame = traffic_frame().iloc[:3].assign(onground=values)
    frame.loc[0, "altitude"] = np.nan
    path = tmp_path / "ground.json.gz"
    frame.to_json(path, orient="columns", date_format="epoch", date_unit="ms")
    df = read_all(path)
    assert df["_on_ground"].tolist()[:2] == [True, False]
    kept, q = validate_chunk(df, str(path))
    assert q["reason"].tolist() == ["on_ground"] and len(kept) == 2


def test_ingest_quarantine_and_reconciliation(tmp_path):
    good = pd.concat([raw_flight("aaa111"), raw_flight("bbb222", north=20.0)], ignore_index=True)
    extra = raw_flight("ccc333", n=2, north=40.0)                      # too_short
    good.loc[5, "lat"] += 1.0                                           # impossible_jump
    good.loc[40, "alt_ft"] = 8000.0                                     # altitude_spike
    dup = good.iloc[[10]]                                               # duplicate
    df = pd.concat([good, extra, dup], ignore_index=True).astype({"alt_ft": object, "lat": object})
    df.loc[12, "alt_ft"] = "n/a?"                                       # unparseable
    df.loc[14, "lat"] = None                                            # missing_required
    df.loc[16, "alt_ft"] = 123456.0                                     # out_of_range (real glitches are > 100000 ft)
    df.loc[18, "t"] = 0                                                 # implausible_time (1970)
    df.loc[20, ["lat", "lon"]] = df.loc[19, ["lat", "lon"]].to_numpy()  # stale_position (forward-filled)
    df["onground"] = False
    df.loc[22, ["onground", "alt_ft"]] = [True, None]                   # on_ground (a surface report: no altitude)
    path = tmp_path / "mixed.csv"
    df.to_csv(path, index=False)
    mapping = "time=t:s,flight_id=icao24,lat=lat,lon=lon,trk=trk,vs=vs"
    rep = ingest([path], tmp_path / "out", mapping=mapping, chunk_rows=16, progress=False)
    assert rep.rows_in == len(df) == rep.rows_kept + rep.rows_quarantined
    assert all(rep.quarantined_by_reason[r] >= 1 for r in QUARANTINE_REASONS), rep.quarantined_by_reason
    q = pd.read_parquet(tmp_path / "out" / "quarantine")
    assert len(q) == rep.rows_quarantined and q["detail"].notna().all() and (q["file"] == str(path)).all()
    assert set(q["reason"]) == set(QUARANTINE_REASONS)
    stored = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert stored["rows_in"] == rep.rows_in and "quarantined" in stored["reconciliation"]
    tracks = read_table(tmp_path / "out" / "tracks", TRACK_SCHEMA)
    assert set(tracks["flight_id"]) == {"aaa111", "bbb222"} and len(tracks) == rep.points_out
    assert list((tmp_path / "out" / "tracks").glob("day=2024-03-01/part-*.parquet"))


def test_unreadable_files_are_reported_and_others_ingested(tmp_path, capsys):
    traffic_frame().to_parquet(tmp_path / "good.parquet")
    (tmp_path / "garbage.parquet").write_bytes(os.urandom(2048))
    (tmp_path / "garbage.csv").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "nocols.csv").write_text("a,b\n1,2\n")
    inputs = [tmp_path / n for n in ("garbage.parquet", "missing.csv", "good.parquet", "garbage.csv", "nocols.csv")]
    rep = ingest(inputs, tmp_path / "out", progress=False)
    assert rep.files_ok == [str(tmp_path / "good.parquet")]
    assert set(rep.files_failed) == {str(p) for p in inputs if p.name != "good.parquet"}
    assert "no such file" in rep.files_failed[str(tmp_path / "missing.csv")]
    err = capsys.readouterr().err
    for p in inputs[:2] + inputs[3:]:
        assert p.name in err
    assert rep.rows_kept == 30 and rep.flights == 1
    with pytest.raises(ReadError, match="garbage.parquet"):
        next(read_tracks(tmp_path / "garbage.parquet"))


def test_malformed_csv_line_is_quarantined_not_dropped(tmp_path):
    f = raw_flight(n=6)
    text = f.to_csv(index=False).splitlines()
    text.insert(3, "1,2,3")                                             # wrong number of fields
    (tmp_path / "m.csv").write_text("\n".join(text) + "\n")
    mapping = ColumnMapping({"time": "t", "flight_id": "icao24", "lat_deg": "lat", "lon_deg": "lon"}, time_unit="s")
    rep = ingest([tmp_path / "m.csv"], tmp_path / "out", mapping=mapping, resample=False, progress=False)
    assert rep.rows_in == 7 and rep.quarantined_by_reason["unparseable"] == 1 and rep.rows_kept == 6
    q = pd.read_parquet(tmp_path / "out" / "quarantine")
    assert "malformed line" in q["detail"].iloc[0]


def test_buckets_and_files_give_the_same_tracks(tmp_path):
    frames = [raw_flight(f"{i:06x}", n=25, north=10.0 * i) for i in range(8)]
    a = pd.concat(frames[:5] + [frames[5].iloc[:12]])                  # flight 5 spans two files
    b = pd.concat([frames[5].iloc[12:]] + frames[6:])
    for name, part in (("a", a), ("b", b)):
        pd.DataFrame({"timestamp": pd.to_datetime(part.t, unit="s", utc=True), "icao24": part.icao24,
                      "latitude": part.lat, "longitude": part.lon, "altitude": part.alt_ft}).to_parquet(tmp_path / f"{name}.parquet")
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    one = ingest(files, tmp_path / "o1", buckets=1, progress=False)
    many = ingest(files, tmp_path / "o4", buckets=4, chunk_rows=10, progress=False)
    t1, t4 = (read_table(tmp_path / o / "tracks", TRACK_SCHEMA).sort_values(["flight_id", "time"]).reset_index(drop=True)
              for o in ("o1", "o4"))
    assert len(list((tmp_path / "o4" / "tracks").rglob("part-*.parquet"))) > 1
    pd.testing.assert_frame_equal(t1, t4)
    assert one.flights == many.flights == 8 and one.rows_quarantined == many.rows_quarantined == 0


def test_folder_input_canonical_parquet_and_commented_csv(tmp_path):
    traffic_frame().to_parquet(tmp_path / "first.parquet")
    rep = ingest([tmp_path / "first.parquet"], tmp_path / "out1", progress=False)
    src = tmp_path / "src"
    src.mkdir()
    part = next((tmp_path / "out1" / "tracks").rglob("part-*.parquet"))
    (src / "canonical.parquet").write_bytes(part.read_bytes())       # our own output reads back as is
    f = raw_flight("ddd444", n=12)
    text = "# exported by a tool\n# second comment\n" + pd.DataFrame({
        "time": pd.to_datetime(f.t, unit="s", utc=True).astype(str), "flight_id": f.icao24, "lat_deg": f.lat,
        "lon_deg": f.lon, "alt_ft": f.alt_ft}).to_csv(index=False)
    (src / "commented.csv").write_text(text)
    (src / "_SUCCESS").write_text("[]")
    rep2 = ingest([src], tmp_path / "out2", progress=False)
    assert sorted(rep2.files_ok) == sorted(str(src / n) for n in ("canonical.parquet", "commented.csv"))
    assert rep2.rows_in == rep.points_out + 12 and rep2.flights == 2 and not rep2.files_failed
    again = read_table(tmp_path / "out2" / "tracks", TRACK_SCHEMA)
    first = read_table(tmp_path / "out1" / "tracks", TRACK_SCHEMA)
    pd.testing.assert_frame_equal(again[again.flight_id == "abc123"].reset_index(drop=True), first)
