"""Track readers: generic CSV/parquet with a column mapping, OpenSky, traffic and BlueSky logs.

Every reader streams chunks of raw rows and maps them onto the canonical track columns and units
(``atc_il.schemas.TRACK_SCHEMA``). Values that fail to parse become NaN/NaT, the row is kept and
the chunk's extra column ``_unparseable`` says what failed (``None`` where nothing did); CSV lines
with the wrong number of fields come through as all-null rows with that column set. Validation
(``pipelines.ingest.validate_chunk``) turns both into quarantined rows with reason 'unparseable'.

Format flavours (``fmt="auto"`` detects them from the columns):

* generic: canonical column names (``time, flight_id, lat_deg, ...``), or any names and units
  through a :class:`ColumnMapping`.
* opensky: state vectors ``time`` (epoch s), ``icao24, lat, lon, velocity`` (m/s), ``heading``,
  ``vertrate`` (m/s), ``baroaltitude`` (m), ``callsign``; also the REST names (``baro_altitude``,
  ``true_track`` ...). flight_id = icao24 (a callsign can be missing or change within a flight;
  flights of one airframe on one day stay apart through the gaps between them).
* traffic: ``timestamp, icao24, callsign, latitude, longitude, altitude`` (ft), ``groundspeed``
  (kt), ``track``, ``vertical_rate`` (ft/min); flight_id = ``flight_id`` if present, else icao24. Its
  pandas-JSON collections (``.json``/``.json.gz``, as bundled in the traffic wheel's ``data/samples``)
  are read as they are.
* scat: the SCAT data set's per-flight JSON documents and weekly zip files (``pipelines.scat``; a .zip
  is read as SCAT under ``auto``).
* bluesky: CRELOG/datalogger files, ``#`` header lines, the last one naming the columns
  (``simt, id, lat, lon, alt[, tas, gs, trk, hdg, vs, cas]``, SI units); time = t0 + simt with
  t0 from the mapping (default 2000-01-01T00:00Z). Without ``gs``/``trk`` the log's ``tas``/``hdg``
  are used (BlueSky's default has no wind, so they coincide).

The ground flag of ADS-B feeds (a source column ``onground`` or ``on_ground``, in any format: OpenSky and
traffic have one) is not part of the track contract; when a file has it, chunks carry it as the extra column
``_on_ground`` (True, False, or null where unknown), and validation quarantines the rows on the ground
as ``on_ground`` (surface reports carry no barometric altitude, and separation on the surface is not this
project's subject).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from atc_il.errors import ConfigError, ReadError
from atc_il.schemas import TRACK_SCHEMA
from atc_il.units import factor

FORMATS = ("auto", "csv", "parquet", "opensky", "traffic", "bluesky", "scat")
UNPARSEABLE = "_unparseable"
ON_GROUND = "_on_ground"
ON_GROUND_SOURCES = ("onground", "on_ground")
CANONICAL = [f.name for f in TRACK_SCHEMA]
NUMERIC_UNITS = {"lat_deg": "deg", "lon_deg": "deg", "alt_ft": "ft", "gs_kt": "kt", "trk_deg": "deg",
                 "vs_fpm": "fpm", "cfl_ft": "ft"}
STRINGS = ("flight_id", "callsign", "source")
TIME_UNITS = ("s", "ms", "us", "ns")
ALIASES = {"t": "time", "id": "flight_id", "lat": "lat_deg", "lon": "lon_deg", "alt": "alt_ft", "gs": "gs_kt",
           "trk": "trk_deg", "vs": "vs_fpm", "cfl": "cfl_ft"}
BLUESKY_T0 = "2000-01-01T00:00Z"


@dataclass
class ColumnMapping:
    """How a source file maps onto the canonical track columns.

    columns: canonical column -> source column. Canonical columns not listed are taken from a
        source column of the same name when there is one.
    units: canonical column -> unit of the source values (see ``atc_il.units``), e.g.
        ``{"alt_ft": "m", "gs_kt": "m/s"}``; 'fl' (flight level) works for altitudes.
    time_unit: 's', 'ms', 'us' or 'ns' for epoch numbers; None parses strings (ISO 8601, naive =
        UTC) and guesses the unit of numbers from their magnitude.
    flight_id_from: source columns joined with '-' into flight_id (e.g. ``["icao24", "callsign"]``);
        None = ``columns["flight_id"]``. A row with any part missing has no flight_id.
    t0: time origin; when set, times are numbers of ``time_unit`` (default s) since t0.
    source: value of the 'source' column when the file has none.
    time_format: strftime format of time strings, when not ISO 8601.
    """

    columns: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    time_unit: str | None = None
    flight_id_from: list[str] | None = None
    t0: str | None = None
    source: str | None = None
    time_format: str | None = None

    def __post_init__(self):
        for key in list(self.columns) + list(self.units):
            if key not in CANONICAL:
                raise ConfigError(f"mapping: unknown canonical column {key!r}; known: {CANONICAL}")
        for key, unit in self.units.items():
            if key not in NUMERIC_UNITS:
                raise ConfigError(f"mapping: column {key!r} takes no unit (got {unit!r})")
            try:
                factor(unit, NUMERIC_UNITS[key])
            except ValueError as exc:
                raise ConfigError(f"mapping: {key}: {exc}") from None
        if self.time_unit is not None and self.time_unit not in TIME_UNITS:
            raise ConfigError(f"mapping: time unit {self.time_unit!r} is not one of {TIME_UNITS}")
        if isinstance(self.flight_id_from, str):
            self.flight_id_from = [p.strip() for p in self.flight_id_from.split("+")]

    def merged(self, other: ColumnMapping | None) -> ColumnMapping:
        """This mapping with ``other``'s entries on top (its None fields inherit)."""
        if other is None:
            return self
        kw = {f.name: getattr(other, f.name) for f in fields(other)
              if f.name not in ("columns", "units") and getattr(other, f.name) is not None}
        return replace(self, columns={**self.columns, **other.columns}, units={**self.units, **other.units}, **kw)


