"""Controller actions: clearance logs, flight plans, inference from tracks, links to conflict episodes.

Clearance logs (CSV or parquet) are read into the action contract. A malformed row is an error,
not a quarantine: :class:`DataError` lists every bad row (first 10 shown) with the file, row (and CSV
line) and source column, so that nothing is silently dropped and the log gets fixed at the source.

Value cells: an explicit sign ("+20", "-2000 ft") is a change; a prefix "FL" (x100 ft), "ALT",
"HDG" or "SPD" is an absolute cleared value; a bare number follows the mapping's ``value_kind``
(``delta`` by default). A unit suffix ("250 kt", "3000 m") or a ``unit`` column is converted to the
contract's unit. Absolute values become signed changes from the aircraft's state at the action's
time when ``tracks`` are given (nearest track point at or before it, at most MAX_STATE_AGE_S old):
heading against the track angle, altitude against altitude, speed against ground speed (an
approximation: clearances are usually IAS or Mach; headings are not tracks when there is wind), and
direct-to against the bearing to the waypoint when ``flight_plans`` locate it. Without a state the
value stays null and the row is counted in ``attrs["value_unresolved"]``. Exact duplicate clearances (same action_id) keep
the last and are counted in ``attrs["duplicate_rows"]``.
"""

from __future__ import annotations

import time as _time
from pathlib import Path

import numpy as np
import pandas as pd

from atc_il.config import ActionConfig, EnRouteConfig, load_yaml
from atc_il.errors import ConfigError, DataError, ReadError
from atc_il.geometry import bearing_deg, wrap180
from atc_il.io import read_table, write_json, write_partitioned
from atc_il.runs import StagedRun, checkpoint, inside, require_complete
from atc_il.schemas import (
    ACTION_LINK_SCHEMA,
    ACTION_SCHEMA,
    ACTION_SOURCES,
    ACTION_TYPES,
    ACTION_UNITS,
    EPISODE_SCHEMA,
    FLIGHT_PLAN_SCHEMA,
    TRACK_SCHEMA,
    action_id,
    conform,
    empty,
)
from atc_il.units import factor
from pipelines.enroute import EnRouteFilter, filter_actions
from pipelines.manoeuvres import infer_actions

__all__ = ["read_clearance_log", "read_flight_plans", "infer_actions", "link_actions", "run",
           "drop_logged_duplicates", "count_links"]

LOG_COLUMNS = ("time", "flight_id", "action_type", "value", "unit", "target_value", "waypoint",
               "source", "confidence", "action_id", "against_flight_id")
MAX_STATE_AGE_S = 60.0
DUPLICATE_WINDOW_S = 60.0
DETECTORS = ("rules", "learned")
# heading, direct-to and resume are one lateral manoeuvre for duplicate detection
DUPLICATE_GROUP = {"heading": "lateral", "direct_to": "lateral", "resume": "lateral",
                   "altitude": "altitude", "speed": "speed"}
TYPE_ALIASES = {
    "heading": "heading", "hdg": "heading", "turn": "heading", "vector": "heading",
    "altitude": "altitude", "alt": "altitude", "level": "altitude", "fl": "altitude", "climb": "altitude",
    "descend": "altitude", "descent": "altitude",
    "speed": "speed", "spd": "speed",
    "direct_to": "direct_to", "direct": "direct_to", "dct": "direct_to", "direct-to": "direct_to",
    "resume": "resume", "resume_own_navigation": "resume", "own_nav": "resume", "ron": "resume",
}
# prefix -> (action types it may carry, factor to the contract unit)
ABS_PREFIXES = {"FL": (("altitude",), 100.0), "ALT": (("altitude",), 1.0), "A": (("altitude",), 1.0),
                "HDG": (("heading", "direct_to"), 1.0), "H": (("heading", "direct_to"), 1.0),
                "SPD": (("speed",), 1.0), "S": (("speed",), 1.0)}
_VALUE_RE = r"^\s*(?P<prefix>[A-Za-z]+)?\s*(?P<sign>[+-])?\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[A-Za-z/°]+)?\s*$"


