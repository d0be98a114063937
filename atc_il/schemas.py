"""The canonical data contracts, one pyarrow schema per arrow of the data flow.

Every stage reads and writes these; ``docs/contracts.md`` documents them with units.
Times are UTC timestamps with nanosecond resolution. Units are in column names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from atc_il.errors import DataError

TIME = pa.timestamp("ns", tz="UTC")

# ---------------------------------------------------------------- track points
TRACK_SCHEMA = pa.schema(
    [
        pa.field("time", TIME, nullable=False),
        pa.field("flight_id", pa.string(), nullable=False),
        pa.field("callsign", pa.string()),
        pa.field("lat_deg", pa.float64(), nullable=False),
        pa.field("lon_deg", pa.float64(), nullable=False),
        pa.field("alt_ft", pa.float64(), nullable=False),
        pa.field("gs_kt", pa.float64()),
        pa.field("trk_deg", pa.float64()),
        pa.field("vs_fpm", pa.float64()),
        pa.field("cfl_ft", pa.float64()),       # cleared flight level in feet, when known
        pa.field("source", pa.string()),
    ],
    metadata={"contract": "atc-il/track/1"},
)
TRACK_REQUIRED = ("time", "flight_id", "lat_deg", "lon_deg", "alt_ft")

# Physical ranges used by validation (inclusive). Outside: the row is quarantined.
TRACK_RANGES = {
    "lat_deg": (-90.0, 90.0),
    "lon_deg": (-180.0, 180.0),
    "alt_ft": (-2000.0, 60000.0),
    "gs_kt": (0.0, 1000.0),
    "trk_deg": (0.0, 360.0),
    "vs_fpm": (-12000.0, 12000.0),
    "cfl_ft": (-2000.0, 60000.0),
}

# ---------------------------------------------------------------- actions
ACTION_TYPES = ("heading", "altitude", "speed", "direct_to", "resume")
ACTION_UNITS = {"heading": "deg", "altitude": "ft", "speed": "kt", "direct_to": "deg", "resume": ""}
ACTION_SOURCES = ("clearance_log", "track_inferred", "simulator")

ACTION_SCHEMA = pa.schema(
    [
        pa.field("action_id", pa.string()),        # unique per data set, e.g. "AFR12@2024-01-01T10:00:05#heading"
        pa.field("time", TIME, nullable=False),
        pa.field("flight_id", pa.string(), nullable=False),
        pa.field("action_type", pa.string(), nullable=False),
        # signed change relative to the state at `time`: heading/direct_to deg (+ = right turn),
        # altitude ft (+ = climb), speed kt (+ = faster); 0 for resume
        pa.field("value", pa.float64()),
        pa.field("unit", pa.string()),
        pa.field("target_value", pa.float64()),   # absolute cleared value when known (deg, ft, kt)
        pa.field("waypoint", pa.string()),        # direct_to target
        pa.field("source", pa.string(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),  # 0..1
        # the other aircraft of the conflict the clearance resolves, when the source knows it (the simulator's
        # controllers do; real clearance logs rarely do): the action is then linked to that conflict only
        pa.field("against_flight_id", pa.string()),
    ],
    metadata={"contract": "atc-il/action/1"},
)

# ---------------------------------------------------------------- conflicts
# Per-step records: one row per pair (flight_id_1 < flight_id_2) and grid time in conflict or LoS.
CONFLICT_SCHEMA = pa.schema(
    [
        pa.field("time", TIME, nullable=False),
        pa.field("flight_id_1", pa.string(), nullable=False),
        pa.field("flight_id_2", pa.string(), nullable=False),
        pa.field("dist_nm", pa.float64()),      # current horizontal distance
        pa.field("dalt_ft", pa.float64()),      # current alt_1 - alt_2
        pa.field("tcpa_s", pa.float64()),       # time to horizontal closest point of approach
        pa.field("dcpa_nm", pa.float64()),      # horizontal distance at CPA
        pa.field("tin_s", pa.float64()),        # time to loss of separation (0 if already lost)
        pa.field("qdr_deg", pa.float64()),      # bearing from aircraft 1 to aircraft 2
        pa.field("conflict", pa.bool_()),       # predicted loss of separation within the look-ahead
        pa.field("los", pa.bool_()),            # separation lost now
        pa.field("episode_id", pa.string()),
    ],
    metadata={"contract": "atc-il/conflict/1"},
)

EPISODE_SCHEMA = pa.schema(
    [
        pa.field("episode_id", pa.string(), nullable=False),
        pa.field("flight_id_1", pa.string(), nullable=False),
        pa.field("flight_id_2", pa.string(), nullable=False),
        pa.field("first_detection", TIME, nullable=False),
        pa.field("last_detection", TIME, nullable=False),
        pa.field("predicted_cpa_time", TIME),      # at first detection
        pa.field("predicted_tcpa_s", pa.float64()),
        pa.field("predicted_dcpa_nm", pa.float64()),
        pa.field("min_dist_nm", pa.float64()),     # actual minimum horizontal separation in the episode
        pa.field("min_dist_time", TIME),
        pa.field("dalt_at_min_ft", pa.float64()),
        pa.field("los", pa.bool_()),
        pa.field("los_duration_s", pa.float64()),
        pa.field("n_steps", pa.int64()),
        pa.field("n_actions", pa.int64()),         # actions linked (filled by the action linker)
    ],
    metadata={"contract": "atc-il/episode/1"},
)

# Which action may resolve which conflict episode: an action on one of the pair's two aircraft,
# issued while the episode is active (or shortly before first detection) and before the CPA.
ACTION_LINK_SCHEMA = pa.schema(
    [
        pa.field("episode_id", pa.string(), nullable=False),
        pa.field("action_id", pa.string(), nullable=False),
        pa.field("time", TIME, nullable=False),
        pa.field("flight_id", pa.string(), nullable=False),
        pa.field("aircraft", pa.int8(), nullable=False),   # 1 or 2: which aircraft of the pair
        pa.field("action_type", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("unit", pa.string()),
        pa.field("source", pa.string()),
        pa.field("confidence", pa.float64()),
        pa.field("time_to_cpa_s", pa.float64()),           # predicted CPA time minus action time
    ],
    metadata={"contract": "atc-il/action-link/1"},
)


# decisions: the policy's answer for a conflict at a decision time (batch prediction's rows, the service's
# and the closed loop's decisions): P(act now), and the most likely action given that the controller acts
DECISION_SCHEMA = pa.schema(
    [pa.field("time", TIME, nullable=False), pa.field("flight_id_1", pa.string(), nullable=False),
     pa.field("flight_id_2", pa.string(), nullable=False), pa.field("tcpa_s", pa.float64()),
     pa.field("dcpa_nm", pa.float64()), pa.field("act", pa.bool_()), pa.field("p_act", pa.float64()),
     pa.field("aircraft", pa.int8()),          # 0 = flight_id_1, 1 = flight_id_2 (the one the action is for)
     pa.field("flight_id", pa.string()), pa.field("action_type", pa.string()),
     pa.field("value", pa.float64()), pa.field("unit", pa.string())],
    metadata={"contract": "atc-il/decision/1"})
DECISION_COLUMNS = tuple(DECISION_SCHEMA.names)


def action_id(flight_id: object, time: object, action_type: object) -> str:
    """Stable identifier of an action."""
    import pandas as _pd
    return f"{flight_id}@{_pd.Timestamp(time).isoformat()}#{action_type}"


# ---------------------------------------------------------------- flight plans
FLIGHT_PLAN_SCHEMA = pa.schema(
    [
        pa.field("flight_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("waypoint", pa.string()),
        pa.field("lat_deg", pa.float64(), nullable=False),
        pa.field("lon_deg", pa.float64(), nullable=False),
        pa.field("alt_ft", pa.float64()),
        pa.field("time", TIME),
    ],
    metadata={"contract": "atc-il/flight-plan/1"},
)

# ---------------------------------------------------------------- quarantine
QUARANTINE_REASONS = (
    "unparseable", "missing_required", "out_of_range", "duplicate", "impossible_jump",
    "altitude_spike", "too_short", "implausible_time", "on_ground", "stale_position",
)


def _empty_series(field: pa.Field) -> pd.Series:
    return pa.array([], type=field.type).to_pandas()


def conform(df: pd.DataFrame, schema: pa.Schema, what: str = "table") -> pd.DataFrame:
    """Return ``df`` with exactly the columns of ``schema``, in order, cast to its types.

    Missing nullable columns are added as nulls; a missing non-nullable column raises
    :class:`DataError` naming it. Extra columns are dropped.
    """
    missing = [f.name for f in schema if not f.nullable and f.name not in df.columns]
    if missing:
        raise DataError(f"{what}: missing required column(s) {missing}; have {list(df.columns)}")
    out = {}
    n = len(df)
    for f in schema:
        if f.name in df.columns:
            col = df[f.name]
        else:
            col = pd.Series([None] * n, index=df.index, dtype="object")
        out[f.name] = col
    frame = pd.DataFrame(out, index=df.index)
    try:
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False, safe=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"{what}: cannot cast to contract {schema.metadata.get(b'contract', b'?').decode()}: {exc}") from exc
    return table.to_pandas()


def to_table(df: pd.DataFrame, schema: pa.Schema, what: str = "table") -> pa.Table:
    """Conform then convert to a pyarrow table with the contract's schema (metadata included)."""
    return pa.Table.from_pandas(conform(df, schema, what), schema=schema, preserve_index=False)


def empty(schema: pa.Schema) -> pd.DataFrame:
    return schema.empty_table().to_pandas()


def check_columns(df: pd.DataFrame, required: Iterable[str], what: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{what}: missing required column(s) {missing}; have {list(df.columns)}")


def to_ns(times: Any) -> np.ndarray:
    """UTC nanoseconds since the epoch (int64) from a Series, index, array or list of timestamps."""
    idx = pd.DatetimeIndex(times)
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    return np.asarray(idx.as_unit("ns").asi8, dtype=np.int64)