def _canon(key: str) -> str:
    key = key.strip()
    return ALIASES.get(key, key)


def _from_dict(spec: dict) -> ColumnMapping:
    spec = dict(spec)
    opts = {k: spec.pop(k) for k in ("time_unit", "flight_id_from", "t0", "source", "time_format") if k in spec}
    if "columns" in spec or "units" in spec:
        cols, units = spec.pop("columns", {}) or {}, spec.pop("units", {}) or {}
        if spec:
            raise ConfigError(f"mapping: unknown keys {sorted(spec)}")
        return ColumnMapping({_canon(k): str(v) for k, v in cols.items()},
                             {_canon(k): str(v) for k, v in units.items()}, **opts)
    cols, units = {}, {}
    for key, value in spec.items():  # flat form: canonical -> "source[:unit]"
        key = _canon(str(key))
        src, _, unit = str(value).partition(":")
        if key == "flight_id" and "+" in src:
            opts["flight_id_from"] = src
            continue
        cols[key] = src.strip()
        if unit and key == "time":
            opts["time_unit"] = unit.strip()
        elif unit:
            units[key] = unit.strip()
    return ColumnMapping(cols, units, **opts)


def load_mapping(spec: str | Path | dict | ColumnMapping | None) -> ColumnMapping | None:
    """A mapping from a YAML file, a dict, or a CLI string.

    YAML/dict: either ``{columns: {...}, units: {...}, time_unit: s, ...}`` or the flat form
    ``{alt_ft: "altitude:m", time: "ts:s", t0: ..., flight_id: "icao24+callsign"}``.
    CLI string: ``"alt_ft=altitude:m,gs_kt=speed:m/s,time=ts:s"`` (short keys alt, gs, lat ... work).
    """
    if spec is None or isinstance(spec, ColumnMapping):
        return spec
    if isinstance(spec, dict):
        return _from_dict(spec)
    text = str(spec)
    if isinstance(spec, Path) or text.endswith((".yaml", ".yml")) or ("=" not in text and Path(text).is_file()):
        from atc_il.config import load_yaml
        return _from_dict(load_yaml(text))
    items = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"mapping: {part!r} is not canonical=source[:unit]")
        items[key.strip()] = value.strip()
    return _from_dict(items)


# ---------------------------------------------------------------- flavours
OPENSKY = ColumnMapping(
    {"time": "time", "flight_id": "icao24", "callsign": "callsign", "lat_deg": "lat", "lon_deg": "lon",
     "alt_ft": "baroaltitude", "gs_kt": "velocity", "trk_deg": "heading", "vs_fpm": "vertrate"},
    {"alt_ft": "m", "gs_kt": "m/s", "vs_fpm": "m/s"}, time_unit="s", source="opensky")
