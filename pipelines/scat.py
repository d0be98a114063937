"""Reader for the SCAT data set (Swedish civil air traffic control, LFV; Nilsson and Unger, Data in Brief 48
(2023) 109240): per-flight JSON documents, in a folder or in the weekly zip files.

Per flight document (field names as in xoolive/traffic's loader, ``traffic/data/datasets/scat.py``):

* ``id``: the flight's identifier -> ``flight_id``; ``fpl.fpl_base[0].callsign`` -> ``callsign``;
* ``plots``: surveillance plots (ASTERIX I062 items), each with ``time_of_track`` (ISO 8601, UTC) and
  ``I062/105.lat``/``lon`` (deg), ``I062/136.measured_flight_level`` (FL: x100 ft), ``I062/185.vx``/``vy``
  (m/s east/north: ground speed and track), ``I062/220.rocd`` (ft/min). The selected altitude (``I062/380``)
  is not in the track contract; ``cfl_ft`` is the controller's cleared level from the clearances at that time;
* ``fpl.fpl_clearance``: the controller's clearances, one record per update with ``time_stamp``, ``cfl`` and
  ``cfl_unit``, ``assigned_heading_val``, ``assign_heading_beacon``, ``assigned_speed_val`` and
  ``assigned_speed_unit``. Each record is read as the clearance *state* at its time (every field, changed or
  not); a clearance is a field that differs from the previous record of the flight (see :data:`RULES` below);
* ``predicted_trajectory``: the system's predicted route; the first prediction's ``route`` fixes (``fix_name``,
  ``lat``, ``lon``, ``eto``, ``afl_value`` in FL) are the flight plan (the flight-plan contract), which locates
  the beacons of direct-to clearances.

Files named ``airspace*`` or ``grib_meteo*`` (the airspace and weather documents of each week) are skipped and
counted. Clearance changes that map to no canonical action are counted by reason in ``unmapped``, never dropped
silently.
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from atc_il.errors import ReadError
from atc_il.schemas import FLIGHT_PLAN_SCHEMA, conform, empty
from atc_il.units import FT_M, KT_MPS
from pipelines.readers import CANONICAL, UNPARSEABLE

SKIPPED = ("airspace", "grib_meteo")
# how each clearance field maps onto the canonical action types (documented in README.md)
RULES = {
    "cfl": "altitude (target: cfl x 100 ft for units F and A, x 10 m for S and M); cfl removed: unmapped",
    "assign_heading_beacon": "direct_to (waypoint: the beacon); beacon removed: unmapped",
    "assigned_heading_val": "heading (target: the value, deg); heading removed with no beacon: resume",
    "assigned_speed_val": "speed (target: knots for N/KT/KTS/KNOT(S), km/h converted for K/KMH); Mach and other "
                          "units, and a speed removed: unmapped",
}
LEVEL_UNITS = {"F": 100.0, "A": 100.0, "S": 10.0 / FT_M, "M": 10.0 / FT_M, "": 100.0}
SPEED_UNITS = {"N": 1.0, "KT": 1.0, "KTS": 1.0, "KNOT": 1.0, "KNOTS": 1.0, "": 1.0,
               "K": 1000.0 / 3600.0 / KT_MPS, "KMH": 1000.0 / 3600.0 / KT_MPS, "KM/H": 1000.0 / 3600.0 / KT_MPS}
LOG_COLUMNS = ["time", "flight_id", "action_type", "target_value", "waypoint", "source", "confidence"]


@dataclass
class ScatSink:
    """What a SCAT read produces besides the track rows: the clearance log, the flight plans and the counts."""

    clearances: list = field(default_factory=list)
    plans: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)          # document name -> why it could not be read
    stats: Counter = field(default_factory=Counter)
    unmapped: Counter = field(default_factory=Counter)
    actions: Counter = field(default_factory=Counter)

    def clearance_log(self) -> pd.DataFrame:
        parts = [c for c in self.clearances if len(c)]
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype="object") for c in LOG_COLUMNS})
        return pd.concat(parts, ignore_index=True).sort_values(["time", "flight_id"], ignore_index=True)

    def flight_plans(self) -> pd.DataFrame:
        parts = [p for p in self.plans if len(p)]
        return conform(pd.concat(parts, ignore_index=True), FLIGHT_PLAN_SCHEMA, "SCAT flight plans") if parts \
            else empty(FLIGHT_PLAN_SCHEMA)

    def summary(self) -> dict:
        self.unmapped = +self.unmapped          # drop zero counts
        return {**{k: int(v) for k, v in sorted(self.stats.items())},
                "clearance_actions": {k: int(v) for k, v in sorted(self.actions.items())},
                "clearance_changes_unmapped": {k: int(v) for k, v in sorted(self.unmapped.items())},
                "documents_failed": dict(list(self.failed.items())[:20]), "documents_failed_count": len(self.failed)}


def _documents(path: Path, sink: ScatSink) -> Iterator[tuple[str, dict]]:
    """(name, decoded JSON) of every flight document in a .json file or a .zip of them."""
    if path.suffix.lower() == ".zip":
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ReadError(path, f"not a readable zip file ({type(exc).__name__}: {exc})") from None
        with zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                name = info.filename
                base = name.rsplit("/", 1)[-1]
                if info.is_dir() or base.startswith((".", "_")):
                    continue
                if base.startswith(SKIPPED) or not base.lower().endswith(".json"):
                    sink.stats["documents_skipped"] += 1
                    continue
                try:
                    doc = json.loads(zf.read(info))
                except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                    sink.failed[f"{path}!{name}"] = f"not a JSON document ({type(exc).__name__}: {str(exc)[:120]})"
                    continue
                yield f"{path}!{name}", doc
        return
    if path.name.startswith(SKIPPED):
        sink.stats["documents_skipped"] += 1
        return
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ReadError(path, "no such file") from None
    except (ValueError, OSError) as exc:
        raise ReadError(path, f"not a SCAT JSON document ({type(exc).__name__}: {str(exc)[:160]})") from None
    yield str(path), doc


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _number(raw: list, what: str, problems: list[list[str]]) -> np.ndarray:
    """Floats from JSON values; a value present but not a number becomes NaN and is noted for its row."""
    out = np.full(len(raw), np.nan)
    for i, v in enumerate(raw):
        if v is None:
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            problems[i].append(f"{what}={str(v)[:40]!r}")
    return out


def _tracks(doc: dict, flight_id: str, callsign: str | None) -> pd.DataFrame:
    plots = doc.get("plots") or []
    n = len(plots)
    problems: list[list[str]] = [[] for _ in range(n)]
    raw_t = [p.get("time_of_track") if isinstance(p, dict) else None for p in plots]
    t = pd.to_datetime(pd.Series(raw_t, dtype="object"), utc=True, errors="coerce", format="ISO8601")
    for i in np.flatnonzero(t.isna().to_numpy() & pd.notna(pd.Series(raw_t, dtype="object")).to_numpy()):
        problems[i].append(f"time_of_track={str(raw_t[i])[:40]!r}")
    num = {k: _number([_get(p, *path) for p in plots], name, problems) for k, (name, path) in {
        "lat": ("I062/105.lat", ("I062/105", "lat")), "lon": ("I062/105.lon", ("I062/105", "lon")),
        "fl": ("I062/136.measured_flight_level", ("I062/136", "measured_flight_level")),
        "vx": ("I062/185.vx", ("I062/185", "vx")), "vy": ("I062/185.vy", ("I062/185", "vy")),
        "rocd": ("I062/220.rocd", ("I062/220", "rocd"))}.items()}
    vx, vy = num["vx"], num["vy"]
    frame = pd.DataFrame({
        "time": t.dt.as_unit("ns"), "flight_id": flight_id, "callsign": callsign,
        "lat_deg": num["lat"], "lon_deg": num["lon"], "alt_ft": num["fl"] * 100.0,
        "gs_kt": np.hypot(vx, vy) / KT_MPS, "trk_deg": np.degrees(np.arctan2(vx, vy)) % 360.0,
        "vs_fpm": num["rocd"], "cfl_ft": np.nan, "source": "scat"})
    frame[UNPARSEABLE] = ["; ".join(p) if p else None for p in problems]
    return frame


def _record(r: dict, prev: dict) -> tuple[list[tuple[str, float, str | None]], list[str], dict]:
    """The clearances in one record given the previous state: (kind, target, waypoint) actions, unmapped
    reasons, and the new state (module doc and :data:`RULES`)."""
    acts: list[tuple[str, float, str | None]] = []
    lost: list[str] = []

    def number(v: Any, scale: float, kind: str, waypoint: str | None = None) -> None:
        try:
            acts.append((kind, float(v) * scale, waypoint))
        except (TypeError, ValueError):
            lost.append(f"{kind}_not_a_number")

    cfl = (r.get("cfl"), str(r.get("cfl_unit") or "").strip().upper())
    if cfl[0] is not None and cfl != prev["cfl"]:
        if cfl[1] in LEVEL_UNITS:
            number(cfl[0], LEVEL_UNITS[cfl[1]], "altitude")
        else:
            lost.append(f"cfl_unit_{cfl[1]}")
    elif cfl[0] is None and prev["cfl"] is not None:
        lost.append("cfl_removed")
    hdg, beacon = r.get("assigned_heading_val"), r.get("assign_heading_beacon")
    if beacon is not None and beacon != prev["beacon"]:
        acts.append(("direct_to", np.nan, str(beacon).strip()))
    elif beacon is None and prev["beacon"] is not None and hdg is None:
        lost.append("beacon_removed")
    if hdg is not None and hdg != prev["hdg"]:
        number(hdg, 1.0, "heading")
    elif hdg is None and prev["hdg"] is not None and beacon is None:
        acts.append(("resume", np.nan, None))
    spd = (r.get("assigned_speed_val"), str(r.get("assigned_speed_unit") or "").strip().upper())
    if spd[0] is not None and spd != prev["spd"]:
        if spd[1] in ("M", "MACH"):
            lost.append("speed_mach")
        elif spd[1] in SPEED_UNITS:
            number(spd[0], SPEED_UNITS[spd[1]], "speed")
        else:
            lost.append(f"speed_unit_{spd[1]}")
    elif spd[0] is None and prev["spd"] is not None:
        lost.append("speed_removed")
    state = {"cfl": cfl if cfl[0] is not None else None, "hdg": hdg, "beacon": beacon,
             "spd": spd if spd[0] is not None else None}
    return acts, lost, state


def _changes(records: list, flight_id: str, sink: ScatSink) -> pd.DataFrame:
    """Clearance log rows (LOG_COLUMNS) from a flight's clearance records, in time order."""
    rows: list[dict] = []
    recs = [r for r in records if isinstance(r, dict)]
    sink.unmapped["record_not_an_object"] += len(records) - len(recs)
    times = pd.to_datetime(pd.Series([r.get("time_stamp") for r in recs], dtype="object"), utc=True,
                           errors="coerce", format="ISO8601")
    order = np.argsort(times.to_numpy(dtype="datetime64[ns]"), kind="stable")
    prev: dict[str, Any] = {"cfl": None, "hdg": None, "beacon": None, "spd": None}
    for i in order:
        sink.stats["clearance_records"] += 1
        t = times.iloc[i]
        if pd.isna(t):
            sink.unmapped["time_stamp_missing_or_bad"] += 1
            continue
        acts, lost, prev = _record(recs[i], prev)
        for kind, target, waypoint in acts:
            if kind == "heading":
                target %= 360.0
            rows.append({"time": t, "flight_id": flight_id, "action_type": kind, "target_value": target,
                         "waypoint": waypoint, "source": "clearance_log", "confidence": 1.0})
            sink.actions[kind] += 1
        sink.unmapped.update(lost)
        sink.stats["clearance_records_unchanged"] += int(not acts and not lost)
    return pd.DataFrame(rows, columns=LOG_COLUMNS)


