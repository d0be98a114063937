"""Merging ADS-B messages that carry position, altitude and velocity separately (pipelines/merge.py), and the
ingest reconciliation that counts the merged rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from atc_il.io import read_table
from atc_il.schemas import TRACK_SCHEMA
from atc_il_cli.cli import app
from pipelines.ingest import ingest
from pipelines.merge import MessageMerger, merge_messages

T0 = pd.Timestamp("2021-10-07T12:00:00Z")


def raw_messages(n_cycles: int = 40, icao: str = "3944f5", lat0: float = 48.5, alt0: float = 30000.0,
                 offset_s: float = 0.0) -> pd.DataFrame:
    """A realistic interleaved decode: per 1.5 s cycle, a position message (lat, lon, no altitude for every
    third: a surface-format or undecoded altitude), then 0.4 s later a velocity message (gs, track, vertical
    rate, no position), then 0.3 s later an altitude-only surveillance reply (no position, no velocity)."""
    rows = []
    for k in range(n_cycles):
        t = T0 + pd.Timedelta(seconds=offset_s + 1.5 * k)
        lat = lat0 + 0.001 * k
        rows.append({"timestamp": t, "icao24": icao, "callsign": "AFR96EU", "latitude": lat, "longitude": 2.6,
                     "altitude": np.nan if k % 3 == 0 else alt0 + 10 * k, "groundspeed": np.nan, "track": np.nan,
                     "vertical_rate": np.nan})
        rows.append({"timestamp": t + pd.Timedelta(seconds=0.4), "icao24": icao, "callsign": None, "latitude": np.nan,
                     "longitude": np.nan, "altitude": np.nan, "groundspeed": 420.0, "track": 0.5,
                     "vertical_rate": 64.0})
        rows.append({"timestamp": t + pd.Timedelta(seconds=0.7), "icao24": icao, "callsign": None, "latitude": np.nan,
                     "longitude": np.nan, "altitude": alt0 + 10 * k + 5, "groundspeed": np.nan, "track": np.nan,
                     "vertical_rate": np.nan})
    return pd.DataFrame(rows)


def canonical(raw: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"time": raw["timestamp"], "flight_id": raw["icao24"], "callsign": raw["callsign"],
                         "lat_deg": raw["latitude"], "lon_deg": raw["longitude"], "alt_ft": raw["altitude"],
                         "gs_kt": raw["groundspeed"], "trk_deg": raw["track"], "vs_fpm": raw["vertical_rate"],
                         "cfl_ft": np.nan, "source": "traffic"})


def test_position_rows_take_the_nearest_fields_and_message_rows_are_merged():
    raw = raw_messages(n_cycles=6)
    df = canonical(raw)
    out, stats, merged = merge_messages(df, window_s=1.0)
    # 6 position rows stay, the 12 velocity/altitude-only rows are merged into them
    assert len(out) == 6 and stats.rows_merged == 12 and merged.sum() == 12
    assert out["lat_deg"].notna().all() and out["alt_ft"].notna().all() and out["gs_kt"].notna().all()
    assert (out["time"] == df["time"][::3].to_numpy()).all()            # positions and times are the messages' own
    assert out["lat_deg"].tolist() == df["lat_deg"][::3].tolist()
    # cycle 0 had no altitude in its position message: the altitude reply 0.7 s later fills it
    assert out["alt_ft"].iloc[0] == 30005.0 and out["alt_ft"].iloc[1] == 30010.0   # its own altitude is kept
    assert stats.fields_filled["alt_ft"] == 2 and stats.fields_filled["gs_kt"] == 6
    assert (out["callsign"] == "AFR96EU").all()


def test_positions_are_never_invented_and_far_messages_stay():
    df = canonical(raw_messages(n_cycles=3))
    lonely = df.iloc[[1]].assign(time=T0 + pd.Timedelta(seconds=60))        # velocity message a minute away
    other = df.iloc[[2]].assign(flight_id="other")                          # another aircraft at the same time
    out, stats, _ = merge_messages(pd.concat([df, lonely, other], ignore_index=True), window_s=1.0)
    assert stats.rows_merged == 6 and len(out) == 3 + 2
    assert out["lat_deg"].isna().sum() == 2                                 # still without a position
    out0, stats0, _ = merge_messages(df, window_s=0.0)                       # 0 turns merging off
    assert len(out0) == len(df) and stats0.rows_merged == 0


def test_streaming_merges_across_chunk_edges_like_one_pass():
    df = canonical(raw_messages(n_cycles=30))
    whole, stats_whole, _ = merge_messages(df, window_s=1.0)
    for size in (1, 7, 20, 45):
        m = MessageMerger(1.0)
        parts = [m.push(df.iloc[i:i + size]) for i in range(0, len(df), size)]
        rest = m.flush()
        got = pd.concat(parts + ([rest] if rest is not None else []), ignore_index=True)
        got = got.sort_values("time", ignore_index=True)
        assert len(got) == len(whole) and m.stats.rows_merged == stats_whole.rows_merged, size
        pd.testing.assert_frame_equal(got[whole.columns], whole.sort_values("time", ignore_index=True),
                                      check_dtype=False)
        assert m.stats.fields_filled == stats_whole.fields_filled


def test_ingest_reconciliation_counts_merged_rows(tmp_path):
    raw = pd.concat([raw_messages(40, "3944f5", 48.5), raw_messages(40, "4ca123", 48.7, 32000.0, 0.2)])
    raw = raw.sort_values("timestamp", kind="stable").reset_index(drop=True)
    lonely = raw.iloc[[1]].assign(timestamp=T0 + pd.Timedelta(minutes=5))   # a velocity message with no position near
    raw = pd.concat([raw, lonely], ignore_index=True)
    path = tmp_path / "adsb.json"
    raw.assign(timestamp=raw["timestamp"].astype("int64") // 10**6).to_json(path, orient="records")
    report = ingest([path], tmp_path / "ws", chunk_rows=50, progress=False)
    assert report.rows_in == len(raw) == 241
    assert report.rows_merged == 160                          # 2 x 40 velocity + 2 x 40 altitude-only messages
    assert report.rows_quarantined == 1 and report.quarantined_by_reason["missing_required"] == 1
    assert report.rows_kept == 80 and report.rows_in == report.rows_kept + report.rows_quarantined + report.rows_merged
    assert "merged 160" in report.reconciliation and "(ok)" in report.reconciliation
    assert report.merge["fields_filled"]["alt_ft"] == 2 * 14 and report.merge["window_s"] == 1.0
    saved = json.loads((tmp_path / "ws" / "ingest_report.json").read_text())
    assert saved["rows_merged"] == 160
    tracks = read_table(tmp_path / "ws" / "tracks", TRACK_SCHEMA)
    assert tracks["gs_kt"].notna().all() and tracks["flight_id"].nunique() == 2
    off = ingest([path], tmp_path / "ws0", chunk_rows=50, progress=False, merge_window_s=0)
    assert off.rows_merged == 0 and off.quarantined_by_reason["missing_required"] == 161 + 2 * 14


def test_ingest_help_names_the_merge_window():
    res = CliRunner().invoke(app, ["ingest", "--help"])
    assert res.exit_code == 0 and "--merge-window-s" in res.output


@pytest.mark.parametrize("window", [1.0, 2.0])
def test_merge_is_per_aircraft(window):
    a = canonical(raw_messages(4, "aaaaaa"))
    b = canonical(raw_messages(4, "bbbbbb", 49.0)).assign(lat_deg=np.nan, lon_deg=np.nan)   # b never has a position
    out, stats, _ = merge_messages(pd.concat([a, b], ignore_index=True), window_s=window)
    assert stats.rows_merged == 8 and (out["flight_id"] == "bbbbbb").sum() == 12