OPENSKY_REST = replace(OPENSKY, columns={**OPENSKY.columns, "lat_deg": "latitude", "lon_deg": "longitude",
                                         "alt_ft": "baro_altitude", "trk_deg": "true_track", "vs_fpm": "vertical_rate"})
TRAFFIC = ColumnMapping(
    {"time": "timestamp", "flight_id": "icao24", "callsign": "callsign", "lat_deg": "latitude",
     "lon_deg": "longitude", "alt_ft": "altitude", "gs_kt": "groundspeed", "trk_deg": "track", "vs_fpm": "vertical_rate"},
    {"alt_ft": "ft", "gs_kt": "kt", "vs_fpm": "fpm"}, source="traffic")
BLUESKY = ColumnMapping(
    {"time": "simt", "flight_id": "id", "lat_deg": "lat", "lon_deg": "lon", "alt_ft": "alt", "gs_kt": "gs",
     "trk_deg": "trk", "vs_fpm": "vs"}, {"alt_ft": "m", "gs_kt": "m/s", "vs_fpm": "m/s"},
    time_unit="s", t0=BLUESKY_T0, source="bluesky")


def _flavour(cols: list[str], fmt: str, bluesky_header: bool) -> tuple[str, ColumnMapping]:
    have = set(cols)
    if fmt == "bluesky" or (fmt in ("auto", "csv") and bluesky_header):
        m = BLUESKY
        for canon, alt in (("gs_kt", "tas"), ("trk_deg", "hdg")):
            if m.columns[canon] not in have and alt in have:
                m = replace(m, columns={**m.columns, canon: alt})
        return "bluesky", m
    opensky = "icao24" in have and bool(have & {"baroaltitude", "baro_altitude"})
    if fmt == "opensky" or (fmt in ("auto", "csv", "parquet") and opensky):
        rest = "baro_altitude" in have and "baroaltitude" not in have
        m = OPENSKY_REST if rest else OPENSKY
        if "time" not in have:
            for alt in ("time_position", "last_contact", "timestamp"):
                if alt in have:
                    m = replace(m, columns={**m.columns, "time": alt})
                    break
        return "opensky", m
    if fmt == "traffic" or (fmt in ("auto", "csv", "parquet") and {"icao24", "latitude", "longitude"} <= have):
        m = TRAFFIC
        if "flight_id" in have:
            m = replace(m, columns={**m.columns, "flight_id": "flight_id"})
        return "traffic", m
    return "generic", ColumnMapping()