def _cleared_levels(log: pd.DataFrame, tracks: pd.DataFrame) -> np.ndarray:
    """The cleared level (ft) in force at each track row: the last altitude clearance at or before it."""
    alt = log[log["action_type"] == "altitude"][["time", "target_value"]].sort_values("time")
    if alt.empty or tracks.empty:
        return np.full(len(tracks), np.nan)
    left = pd.DataFrame({"time": tracks["time"], "_row": np.arange(len(tracks))}).dropna(subset=["time"])
    got = pd.merge_asof(left.sort_values("time"), alt.assign(time=alt["time"].dt.as_unit("ns")), on="time")
    out = np.full(len(tracks), np.nan)
    out[got["_row"].to_numpy()] = got["target_value"].to_numpy(dtype=float)
    return out


def _plan(doc: dict, flight_id: str) -> pd.DataFrame:
    pred = doc.get("predicted_trajectory")
    first = pred[0] if isinstance(pred, list) and pred else pred
    route = first.get("route") if isinstance(first, dict) else None
    if not isinstance(route, list) or not route:
        return pd.DataFrame()
    fixes = [f for f in route if isinstance(f, dict)]
    lat = pd.to_numeric(pd.Series([f.get("lat") for f in fixes], dtype="object"), errors="coerce")
    lon = pd.to_numeric(pd.Series([f.get("lon") for f in fixes], dtype="object"), errors="coerce")
    fl = pd.to_numeric(pd.Series([f.get("afl_value") for f in fixes], dtype="object"), errors="coerce")
    eto = pd.to_datetime(pd.Series([f.get("eto") for f in fixes], dtype="object"), utc=True, errors="coerce",
                         format="ISO8601")
    df = pd.DataFrame({"flight_id": flight_id, "seq": np.arange(len(fixes), dtype=np.int64),
                       "waypoint": [f.get("fix_name") for f in fixes], "lat_deg": lat, "lon_deg": lon,
                       "alt_ft": fl * 100.0, "time": eto})
    return df[df["lat_deg"].notna() & df["lon_deg"].notna()]


