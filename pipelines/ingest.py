"""The ingest stage: read track files, validate, quarantine, stream, clean and resample.

Data flow for ``ingest(inputs, out)``:

1. each file streams through :func:`read_tracks` in chunks (readers in ``pipelines.readers``);
2. :func:`validate_chunk` splits every chunk into kept rows and quarantined rows
   (unparseable, on_ground, missing_required, out_of_range, implausible_time);
3. kept rows are staged in ``out/.staging-*/bucket-NNN.parquet`` by hash(flight_id) % B, so a
   flight's rows from every chunk and file meet in one bucket;
4. each bucket is cleaned and resampled (``pipelines.clean``) and written to
   ``out/tracks/day=YYYY-MM-DD/part-NNN.parquet`` (TRACK_SCHEMA; ``partition="hour"``:
   ``day=YYYY-MM-DD/hour=HH/``). Memory is bounded by the largest bucket.

Also written: ``out/quarantine/ingest.parquet`` (validation) and ``out/quarantine/clean-NNN.parquet``
(cleaning), both in QUARANTINE_SCHEMA (TRACK_SCHEMA columns, all nullable, + reason, detail,
file), and ``out/ingest_report.json``. The new ``tracks/`` and ``quarantine/`` are written in a
staging folder beside the previous ones and swapped in, with their ``_RUN_COMPLETE.json``, only when
the run is complete (``atc_il.runs``): a killed or failed run leaves the previous output in place.
Input paths inside the stage's own output folders are refused before anything is touched.
"""

from __future__ import annotations

import math
import os
import shutil
import time as _time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.markup import escape

from atc_il.config import PipelineConfig
from atc_il.errors import ConfigError, DataError, ReadError
from atc_il.io import write_frame, write_json, write_partitioned
from atc_il.progress import console, track
from atc_il.runs import StagedRun, checkpoint, inside
from atc_il.schemas import (
    FLIGHT_PLAN_SCHEMA,
    QUARANTINE_REASONS,
    TIME,
    TRACK_RANGES,
    TRACK_REQUIRED,
    TRACK_SCHEMA,
    conform,
)
from pipelines.clean import clean_and_resample
from pipelines.merge import MessageMerger
from pipelines.readers import FORMATS, ON_GROUND, UNPARSEABLE, ColumnMapping, is_scat, load_mapping, read_tracks  # noqa: F401 (re-exported)
from pipelines.scat import ScatSink, read_scat

QUARANTINE_SCHEMA = pa.schema(
    [f.with_nullable(True) for f in TRACK_SCHEMA]
    + [pa.field("reason", pa.string(), nullable=False), pa.field("detail", pa.string()), pa.field("file", pa.string())],
    metadata={"contract": "atc-il/track-quarantine/1"},
)
TIME_MIN = pd.Timestamp("1990-01-01", tz="UTC")     # earlier or later than now + TIME_AHEAD: implausible_time
TIME_AHEAD = pd.Timedelta(days=2)
SCAT_LOG_SCHEMA = pa.schema([pa.field("time", TIME), pa.field("flight_id", pa.string()),
                             pa.field("action_type", pa.string()), pa.field("target_value", pa.float64()),
                             pa.field("waypoint", pa.string()), pa.field("source", pa.string()),
                             pa.field("confidence", pa.float64())], metadata={"contract": "atc-il/clearance-log/1"})
STAGE_SCHEMA = TRACK_SCHEMA.append(pa.field("file", pa.string()))
BUCKET_INPUT_BYTES = 32 << 20          # about this much input per bucket when `buckets` is not given
MAX_BUCKETS = 512


def _detail(n: int, parts: list[tuple[np.ndarray, object]]) -> np.ndarray:
    """Row-wise '; '-joined texts; ``parts`` are (mask, text or per-row texts for the masked rows)."""
    out = np.full(n, "", dtype=object)
    for mask, text in parts:
        rows = np.flatnonzero(mask)
        if len(rows):
            sep = np.where(out[rows] == "", "", "; ")
            out[rows] = out[rows] + sep + (text if isinstance(text, str) else np.asarray(text, dtype=object))
    return out