# ---------------------------------------------------------------- containers
def _container(path: Path, fmt: str) -> str:
    name = path.name.lower()
    if fmt == "parquet" or name.endswith((".parquet", ".pq")):
        return "parquet"
    if fmt != "csv" and any(name.endswith(s) for s in (".json", ".json.gz", ".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
        return "json"
    return "text"


def _sniff_text(path: Path) -> tuple[list[str], int, bool]:
    """Column names, lines before the data, and whether it looks like a BlueSky log."""
    with pa.input_stream(str(path), compression="detect") as fh:
        head = fh.read(1 << 16)
    if b"\x00" in head:
        raise ReadError(path, "binary content, not a CSV/text file")
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")    # a BOM is not part of the header
    if text.count("\ufffd") > max(8, len(text) // 20):
        raise ReadError(path, "not UTF-8 text (garbage bytes?)")
    lines = text.splitlines()
    comments = 0
    while comments < len(lines) and lines[comments].startswith("#"):
        comments += 1
    if comments:  # BlueSky: the last comment line names the columns, starting with simt
        names = [c.strip().split(".")[-1].lower() for c in lines[comments - 1].lstrip("#").split(",")]
        if names and names[0] == "simt":
            return names, comments, True
    if len(lines) <= comments or not lines[comments].strip():
        raise ReadError(path, "empty file, no header line")
    if "\ufffd" in lines[comments]:
        raise ReadError(path, f"header line {comments + 1} is not UTF-8 text: {lines[comments][:120]!r}")
    names = next(csv.reader([lines[comments]]))
    return [n.strip() for n in names], comments + 1, False


def _raw_columns(path: Path, container: str, json_frame: pd.DataFrame | None) -> tuple[list[str], int, bool]:
    if container == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names), 0, False
    if container == "json":
        return [str(c) for c in json_frame.columns], 0, False
    return _sniff_text(path)


def _read_json(path: Path) -> pd.DataFrame:
    lines = any(path.name.lower().endswith(s) for s in (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz"))
    df = pd.read_json(path, lines=lines)
    if not isinstance(df, pd.DataFrame):
        raise ValueError("JSON holds no table")
    return df


def _iter_raw(path: Path, container: str, names: list[str], skip: int, usecols: list[str],
              chunk_rows: int, json_frame: pd.DataFrame | None) -> Iterator[pd.DataFrame]:
    if container == "json":
        for start in range(0, len(json_frame), chunk_rows):
            yield json_frame.iloc[start:start + chunk_rows][usecols].reset_index(drop=True)
        return
    if container == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=usecols):
            yield batch.to_pandas()
        return
    bad: list[str] = []

    def on_bad(row) -> str:
        bad.append(f"malformed line: {row.actual_columns} fields, expected {row.expected_columns}: {row.text[:200]!r}")
        return "skip"

    latin1 = not _is_utf8(path)   # pyarrow cannot report a malformed line holding non-UTF-8 bytes: read as latin-1
    reader = pacsv.open_csv(
        path, read_options=pacsv.ReadOptions(skip_rows=skip, column_names=names, block_size=1 << 22,
                                             encoding="latin-1" if latin1 else "utf8"),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_bad),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.binary() for n in names}, include_columns=usecols,
                                             strings_can_be_null=True))
    buffer: list[pa.RecordBatch] = []
    buffered = 0
    rows_done = [0]

    def decoded(table: pa.Table) -> pd.DataFrame:
        """Binary columns as text; a value that is not UTF-8 becomes null and its row unparseable, named by
        data row and field, with the raw bytes kept (escaped) in the reason."""
        cols, problems = {}, {}
        for name in table.column_names:
            col = table.column(name)
            try:
                if latin1:
                    raise UnicodeDecodeError("utf-8", b"", 0, 1, "read as latin-1")
                cols[name] = col.cast(pa.string())
            except (pa.ArrowInvalid, UnicodeDecodeError):
                vals = []
                for i, b in enumerate(col.to_pylist()):
                    if latin1 and b is not None:
                        b = b.decode("utf-8").encode("latin-1")      # the file's own bytes again
                    try:
                        vals.append(None if b is None else b.decode("utf-8"))
                    except UnicodeDecodeError:
                        vals.append(None)
                        problems.setdefault(i, []).append(
                            f"data row {rows_done[0] + i + 1}, field {name}: undecodable bytes (not UTF-8) {b[:80]!r}")
                cols[name] = pa.array(vals, pa.string())
        frame = pa.table(cols).to_pandas()
        if problems:
            frame[UNPARSEABLE] = pd.Series({i: "; ".join(p) for i, p in problems.items()}, dtype=object) \
                .reindex(range(len(frame)))
        rows_done[0] += len(frame)
        return frame

    def flush_bad() -> pd.DataFrame | None:
        if not bad:
            return None
        frame = pd.DataFrame({c: [None] * len(bad) for c in usecols})
        frame[UNPARSEABLE] = list(bad)
        bad.clear()
        return frame

    for batch in reader:
        buffer.append(batch)
        buffered += batch.num_rows
        while buffered >= chunk_rows:
            table = pa.Table.from_batches(buffer)
            yield decoded(table.slice(0, chunk_rows))
            rest = table.slice(chunk_rows)
            buffer, buffered = rest.to_batches(), rest.num_rows
        extra = flush_bad()
        if extra is not None:
            yield extra
    if buffered:
        yield decoded(pa.Table.from_batches(buffer))
    extra = flush_bad()
    if extra is not None:
        yield extra


def _is_utf8(path: Path) -> bool:
    """Whether the whole (decompressed) file is UTF-8 text; a linear pass at C speed."""
    import codecs
    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        with pa.input_stream(str(path), compression="detect") as fh:
            while chunk := fh.read(1 << 24):
                dec.decode(chunk)
        dec.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------- conversion
def _guess_unit(values: pd.Series) -> str:
    mag = float(np.nanmedian(np.abs(values.to_numpy(dtype=float)))) if values.notna().any() else 0.0
    return "ns" if mag > 1e17 else "us" if mag > 1e14 else "ms" if mag > 1e11 else "s"