def read_flight(doc: dict, name: str, sink: ScatSink) -> pd.DataFrame:
    """One flight document -> canonical track rows (with ``_unparseable``); its clearances and plan go to
    ``sink``. Raises ValueError when the document is not a SCAT flight."""
    if not isinstance(doc, dict) or "plots" not in doc or doc.get("id") is None:
        raise ValueError("not a SCAT flight document (no 'id' or no 'plots')")
    flight_id = str(doc["id"])
    base = _get(doc, "fpl", "fpl_base")
    base = base[0] if isinstance(base, list) and base else base
    callsign = _get(base, "callsign") if isinstance(base, dict) else None
    callsign = str(callsign).strip() if callsign else None
    log = _changes(_get(doc, "fpl", "fpl_clearance") or [], flight_id, sink)
    tracks = _tracks(doc, flight_id, callsign)
    tracks["cfl_ft"] = _cleared_levels(log, tracks)
    sink.clearances.append(log)
    plan = _plan(doc, flight_id)
    sink.plans.append(plan)
    sink.stats["flights"] += 1
    sink.stats["plots"] += len(tracks)
    sink.stats["flights_without_plan"] += int(plan.empty)
    return tracks


def read_scat(path: str | Path, chunk_rows: int = 250_000, sink: ScatSink | None = None) -> Iterator[pd.DataFrame]:
    """Stream a SCAT flight document or weekly zip as chunks of canonical track rows (not yet validated); the
    clearance log, flight plans and counts accumulate in ``sink``. A zip member that is not JSON or not a
    flight is recorded in ``sink.failed`` and the others go through."""
    path = Path(path)
    sink = sink if sink is not None else ScatSink()
    if not path.is_file():
        raise ReadError(path, "no such file")
    if path.suffix.lower() not in (".json", ".zip"):
        raise ReadError(path, "not a SCAT file (expected a per-flight .json document or a weekly .zip of them)")
    buffer: list[pd.DataFrame] = []
    size = 0
    for name, doc in _documents(path, sink):
        try:
            frame = read_flight(doc, name, sink)
        except ValueError as exc:
            if path.suffix.lower() != ".zip":
                raise ReadError(path, str(exc)) from None
            sink.failed[name] = str(exc)
            continue
        buffer.append(frame)
        size += len(frame)
        if size >= chunk_rows:
            yield pd.concat(buffer, ignore_index=True)[CANONICAL + [UNPARSEABLE]]
            buffer, size = [], 0
    if buffer:
        yield pd.concat(buffer, ignore_index=True)[CANONICAL + [UNPARSEABLE]]