def validate_chunk(df: pd.DataFrame, file: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a canonical chunk into (kept rows in TRACK_SCHEMA columns, quarantined rows).

    Each row gets one reason, the first that applies: unparseable (a raw value failed to parse;
    the readers' ``_unparseable`` column, undecodable bytes among them), on_ground (the feed flags the
    aircraft as on the ground: the readers' ``_on_ground`` column, from an ``onground`` source column; the
    detail also names the required fields such a surface report lacks, usually the altitude), missing_required (time,
    flight_id, lat_deg, lon_deg or alt_ft null), out_of_range (TRACK_RANGES, non-finite numbers),
    implausible_time (before TIME_MIN or later than now + TIME_AHEAD: a time of 0 is 1970, not a
    flight). The detail lists every problem of that kind in the row.
    """
    cols = [f.name for f in TRACK_SCHEMA]
    df = df.reset_index(drop=True).reindex(columns=cols + [UNPARSEABLE, ON_GROUND])
    n = len(df)
    unparse = df[UNPARSEABLE].notna().to_numpy()
    ground = df[ON_GROUND].eq(True).fillna(False).to_numpy(dtype=bool) & ~unparse
    missing_parts = [(df[c].isna().to_numpy(), f"{c} missing") for c in TRACK_REQUIRED]
    missing = (np.logical_or.reduce([m for m, _ in missing_parts]) if n else np.zeros(0, bool)) & ~ground
    range_parts = []
    for c, (lo, hi) in TRACK_RANGES.items():
        v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isnan(v) & ~((v >= lo) & (v <= hi))
        range_parts.append((bad, [f"{c}={x:.6g} outside [{lo:g}, {hi:g}]" for x in v[bad]]))
    out_of_range = np.logical_or.reduce([m for m, _ in range_parts]) if n else np.zeros(0, bool)
    t = pd.to_datetime(df["time"], utc=True, errors="coerce")
    t_max = pd.Timestamp.now(tz="UTC") + TIME_AHEAD
    out_of_range &= ~ground
    implausible = (t.notna() & ((t < TIME_MIN) | (t > t_max))).to_numpy() & ~ground
    t_text = [f"time={x.isoformat()} outside [{TIME_MIN.date()}, now + {TIME_AHEAD.days} days]" for x in t[implausible]]
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    unparse_text = ("could not parse " + df[UNPARSEABLE].fillna("").astype(str)).to_numpy(dtype=object)
    for mask, name, text in ((implausible & ~out_of_range & ~missing & ~unparse, "implausible_time",
                              lambda: _detail(n, [(implausible, t_text)])),
                             (out_of_range & ~missing & ~unparse, "out_of_range", lambda: _detail(n, range_parts)),
                             (missing & ~unparse, "missing_required", lambda: _detail(n, missing_parts)),
                             (ground, "on_ground", lambda: _detail(n, [(ground, "on the ground (the feed's onground "
                                                                        "flag)")] + missing_parts)),
                             (unparse, "unparseable", lambda: unparse_text)):
        if mask.any():
            reason[mask], detail[mask] = name, text()[mask]
    bad = reason != None  # noqa: E711 - element-wise on an object array
    kept = conform(df.loc[~bad, cols], TRACK_SCHEMA, f"{file}: validated rows")
    quarantined = df.loc[bad, cols].copy()
    quarantined["reason"], quarantined["detail"], quarantined["file"] = reason[bad], detail[bad], str(file)
    return kept.reset_index(drop=True), quarantined.reset_index(drop=True)


@dataclass
class IngestReport:
    rows_in: int = 0
    rows_kept: int = 0
    rows_quarantined: int = 0
    rows_merged: int = 0         # ADS-B messages without a position merged into a nearby position row
    merge: dict = field(default_factory=dict)    # merge window and fields filled (pipelines.merge)
    scat: dict = field(default_factory=dict)     # SCAT input: flights, clearances mapped and unmapped (pipelines.scat)
    quarantined_by_reason: dict = field(default_factory=lambda: {r: 0 for r in QUARANTINE_REASONS})
    files_ok: list = field(default_factory=list)
    files_failed: dict = field(default_factory=dict)
    flights: int = 0
    points_out: int = 0
    seconds: float = 0.0
    segments: int = 0
    jumps_kept: int = 0          # position jumps left in place between two long runs (see pipelines.clean)
    out: str = ""

    def add_quarantine(self, reasons: pd.Series) -> None:
        for reason, n in reasons.value_counts().items():
            self.quarantined_by_reason[str(reason)] = self.quarantined_by_reason.get(str(reason), 0) + int(n)
        self.rows_quarantined += len(reasons)

    @property
    def reconciliation(self) -> str:
        ok = "ok" if self.rows_in == self.rows_kept + self.rows_quarantined + self.rows_merged else "MISMATCH"
        merged = f" + merged {self.rows_merged:,}" if self.rows_merged else ""
        return (f"rows in {self.rows_in:,} = kept {self.rows_kept:,} + quarantined {self.rows_quarantined:,}{merged} "
                f"({ok}); points out {self.points_out:,}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reconciliation"] = self.reconciliation
        return d

    def check(self) -> None:
        if self.rows_in != self.rows_kept + self.rows_quarantined + self.rows_merged:
            raise DataError(f"ingest: {self.reconciliation}; rows were lost or double-counted")


class _Stager:
    """Append validated rows to one parquet file per bucket."""

    def __init__(self, folder: Path, buckets: int):
        self.folder, self.buckets, self.writers = folder, buckets, {}

    def path(self, b: int) -> Path:
        return self.folder / f"bucket-{b:03d}.parquet"

    def add(self, kept: pd.DataFrame, file: str) -> None:
        if kept.empty:
            return
        kept = kept.assign(file=str(file))
        bucket = pd.util.hash_array(kept["flight_id"].to_numpy(dtype=object)) % np.uint64(self.buckets)
        for b, part in kept.groupby(bucket.astype(np.int64), sort=True):
            if b not in self.writers:
                self.writers[b] = pq.ParquetWriter(self.path(b), STAGE_SCHEMA)
            self.writers[b].write_table(pa.Table.from_pandas(part, schema=STAGE_SCHEMA, preserve_index=False))

    def close(self) -> list[int]:
        for w in self.writers.values():
            w.close()
        return sorted(self.writers)


def _expand(inputs) -> list[Path]:
    """Files in the given order; a folder stands for the files under it (sorted, hidden,
    '_'-prefixed and temporary files skipped)."""
    out: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith((".", "_")))
        else:
            out.append(p)
    return out


def _default_buckets(paths: list[Path]) -> int:
    size = 0
    for p in paths:
        try:
            size += p.stat().st_size * (5 if p.suffix in (".gz", ".bz2", ".zst") else 1)
        except OSError:
            pass
    return max(1, min(MAX_BUCKETS, math.ceil(size / BUCKET_INPUT_BYTES)))


def _read_file(path: Path, fmt: str, mapping, chunk_rows: int, stager: _Stager, qwriter: list,
               report: IngestReport, qpath: Path, show, merge_window_s: float = 0.0,
               scat: ScatSink | None = None) -> None:
    merger = MessageMerger(merge_window_s)
    chunks = read_scat(path, chunk_rows, scat) if is_scat(path, fmt) else read_tracks(path, fmt, mapping, chunk_rows)
    try:
        for chunk in track(chunks, f"read {path.name}", show=show):
            report.rows_in += len(chunk)
            _validate(merger.push(chunk) if merge_window_s > 0 else chunk, path, stager, qwriter, report, qpath)
    finally:   # what was read before a failure still goes through (its rows are counted in rows_in)
        rest = merger.flush()
        if rest is not None:
            _validate(rest, path, stager, qwriter, report, qpath)
        report.rows_merged += merger.stats.rows_merged
        filled = report.merge.setdefault("fields_filled", {})
        for k, v in merger.stats.fields_filled.items():
            filled[k] = filled.get(k, 0) + v
        report.merge["rows_with_position_filled"] = (report.merge.get("rows_with_position_filled", 0)
                                                     + merger.stats.rows_with_position_filled)


def _write_scat(sink: ScatSink, folder: Path, report: IngestReport) -> None:
    """The SCAT clearance log (readable by ``atc-il actions --log``) and flight plans, beside the tracks."""
    write_frame(sink.clearance_log(), SCAT_LOG_SCHEMA, folder / "clearances.parquet", "SCAT clearance log")
    write_frame(sink.flight_plans(), FLIGHT_PLAN_SCHEMA, folder / "flight_plans.parquet", "SCAT flight plans")
    report.scat = {**sink.summary(), "clearance_log": str(folder.name + "/clearances.parquet"),
                   "mapping": "README.md, 'SCAT'"}
    for name, cause in sink.failed.items():
        report.files_failed[name] = cause
        console.print(f"[red]error[/red] {escape(name)}: {escape(cause)}", highlight=False, soft_wrap=True)


def _validate(chunk: pd.DataFrame, path: Path, stager: _Stager, qwriter: list, report: IngestReport,
              qpath: Path) -> None:
    kept, quarantined = validate_chunk(chunk, str(path))
    stager.add(kept, str(path))
    if len(quarantined):
        report.add_quarantine(quarantined["reason"])
        table = pa.Table.from_pandas(conform(quarantined, QUARANTINE_SCHEMA, "quarantine"),
                                     schema=QUARANTINE_SCHEMA, preserve_index=False)
        if not qwriter:
            qwriter.append(pq.ParquetWriter(qpath, QUARANTINE_SCHEMA))
        qwriter[0].write_table(table)


def ingest(inputs: list[str | Path], out: str | Path, *, fmt: str = "auto",
           mapping: ColumnMapping | dict | str | Path | None = None, config: PipelineConfig = PipelineConfig(),
           resample: bool = True, chunk_rows: int = 250_000, progress: bool | None = None,
           buckets: int | None = None, merge_window_s: float | None = None, partition: str = "day") -> IngestReport:
    """Ingest track files (or folders of them) into ``out`` (see the module doc).

    Unreadable files are reported in ``files_failed`` and printed on one line each, while the
    others go through. ``merge_window_s`` (default ``config.clean.merge_window_s``) merges ADS-B messages
    of one aircraft that carry position, altitude and velocity separately (``pipelines.merge``; 0: off).
    ``buckets`` (default: about one per 32 MB of input) sets how many
    hash(flight_id) buckets the cleaning runs over; memory is bounded by the largest bucket.
    ``partition``: ``day`` (``tracks/day=YYYY-MM-DD/``) or ``hour`` (``tracks/day=YYYY-MM-DD/hour=HH/``): hour
    partitions let batch prediction spread a month over many workers (720 tasks instead of 30).
    """
    start = _time.perf_counter()
    if partition not in ("day", "hour"):
        raise ConfigError(f"unknown partition {partition!r}; choose day or hour")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    out = Path(out)
    given = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    own = [out / "tracks", out / "quarantine", out / "scat", *out.glob(".staging-*"), *out.glob(".old-*")]
    for p in given:
        hit = inside(p, own)
        if hit is not None:
            raise ConfigError(f"input {p} lies inside ingest's own output folder {hit}; "
                              f"copy it elsewhere first (nothing was changed)")
        if Path(p).is_dir() and inside(out / "tracks", [p]) is not None:
            raise ConfigError(f"input folder {p} holds ingest's own output {out / 'tracks'}; "
                              f"name the input files or a folder beside it (nothing was changed)")
    paths = _expand(given)
    mapping = load_mapping(mapping)
    report = IngestReport(out=str(out))
    window = config.clean.merge_window_s if merge_window_s is None else float(merge_window_s)
    report.merge = {"window_s": window, "rows_with_position_filled": 0, "fields_filled": {}}
    scat = ScatSink() if any(is_scat(p, fmt) for p in paths) else None
    run = StagedRun(out, "ingest", ["tracks", "quarantine"] + (["scat"] if scat is not None else []))
    qdir = run.path("quarantine")
    nb = int(buckets) if buckets else _default_buckets(paths)
    stager, qwriter = _Stager(run.dir / "buckets", nb), []
    stager.folder.mkdir()
    qtmp = qdir / ".tmp-ingest.parquet"
    ok = False
    try:
        for path in track(paths, "files", show=progress):
            rows_before = report.rows_in
            try:
                _read_file(path, fmt, mapping, chunk_rows, stager, qwriter, report, qtmp, progress, window, scat)
                report.files_ok.append(str(path))
            except ReadError as exc:
                cause = " ".join(str(exc.cause).split())
                if report.rows_in != rows_before:
                    cause += f" (after {report.rows_in - rows_before:,} rows, which were ingested)"
                report.files_failed[str(path)] = cause
                console.print(f"[red]error[/red] {escape(str(path))}: {escape(cause)}", highlight=False, soft_wrap=True)
            checkpoint("ingest")
        for w in qwriter:
            w.close()
        if qwriter:
            os.replace(qtmp, qdir / "ingest.parquet")
        if scat is not None:
            _write_scat(scat, run.path("scat"), report)
        if not report.files_ok:
            raise DataError(f"ingest: none of the {len(paths)} input file(s) could be read; "
                            f"the previous output in {out} is unchanged")
        for b in track(stager.close(), "clean buckets", show=progress):
            staged = pq.read_table(stager.path(b)).to_pandas()
            tracks, quarantined, stats = clean_and_resample(staged, config, resample)
            write_partitioned(tracks, TRACK_SCHEMA, run.path("tracks"), part_name=f"part-{b:03d}", what="tracks",
                              by_hour=partition == "hour")
            if len(quarantined):
                write_frame(quarantined, QUARANTINE_SCHEMA, qdir / f"clean-{b:03d}.parquet", "quarantine")
                report.add_quarantine(quarantined["reason"])
            report.rows_kept += stats["rows_kept"]
            report.flights += stats["flights"]
            report.segments += stats["segments"]
            report.jumps_kept += stats["jumps_kept"]
            report.points_out += stats["points_out"]
            checkpoint("ingest")
        report.check()
        shutil.rmtree(stager.folder, ignore_errors=True)
        report.seconds = round(_time.perf_counter() - start, 3)
        run.commit({"inputs": [str(p) for p in paths], "rows_in": report.rows_in, "rows_kept": report.rows_kept,
                    "rows_quarantined": report.rows_quarantined, "rows_merged": report.rows_merged,
                    "files_failed": report.files_failed})
        ok = True
    finally:
        for w in stager.writers.values():
            w.close()
        for w in qwriter:
            w.close()
        if not ok:
            run.abort()
    write_json(report.to_dict(), out / "ingest_report.json")
    console.print(f"ingest: {report.reconciliation}", highlight=False, soft_wrap=True, markup=False)
    return report