def _epoch(num: pd.Series, unit: str) -> pd.Series:
    num = num.astype(float)
    limit = {"s": 1e11, "ms": 1e14, "us": 1e17, "ns": 9e18}[unit]
    return pd.to_datetime(num.where(num.abs() < limit), unit=unit, utc=True)


def _parse_time(raw: pd.Series, m: ColumnMapping) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(raw):
        return raw.dt.tz_localize("UTC") if raw.dt.tz is None else raw.dt.tz_convert("UTC")
    if m.t0 is not None:
        origin = pd.Timestamp(m.t0)
        origin = origin.tz_convert("UTC") if origin.tzinfo else origin.tz_localize("UTC")
        num = pd.to_numeric(raw, errors="coerce").astype(float)
        return origin + pd.to_timedelta(num.where(num.abs() < 1e11), unit=m.time_unit or "s")
    if m.time_unit is not None or pd.api.types.is_numeric_dtype(raw):
        num = pd.to_numeric(raw, errors="coerce")
        return _epoch(num, m.time_unit or _guess_unit(num))
    num = pd.to_numeric(raw, errors="coerce")
    if num.notna().sum() * 2 > raw.notna().sum():      # mostly numbers: epoch values in text
        return _epoch(num, _guess_unit(num))
    fmt = m.time_format or "ISO8601"
    out = pd.to_datetime(raw, utc=True, errors="coerce", format=fmt)
    if m.time_format is None and out.isna().all() and raw.notna().any():
        out = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
    return out


def _numeric(raw: pd.Series) -> pd.Series:
    """Numbers from any column; text goes through Arrow's fast cast, pandas when a value is bad."""
    if pd.api.types.is_bool_dtype(raw):
        return raw.astype(float)
    if pd.api.types.is_numeric_dtype(raw):
        return raw.astype(float)
    try:
        return pd.Series(pa.array(raw, from_pandas=True).cast(pa.float64()).to_numpy(zero_copy_only=False),
                         index=raw.index)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pd.to_numeric(raw, errors="coerce").astype(float)


def _strings(raw: pd.Series) -> pd.Series:
    s = raw.astype("string").str.strip()
    return s.mask((s == "").fillna(False))


def _ground_column(names) -> str | None:
    """The source column holding the feed's on-the-ground flag, if any."""
    return next((str(c) for c in names if str(c).strip().lower() in ON_GROUND_SOURCES), None)


def _flag(raw: pd.Series) -> pd.Series:
    """A boolean flag from bools, numbers (0 / non-zero) or text (true/false, t/f, 1/0, yes/no); null where
    the value is missing or none of these (an unknown flag is not read as on the ground)."""
    if pd.api.types.is_bool_dtype(raw):
        return raw.astype("boolean")
    if pd.api.types.is_numeric_dtype(raw):
        num = raw.astype(float)
        return (num != 0).astype("boolean").mask(num.isna())
    text = raw.astype("string").str.strip().str.lower()
    return text.map({"true": True, "t": True, "1": True, "yes": True, "1.0": True,
                     "false": False, "f": False, "0": False, "no": False, "0.0": False}).astype("boolean")