# ---------------------------------------------------------------- mapping and reading
def load_mapping(mapping: dict | str | Path | None) -> tuple[dict[str, str], str]:
    """(canonical -> source column, value_kind) from a dict or a YAML file (``columns:``, ``value_kind:``)."""
    if mapping is None:
        return {}, "delta"
    where = "log mapping"
    if isinstance(mapping, (str, Path)):
        where, mapping = str(mapping), load_yaml(mapping)
    data = dict(mapping)
    if "columns" in data or "value_kind" in data:
        unknown = set(data) - {"columns", "value_kind"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected 'columns' and 'value_kind'")
        columns, kind = dict(data.get("columns") or {}), data.get("value_kind") or "delta"
    else:
        columns, kind = data, "delta"
    bad = sorted(set(columns) - set(LOG_COLUMNS))
    if bad:
        raise ConfigError(f"{where}: unknown canonical column(s) {bad}; known: {list(LOG_COLUMNS)}")
    if kind not in ("absolute", "delta"):
        raise ConfigError(f"{where}: value_kind must be 'absolute' or 'delta', got {kind!r}")
    return {k: str(v) for k, v in columns.items()}, kind


def _read_any(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ReadError(path, "no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ReadError(path, f"cannot read as {'parquet' if path.suffix.lower() == '.parquet' else 'CSV'}: {exc}") from None


def _blank(s: pd.Series) -> pd.Series:
    return s.isna() | s.astype(str).str.strip().isin(["", "nan", "None", "NaT"])


class _Errors:
    def __init__(self, path: Path, csv: bool, source_col: dict[str, str]):
        self.path, self.csv, self.src, self.items = path, csv, source_col, []

    def add(self, mask: pd.Series, column: str, raw: pd.Series, what: str) -> None:
        for i in np.flatnonzero(np.asarray(mask, bool)):
            self.items.append((int(i), column, raw.iloc[i], what))

    def add_one(self, i: int, column: str, raw_value, what: str) -> None:
        self.items.append((int(i), column, raw_value, what))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        self.items.sort(key=lambda e: e[0])
        parts = [f"row {i}{f' (line {i + 2})' if self.csv else ''}, column '{self.src.get(c, c)}': {w} ({r!r})"
                 for i, c, r, w in self.items[:10]]
        more = f"; and {len(self.items) - 10} more" if len(self.items) > 10 else ""
        raise DataError(f"{self.path}: {len(self.items)} malformed clearance log value(s): " + "; ".join(parts) + more
                        + ". Fix the log or the column mapping.")


def _parse_time(raw: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(raw):
        t = pd.to_datetime(raw)
        return t.dt.tz_localize("UTC") if t.dt.tz is None else t.dt.tz_convert("UTC")
    if pd.api.types.is_numeric_dtype(raw):
        return pd.to_datetime(raw, unit="s", utc=True)
    text = raw.astype(str).str.strip()
    num = pd.to_numeric(text, errors="coerce")
    if len(text) and num.notna().all():                  # epoch seconds as text
        return pd.to_datetime(num, unit="s", utc=True)
    return pd.to_datetime(text, utc=True, errors="coerce", format="mixed")


def _parse_values(raw: pd.Series, kinds: pd.Series, col: str, errors: _Errors, value_kind: str):
    """(number with sign applied, is_absolute, has_own_unit) per row; NaN where blank.

    Numbers with a prefix or unit suffix are in the contract unit; bare numbers still need the unit column's factor.
    """
    n = len(raw)
    num, absolute = np.full(n, np.nan), np.zeros(n, bool)
    blank = _blank(raw).to_numpy()
    if pd.api.types.is_numeric_dtype(raw):
        num = raw.to_numpy(float, na_value=np.nan)
        return num, np.full(n, value_kind == "absolute") & ~np.isnan(num), np.zeros(n, bool)
    m = raw.astype(str).str.extract(_VALUE_RE)
    errors.add(~blank & m["num"].isna().to_numpy(), col, raw, "not a number, signed change or FL/HDG/ALT/SPD value")
    prefix = m["prefix"].fillna("").str.upper().to_numpy(object)
    unit = m["unit"].fillna("").to_numpy(object)
    ok = ~blank & m["num"].notna().to_numpy()
    num[ok] = m["num"][ok].astype(float).to_numpy()
    for i in np.flatnonzero(ok & kinds.notna().to_numpy()):
        kind = kinds.iloc[i]
        if prefix[i]:
            allowed, f = ABS_PREFIXES.get(prefix[i], ((), None))
            if kind not in allowed:
                errors.add_one(i, col, raw.iloc[i], f"prefix {prefix[i]!r} does not fit a {kind} action")
                continue
            num[i] *= f
        if unit[i] and kind in ("heading", "altitude", "speed", "direct_to"):
            try:
                num[i] *= factor(unit[i].replace("°", "deg"), ACTION_UNITS[kind])
            except ValueError as exc:
                errors.add_one(i, col, raw.iloc[i], str(exc))
    sign = m["sign"].fillna("").to_numpy(object)
    num = np.where(sign == "-", -num, num)
    absolute = ok & ((prefix != "") | ((sign == "") & (value_kind == "absolute")))
    return num, absolute, (prefix != "") | (unit != "")


def _state_at(df: pd.DataFrame, tracks: pd.DataFrame) -> pd.DataFrame:
    """Track state (trk_deg, alt_ft, gs_kt, lat_deg, lon_deg) at or before each row's time, per flight."""
    cols = ["time", "flight_id", "trk_deg", "alt_ft", "gs_kt", "lat_deg", "lon_deg"]
    tr = tracks[[c for c in cols if c in tracks]].copy()
    tr["time"] = pd.to_datetime(tr["time"], utc=True).dt.as_unit("ns")
    left = pd.DataFrame({"time": df["time"].dt.as_unit("ns"), "flight_id": df["flight_id"].astype(str),
                         "_row": np.arange(len(df))})
    tr["flight_id"] = tr["flight_id"].astype(str)
    out = pd.merge_asof(left.sort_values("time"), tr.sort_values("time"), on="time", by="flight_id",
                        direction="backward", tolerance=pd.Timedelta(seconds=MAX_STATE_AGE_S))
    return out.sort_values("_row").reset_index(drop=True)


def read_clearance_log(path, mapping: dict | str | None = None, tracks: pd.DataFrame | None = None, *,
                       flight_plans: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read a clearance log into ACTION_SCHEMA (see the module docstring for the value rules).

    ``flight_plans`` (optional) locates direct-to waypoints so their turn can be computed from tracks.
    """
    path = Path(path)
    columns, value_kind = load_mapping(mapping)
    raw = _read_any(path)
    csv = path.suffix.lower() not in (".parquet", ".pq")
    missing = [src for src in columns.values() if src not in raw.columns]
    if missing:
        raise DataError(f"{path}: the mapping names column(s) {missing} that the log lacks; it has {list(raw.columns)}")
    src = {c: columns.get(c, c) for c in LOG_COLUMNS}
    have = {c: raw[src[c]].reset_index(drop=True) for c in LOG_COLUMNS if src[c] in raw.columns}
    need = [c for c in ("time", "flight_id", "action_type") if c not in have]
    if need or ("value" not in have and "target_value" not in have):
        need += [] if ("value" in have or "target_value" in have) else ["value or target_value"]
        raise DataError(f"{path}: missing column(s) {need}; it has {list(raw.columns)}; give a mapping "
                        f"(canonical -> source column)")
    n = len(raw)
    err = _Errors(path, csv, src)
    t = _parse_time(have["time"])
    err.add(t.isna(), "time", have["time"], "not a time")
    fid = have["flight_id"].astype(str).str.strip()
    err.add(_blank(have["flight_id"]), "flight_id", have["flight_id"], "missing flight id")
    kind = have["action_type"].astype(str).str.strip().str.lower().str.replace(" ", "_").map(TYPE_ALIASES)
    err.add(kind.isna(), "action_type", have["action_type"], f"unknown action type; known: {list(ACTION_TYPES)} and aliases")
    blank_s = pd.Series([""] * n)
    if "unit" in have:  # unit column: conversion of bare numbers into the contract unit
        unit_raw = have["unit"].astype(str).str.strip()
        f = np.ones(n)
        for (u, k), idx in pd.DataFrame({"u": unit_raw, "k": kind}).groupby(["u", "k"]).groups.items():
            if u and not _blank(pd.Series([u])).iloc[0] and k in ("heading", "altitude", "speed", "direct_to"):
                try:
                    f[np.asarray(idx)] = factor(u.replace("°", "deg"), ACTION_UNITS[k])
                except ValueError as exc:
                    err.add(pd.Series(np.isin(np.arange(n), idx)), "unit", have["unit"], str(exc))
    else:
        f = np.ones(n)
    val, val_abs, own = _parse_values(have.get("value", blank_s), kind, "value", err, value_kind)
    tgt, _, own_t = _parse_values(have.get("target_value", blank_s), kind, "target_value", err, "absolute")
    val, tgt = np.where(own, val, val * f), np.where(own_t, tgt, tgt * f)
    wpt = have.get("waypoint", blank_s).astype(str).str.strip()
    wpt = wpt.where(~_blank(wpt), None)
    numeric_kind = kind.isin(["heading", "altitude", "speed"]).to_numpy()
    err.add(numeric_kind & np.isnan(val) & np.isnan(tgt), "value", have.get("value", blank_s),
            "a heading, altitude or speed action needs a value or target_value")
    err.add((kind == "direct_to") & wpt.isna(), "waypoint", have.get("waypoint", blank_s), "direct_to needs a waypoint")
    source = have["source"].astype(str).str.strip() if "source" in have else pd.Series(["clearance_log"] * n)
    source = source.where(~_blank(source), "clearance_log")
    err.add(~source.isin(ACTION_SOURCES), "source", source, f"source not in {list(ACTION_SOURCES)}")
    conf = pd.to_numeric(have["confidence"], errors="coerce") if "confidence" in have else pd.Series(np.ones(n))
    conf = conf.where(~_blank(have["confidence"]), 1.0) if "confidence" in have else conf
    err.add(conf.isna() | (conf < 0) | (conf > 1), "confidence", have.get("confidence", conf), "confidence must be in 0..1")
    err.raise_if_any()

    target = np.where(np.isnan(tgt), np.where(val_abs, val, np.nan), tgt)
    value = np.where(val_abs, np.nan, val)
    df = pd.DataFrame({"time": t, "flight_id": fid, "action_type": kind, "waypoint": wpt})
    if "against_flight_id" in have:         # which conflict the clearance resolves, when the log knows it
        against = have["against_flight_id"]
        df["against_flight_id"] = against.astype(str).str.strip().where(~_blank(against), None)
    if tracks is not None and not tracks.empty:
        st = _state_at(df, tracks)
        ref = np.select([(kind == "altitude").to_numpy(), (kind == "speed").to_numpy()],
                        [st["alt_ft"].to_numpy(float), st.get("gs_kt", pd.Series(np.nan, index=st.index)).to_numpy(float)],
                        st.get("trk_deg", pd.Series(np.nan, index=st.index)).to_numpy(float))
        lat = kind.isin(["heading", "direct_to"]).to_numpy()
        if flight_plans is not None and not flight_plans.empty and (kind == "direct_to").any():
            fp = flight_plans.drop_duplicates("waypoint")[["waypoint", "lat_deg", "lon_deg"]]
            w = df[["waypoint"]].merge(fp, on="waypoint", how="left")
            brg = bearing_deg(st["lat_deg"].to_numpy(float), st["lon_deg"].to_numpy(float),
                              w["lat_deg"].to_numpy(float), w["lon_deg"].to_numpy(float))
            target = np.where((kind == "direct_to").to_numpy() & np.isnan(target), brg, target)
        value = np.where(np.isnan(value), np.where(lat, wrap180(target - ref), target - ref), value)
        target = np.where(np.isnan(target), np.where(lat, (ref + value) % 360.0, ref + value), target)
    value = np.where((kind == "resume").to_numpy(), 0.0, value)
    df["value"], df["target_value"] = value, target
    df["unit"] = kind.map(ACTION_UNITS)
    df["source"], df["confidence"] = source.to_numpy(), conf.to_numpy(float)
    ids = have["action_id"].astype(str).str.strip() if "action_id" in have else pd.Series([""] * n)
    df["action_id"] = [i if i and i not in ("nan", "None") else action_id(f_, t_, k_)
                       for i, f_, t_, k_ in zip(ids, df["flight_id"], df["time"], df["action_type"])]
    dup = df["action_id"].duplicated(keep="last")
    df = df[~dup]
    out = conform(df.sort_values(["time", "flight_id"], ignore_index=True), ACTION_SCHEMA, str(path))
    out.attrs.update(duplicate_rows=int(dup.sum()),
                     value_unresolved=int(out["value"].isna().sum()))
    return out


def read_flight_plans(path) -> pd.DataFrame:
    """Waypoint table (CSV or parquet: flight_id, seq, waypoint?, lat_deg, lon_deg, alt_ft?, time?) -> FLIGHT_PLAN_SCHEMA."""
    path = Path(path)
    raw = _read_any(path)
    missing = [c for c in ("flight_id", "seq", "lat_deg", "lon_deg") if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: flight plan missing column(s) {missing}; it has {list(raw.columns)}")
    df = raw.copy()
    err = _Errors(path, path.suffix.lower() not in (".parquet", ".pq"), {})
    for c in ("seq", "lat_deg", "lon_deg", "alt_ft"):
        if c in df:
            num = pd.to_numeric(df[c], errors="coerce")
            bad = num.isna() & ~(_blank(df[c]) & (c == "alt_ft"))
            err.add(bad.reset_index(drop=True), c, df[c].reset_index(drop=True), "not a number")
            df[c] = num
    if "time" in df:
        t = _parse_time(df["time"])
        err.add((t.isna() & ~_blank(df["time"])).reset_index(drop=True), "time", df["time"], "not a time")
        df["time"] = t
    err.add(_blank(df["flight_id"]).reset_index(drop=True), "flight_id", df["flight_id"], "missing flight id")
    err.raise_if_any()
    dup = df.duplicated(["flight_id", "seq"])
    if dup.any():
        raise DataError(f"{path}: {int(dup.sum())} duplicate (flight_id, seq) row(s), e.g. row {int(np.flatnonzero(dup)[0])}")
    df["seq"] = df["seq"].astype("int64")
    if "waypoint" in df:
        df["waypoint"] = df["waypoint"].where(~_blank(df["waypoint"]), None)
    return conform(df.sort_values(["flight_id", "seq"], ignore_index=True), FLIGHT_PLAN_SCHEMA, str(path))


# ---------------------------------------------------------------- linking
def link_actions(actions: pd.DataFrame, episodes: pd.DataFrame, cfg: ActionConfig = ActionConfig()) -> pd.DataFrame:
    """ACTION_LINK_SCHEMA rows: each action on either aircraft of an episode, issued from
    first_detection - link_margin_s to last_detection and before the predicted CPA time (no CPA
    time: no such bound, time_to_cpa_s null). An action whose ``against_flight_id`` is known (the
    simulator's controllers record which conflict a clearance resolves) is linked only to the episodes of
    that pair, not to every other conflict its aircraft is in at the time."""
    if actions.empty or episodes.empty:
        return empty(ACTION_LINK_SCHEMA)
    act = conform(actions, ACTION_SCHEMA, "actions")
    act["action_id"] = act["action_id"].where(act["action_id"].notna(), pd.Series(
        [action_id(f, t, k) for f, t, k in zip(act["flight_id"], act["time"], act["action_type"])], index=act.index))
    ep = conform(episodes, EPISODE_SCHEMA, "episodes")[
        ["episode_id", "flight_id_1", "flight_id_2", "first_detection", "last_detection", "predicted_cpa_time"]]
    sides = pd.concat([ep.rename(columns={f"flight_id_{k}": "flight_id", f"flight_id_{3 - k}": "other_flight_id"})
                       .assign(aircraft=k) for k in (1, 2)], ignore_index=True)
    m = act.merge(sides, on="flight_id")
    against = m["against_flight_id"]
    m = m[against.isna() | (against == m["other_flight_id"])]
    cpa = m["predicted_cpa_time"]
    keep = ((m["time"] >= m["first_detection"] - pd.Timedelta(seconds=cfg.link_margin_s))
            & (m["time"] <= m["last_detection"]) & (cpa.isna() | (m["time"] < cpa)))
    m = m[keep].copy()
    m["time_to_cpa_s"] = (m["predicted_cpa_time"] - m["time"]).dt.total_seconds()
    m = m.sort_values(["episode_id", "time", "aircraft"], ignore_index=True)
    return conform(m, ACTION_LINK_SCHEMA, "action links")


def count_links(episodes: pd.DataFrame, links: pd.DataFrame) -> pd.DataFrame:
    """Episodes with ``n_actions`` filled from the links (helper for whoever rewrites episodes)."""
    counts = links.groupby("episode_id").size() if len(links) else pd.Series(dtype="int64")
    out = episodes.copy()
    out["n_actions"] = out["episode_id"].map(counts).fillna(0).astype("int64")
    return out


def drop_logged_duplicates(inferred: pd.DataFrame, logged: pd.DataFrame,
                           window_s: float = DUPLICATE_WINDOW_S) -> tuple[pd.DataFrame, int]:
    """Inferred actions within +-window_s of a logged action of the same kind on the same flight
    (heading, direct_to and resume count as one lateral kind) are dropped; returns (kept, dropped)."""
    if inferred.empty or logged.empty:
        return inferred, 0
    a = inferred[["action_id", "flight_id", "time", "action_type"]].assign(g=inferred["action_type"].map(DUPLICATE_GROUP))
    b = logged[["flight_id", "time", "action_type"]].assign(g=logged["action_type"].map(DUPLICATE_GROUP))
    m = a.merge(b, on=["flight_id", "g"], suffixes=("", "_log"))
    dup_ids = set(m.loc[(m["time"] - m["time_log"]).abs() <= pd.Timedelta(seconds=window_s), "action_id"])
    drop = inferred["action_id"].isin(dup_ids)
    return inferred[~drop].reset_index(drop=True), int(drop.sum())


# ---------------------------------------------------------------- stage
def run(tracks_dir, out_dir, cfg: ActionConfig = ActionConfig(), *, log=None, log_mapping=None, flight_plans=None,
        episodes_dir=None, infer: bool = True, progress=None, enroute: EnRouteConfig = EnRouteConfig(),
        detector: str = "rules", detector_model=None, detector_threshold: float | None = None) -> dict:
    """Actions stage: clearance log + inferred actions -> out_dir/actions/, links -> out_dir/action_links/.

    ``detector``: ``rules`` (``pipelines.manoeuvres``) or ``learned`` (``pipelines.detector``, with the shipped
    model or ``detector_model``, a path; actions with a calibrated confidence under ``detector_threshold``, default the
    model's own per-signal threshold, are left out).

    ``enroute`` (default: keep everything) leaves out the actions whose aircraft is below its floor or outside
    its airspace at the action's time (``pipelines.enroute``), counted by reason in the summary."""
    t0 = _time.perf_counter()
    out_dir = Path(out_dir)
    require_complete(tracks_dir, "ingest")
    require_complete(episodes_dir if episodes_dir is not None else out_dir / "episodes", "conflicts", out_dir)
    names = ["actions"] + (["action_links"] if episodes_dir is not None else [])
    for given in (log, flight_plans):
        hit = inside(given, [out_dir / n for n in names]) if isinstance(given, (str, Path)) else None
        if hit is not None:
            raise ConfigError(f"input {given} lies inside the actions stage's own output folder {hit}, which a run "
                              f"replaces; copy it elsewhere first (nothing was changed)")
    if detector not in DETECTORS:
        raise ConfigError(f"unknown detector {detector!r}; choose one of {list(DETECTORS)}")
    model = None
    if infer and detector == "learned":
        from pipelines.detector_model import DetectorModel, load_default
        model = DetectorModel.load(detector_model) if detector_model is not None else load_default()
    flt = EnRouteFilter(enroute)
    staged = StagedRun(out_dir, "actions", names)
    try:
        summary = _run(tracks_dir, staged, cfg, log, log_mapping, flight_plans, episodes_dir, infer, progress, flt,
                       model, detector_threshold)
        staged.commit({"tracks": str(tracks_dir), "log": str(log) if log is not None else None,
                       "actions": summary["actions"], "links": summary.get("links"),
                       **{k: summary[k] for k in ("enroute", "actions_left_out", "actions_left_out_by_reason")}})
    except BaseException:
        staged.abort()
        raise
    summary["seconds"] = round(_time.perf_counter() - t0, 3)
    write_json(summary, out_dir / "actions_summary.json")
    return summary


def _run(tracks_dir, staged: StagedRun, cfg, log, log_mapping, flight_plans, episodes_dir, infer, progress,
         flt: EnRouteFilter, model=None, threshold: float | None = None) -> dict:
    tracks = read_table(tracks_dir, TRACK_SCHEMA)
    plans = flight_plans if isinstance(flight_plans, pd.DataFrame) or flight_plans is None \
        else read_flight_plans(flight_plans)
    logged = read_clearance_log(log, log_mapping, tracks, flight_plans=plans) if log is not None else empty(ACTION_SCHEMA)
    if not infer:
        inferred = empty(ACTION_SCHEMA)
    elif model is not None:
        from pipelines.detector import detect_actions
        inferred = detect_actions(tracks, plans, model, threshold, progress=progress)
    else:
        inferred = infer_actions(tracks, cfg, plans, progress=progress)
    rejected = dict(inferred.attrs.get("rejected", {}))
    inferred, n_dup = drop_logged_duplicates(inferred, logged)
    parts = [p for p in (logged, inferred) if len(p)]
    actions = (pd.concat(parts, ignore_index=True).sort_values(["time", "flight_id"], ignore_index=True)
               if parts else empty(ACTION_SCHEMA))
    actions, left = filter_actions(actions, tracks, flt)
    write_partitioned(actions, ACTION_SCHEMA, staged.path("actions"), what="actions")
    checkpoint("actions")
    summary = {
        "track_points": int(len(tracks)), "flights": int(tracks["flight_id"].nunique()),
        "logged_actions": int(len(logged)), "log_duplicate_rows": int(logged.attrs.get("duplicate_rows", 0)),
        "log_value_unresolved": int(logged.attrs.get("value_unresolved", 0)),
        "detector": "learned" if model is not None else "rules" if infer else None,
        "inferred_actions": int(len(inferred)), "inferred_dropped_as_log_duplicates": n_dup,
        "inference_rejected": rejected, "actions": int(len(actions)),
        "actions_by_type": {k: int(v) for k, v in actions["action_type"].value_counts().sort_index().items()},
        "actions_by_source": {k: int(v) for k, v in actions["source"].value_counts().sort_index().items()},
        "enroute": flt.describe(), **left,
    }
    if episodes_dir is not None:
        episodes = read_table(episodes_dir, EPISODE_SCHEMA)
        links = link_actions(actions, episodes, cfg)
        write_partitioned(links, ACTION_LINK_SCHEMA, staged.path("action_links"), what="action links")
        checkpoint("actions")
        summary.update(episodes=int(len(episodes)), links=int(len(links)),
                       linked_actions=int(links["action_id"].nunique()),
                       episodes_with_action=int(links["episode_id"].nunique()),
                       links_by_type={k: int(v) for k, v in links["action_type"].value_counts().sort_index().items()})
    return summary
