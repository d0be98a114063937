"""Property-based fuzzing of ingestion (hypothesis): random rows, encodings, separators and corruptions never
give a traceback, and every row read is kept or quarantined (rows in = kept + quarantined)."""

import shutil
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atc_il.errors import AtcIlError
from pipelines.ingest import ingest

HEADER = ["time", "icao24", "lat", "lon", "baroaltitude", "velocity", "heading", "vertrate", "callsign"]
junk = st.sampled_from(["", "nan", "inf", "-1e400", "NULL", "1e308", "720", "-90", "0", "4102444800", "abc",
                        "\u00e9\u00e8", "\ufeff", "\"", "\"a,b\"", "1,5", " 12 "])
good_row = st.tuples(st.integers(1_709_280_000, 1_709_290_000), st.sampled_from(["abc123", "def456", "0a0b0c"]),
                     st.floats(49, 51), st.floats(3, 5), st.floats(0, 12_000), st.floats(100, 260),
                     st.floats(0, 360), st.floats(-20, 20), st.sampled_from(["KLM1", "", "AF\u00e9"]))
row = st.one_of(good_row.map(lambda r: [str(x) for x in r]),
                st.lists(st.one_of(junk, st.text(max_size=6)), min_size=0, max_size=12))


@st.composite
def files(draw) -> bytes:
    rows = draw(st.lists(row, min_size=0, max_size=40))
    sep = draw(st.sampled_from([",", ",", ";", "\t"]))
    text = "\n".join(sep.join(r) for r in [HEADER] + rows) + draw(st.sampled_from(["\n", "", "\r\n"]))
    data = text.encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"])), errors="replace")
    for _ in range(draw(st.integers(0, 3))):        # corruptions: random bytes in, bytes out, a truncation
        kind, at = draw(st.sampled_from(["insert", "delete", "truncate"])), draw(st.integers(0, max(0, len(data))))
        if kind == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + 3:]
        else:
            data = data[:max(at, len(data) // 2)]
    return data


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=files(), chunk_rows=st.sampled_from([3, 1000]))
def test_ingest_never_crashes_and_reconciles(data, chunk_rows):
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        (tmp / "in.csv").write_bytes(data)
        try:
            rep = ingest([tmp / "in.csv"], tmp / "ws", chunk_rows=chunk_rows, progress=False)
        except AtcIlError as exc:        # a file that cannot be read at all: one line naming it
            assert "\n" not in str(exc) and "in.csv" in str(exc) or "none of the 1 input" in str(exc)
            return
        assert rep.rows_in == rep.rows_kept + rep.rows_quarantined
        q = tmp / "ws" / "quarantine"
        n_q = len(pd.read_parquet(q)) if list(q.glob("*.parquet")) else 0
        assert n_q == rep.rows_quarantined
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