def to_canonical(raw: pd.DataFrame, m: ColumnMapping, source: str) -> pd.DataFrame:
    """Map one raw chunk onto the canonical columns and units (plus ``_unparseable``, and ``_on_ground`` when
    the source has a ground flag)."""
    n = len(raw)
    out: dict[str, pd.Series] = {}
    problems = pd.Series("", index=raw.index, dtype=object)

    def note(col: str, src: pd.Series, parsed: pd.Series) -> None:
        bad = src.notna() & parsed.isna()
        if bad.any():
            problems[bad] = problems[bad] + f"{col}=" + src[bad].astype(str).str.slice(0, 40).map(repr) + "; "

    col = lambda c: m.columns.get(c, c)  # noqa: E731
    t_src = raw[col("time")] if col("time") in raw else pd.Series([None] * n, index=raw.index)
    out["time"] = _parse_time(t_src, m).dt.as_unit("ns")
    note("time", t_src, out["time"])
    if m.flight_id_from:
        parts = [_strings(raw[c]) if c in raw else pd.Series(pd.NA, index=raw.index, dtype="string")
                 for c in m.flight_id_from]
        out["flight_id"] = parts[0].str.cat(parts[1:], sep="-") if len(parts) > 1 else parts[0]
    for c in STRINGS:
        if c not in out:
            out[c] = _strings(raw[col(c)]) if col(c) in raw else pd.Series(pd.NA, index=raw.index, dtype="string")
    if out["source"].isna().all():
        out["source"] = pd.Series(m.source or source, index=raw.index, dtype="string")
    for c, unit in NUMERIC_UNITS.items():
        if col(c) not in raw:
            out[c] = pd.Series(np.nan, index=raw.index)
            continue
        src = raw[col(c)]
        num = _numeric(src)
        note(c, src, num)
        vals = num * factor(m.units.get(c, unit), unit)
        if c == "trk_deg":   # -180..180 and 360 are conventions: wrap; 720 is a corrupt value: out_of_range
            vals = vals.where((vals < -360.0) | (vals > 360.0), vals % 360.0)
        out[c] = vals
    frame = pd.DataFrame(out, index=raw.index)[CANONICAL]
    ground = _ground_column(raw.columns)
    if ground is not None:
        frame[ON_GROUND] = _flag(raw[ground])
    frame[UNPARSEABLE] = problems.where(problems != "", None).str.rstrip("; ")
    if UNPARSEABLE in raw:
        both = frame[UNPARSEABLE].notna() & raw[UNPARSEABLE].notna()
        frame[UNPARSEABLE] = frame[UNPARSEABLE].fillna(raw[UNPARSEABLE])
        if both.any():
            frame.loc[both, UNPARSEABLE] = raw.loc[both, UNPARSEABLE] + "; " + frame.loc[both, UNPARSEABLE]
    return frame.reset_index(drop=True)


def is_scat(path: Path, fmt: str) -> bool:
    """Whether ``path`` is read as SCAT: ``--format scat``, or a .zip under ``auto`` (no other format is zipped)."""
    return fmt == "scat" or (fmt == "auto" and Path(path).suffix.lower() == ".zip")


def read_tracks(path: str | Path, fmt: str = "auto", mapping: ColumnMapping | dict | str | None = None,
                chunk_rows: int = 250_000) -> Iterator[pd.DataFrame]:
    """Stream ``path`` as chunks of canonical track rows (not yet validated).

    Raises :class:`ReadError` naming the file when it cannot be read at all (missing, garbage,
    required columns absent). A file that breaks part-way raises after the chunks read so far.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    path = Path(path)
    if is_scat(path, fmt):
        raise ConfigError(f"{path}: SCAT files are read by pipelines.scat.read_scat (as `atc-il ingest --format scat` "
                          "does), which also keeps their clearances and flight plans")
    user = load_mapping(mapping)
    if not path.is_file():
        raise ReadError(path, "no such file")
    container = _container(path, fmt)
    try:
        json_frame = _read_json(path) if container == "json" else None
        names, skip, bluesky = _raw_columns(path, container, json_frame)
    except ReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure means: cannot read this file
        raise ReadError(path, f"not a readable {container} file ({type(exc).__name__}: {str(exc)[:200]})") from None
    flavour, preset = _flavour(names, fmt, bluesky)
    m = preset.merged(user)
    needed = list(m.flight_id_from or []) + [m.columns.get(c, c) for c in CANONICAL]
    missing = [c for c in ("time", "lat_deg", "lon_deg", "alt_ft") if m.columns.get(c, c) not in names]
    if not m.flight_id_from and m.columns.get("flight_id", "flight_id") not in names:
        missing.append("flight_id")
    if missing:
        raise ReadError(path, f"no source column for {missing} ({flavour} format; columns: {names[:20]}); "
                              "pass a column mapping or --format")
    ground = _ground_column(names)
    usecols = [c for c in dict.fromkeys(needed + ([ground] if ground else [])) if c in names]
    source = flavour if flavour != "generic" else {"text": "csv"}.get(container, container)
    raw = _iter_raw(path, container, names, skip, usecols, max(1, int(chunk_rows)), json_frame)
    while True:
        try:
            chunk = next(raw)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001
            raise ReadError(path, f"read failed ({type(exc).__name__}: {str(exc)[:200]})") from None
        yield to_canonical(chunk, m, source)
