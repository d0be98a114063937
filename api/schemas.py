"""Request and response schemas of the REST service, in the contracts' canonical units.

Track points follow ``atc-il/track/1`` (lat_deg, lon_deg, alt_ft, gs_kt, trk_deg, vs_fpm, cfl_ft), grouped per
aircraft; clearances follow ``atc-il/action/1``. Times are ISO-8601 strings with a time zone (converted to UTC).
Physical ranges are :data:`atc_il.schemas.TRACK_RANGES`. Models are strict (no "1.5" for a number, no unknown
fields) so that every malformed field is a 422 naming it. Request models whose limits are configured per service
(``n_alternatives`` maximum, batch size, aircraft count) are built by the ``*_model`` factories.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from atc_il.schemas import ACTION_SOURCES, ACTION_TYPES, ACTION_UNITS, TRACK_RANGES

POINTS_MAX = 720            # per aircraft: one hour at 5 s
SPAN_MAX_S = 3600.0         # all track points of one request lie within this time span
NEIGHBOURS_MAX = 50
CLEARANCES_MAX = 200
WAYPOINTS_MAX = 200
N_ALTERNATIVES_LIMIT = 1024
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(2100, 1, 1, tzinfo=UTC)
# clearance values: signed change in the type's unit
VALUE_RANGES = {"heading": (-180.0, 180.0), "direct_to": (-180.0, 180.0), "altitude": (-62000.0, 62000.0),
                "speed": (-1000.0, 1000.0), "resume": (0.0, 0.0)}
TARGET_RANGES = {"heading": (0.0, 360.0), "direct_to": (0.0, 360.0), "altitude": TRACK_RANGES["alt_ft"],
                 "speed": TRACK_RANGES["gs_kt"], "resume": (float("-inf"), float("inf"))}


def _utc(v):
    """ISO-8601 string with a time zone -> aware UTC datetime, between 1970 and 2100."""
    if not isinstance(v, str):
        raise PydanticCustomError("time_type", "must be an ISO-8601 time string with a time zone, "
                                  "e.g. 2024-06-03T08:15:00Z")
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        raise PydanticCustomError("time_parsing", "not an ISO-8601 time: '{value}'", {"value": v[:64]}) from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise PydanticCustomError("time_zone", "must carry a time zone (Z or +00:00), got '{value}'",
                                  {"value": v[:64]})
    try:
        t = t.astimezone(UTC)
    except OverflowError:   # e.g. 0001-01-01T00:00:00+01:00
        t = None
    if t is None or not TIME_MIN <= t < TIME_MAX:
        raise PydanticCustomError("time_range", "must lie between 1970 and 2100, got '{value}'", {"value": v[:64]})
    return t


def _integral(v):
    """1.0 is an integer in JSON Schema: accept integral floats for integer fields (still no strings or bools)."""
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2**53 else v


UtcTime = Annotated[datetime, BeforeValidator(_utc)]
Int = Annotated[int, BeforeValidator(_integral)]
FlightId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$",
                                description="one flight (e.g. icao24), unique in the request")]
Label = Annotated[str, Field(max_length=64)]


def _rng(name: str, description: str, optional: bool = False):
    lo, hi = TRACK_RANGES[name]
    return Field(None if optional else ..., ge=lo, le=hi, allow_inf_nan=False, description=description)


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# ------------------------------------------------------------------ requests
class TrackPoint(Strict):
    time: UtcTime = Field(description="time of the position, ISO-8601 with a time zone (UTC)")
    lat_deg: float = _rng("lat_deg", "latitude, degrees WGS84")
    lon_deg: float = _rng("lon_deg", "longitude, degrees WGS84")
    alt_ft: float = _rng("alt_ft", "barometric altitude, ft")
    gs_kt: float | None = _rng("gs_kt", "ground speed, kt (derived from positions when absent)", True)
    trk_deg: float | None = _rng("trk_deg", "ground track, degrees true (derived when absent)", True)
    vs_fpm: float | None = _rng("vs_fpm", "vertical rate, ft/min, + = climb (derived when absent)", True)
    cfl_ft: float | None = _rng("cfl_ft", "cleared flight level, ft, when known", True)


class AircraftTrack(Strict):
    flight_id: FlightId
    callsign: Label | None = None
    points: list[TrackPoint] = Field(min_length=2, max_length=POINTS_MAX,
                                     description="recent track points, strictly increasing in time")

    @field_validator("points")
    @classmethod
    def _increasing(cls, pts: list[TrackPoint]) -> list[TrackPoint]:
        for i in range(1, len(pts)):
            if pts[i].time <= pts[i - 1].time:
                raise PydanticCustomError("time_order", "point {i}: times must be strictly increasing", {"i": i})
        return pts


class Waypoint(Strict):
    seq: Int = Field(ge=0, le=10_000)
    waypoint: Label | None = None
    lat_deg: float = _rng("lat_deg", "latitude, degrees WGS84")
    lon_deg: float = _rng("lon_deg", "longitude, degrees WGS84")
    alt_ft: float | None = _rng("alt_ft", "planned altitude, ft", True)
    time: UtcTime | None = None


class FlightPlan(Strict):
    """Contract ``atc-il/flight-plan/1``. Read by goal-conditioned models (the exit point and level: the last
    waypoint); ignored by the others."""
    flight_id: FlightId
    waypoints: list[Waypoint] = Field(min_length=1, max_length=WAYPOINTS_MAX)


class Clearance(Strict):
    """A recent clearance in the action contract (``atc-il/action/1``)."""
    time: UtcTime = Field(description="when the clearance was issued")
    flight_id: FlightId
    action_type: Literal[ACTION_TYPES] = Field(description="heading, altitude, speed, direct_to or resume")
    value: float = Field(0.0, allow_inf_nan=False, description="signed change: heading/direct_to deg (+ = right), "
                         "altitude ft (+ = climb), speed kt (+ = faster), 0 for resume")
    unit: Literal["deg", "ft", "kt", ""] | None = Field(None, description="the type's unit (checked when given)")
    target_value: float | None = Field(None, allow_inf_nan=False, description="absolute cleared value when known")
    waypoint: Label | None = None
    source: Literal[ACTION_SOURCES] = "clearance_log"
    confidence: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    action_id: Annotated[str, Field(max_length=200)] | None = None
    against_flight_id: FlightId | None = Field(None, description="the other aircraft of the conflict this clearance "
                                               "resolves, when known (read by models built with dataset.pair_history)")

    @field_validator("value", "target_value")
    @classmethod
    def _in_range(cls, v, info: ValidationInfo):
        kind = info.data.get("action_type")
        if v is None or kind is None:
            return v
        lo, hi = (VALUE_RANGES if info.field_name == "value" else TARGET_RANGES)[kind]
        if not lo <= v <= hi:
            raise PydanticCustomError("out_of_range", "{kind}: must lie in [{lo}, {hi}], got {v}",
                                      {"kind": kind, "lo": lo, "hi": hi, "v": v})
        return v

    @field_validator("unit")
    @classmethod
    def _unit(cls, v, info: ValidationInfo):
        kind = info.data.get("action_type")
        if v is not None and kind is not None and v != ACTION_UNITS[kind]:
            msg = f"{kind} is in {ACTION_UNITS[kind]!r}, got {v!r}"     # formatted here: no template left in it
            raise PydanticCustomError("unit", msg.replace("{", "(").replace("}", ")"))
        return v


class ConflictRequestBase(Strict):
    aircraft: list[AircraftTrack] = Field(min_length=2, max_length=2, description="the conflicting pair")
    neighbours: list[AircraftTrack] = Field(default_factory=list, max_length=NEIGHBOURS_MAX,
                                            description="other aircraft around the pair (optional)")
    flight_plans: list[FlightPlan] = Field(default_factory=list, max_length=NEIGHBOURS_MAX + 2,
                                           description="flight plans (read by goal-conditioned models)")
    clearances: list[Clearance] = Field(default_factory=list, max_length=CLEARANCES_MAX,
                                        description="recent clearances in the airspace (action contract)")
    at: UtcTime | None = Field(None, description="decision time (default: the latest time on the model's grid)")
    n_alternatives: Int = 0
    seed: Int = Field(0, ge=0, le=2**31 - 1, description="seed of the sampled alternatives")


class DetectRequestBase(Strict):
    aircraft: list[AircraftTrack] = Field(min_length=2, description="every aircraft of the radar picture")
    clearances: list[Clearance] = Field(default_factory=list, max_length=CLEARANCES_MAX)
    at: UtcTime | None = Field(None, description="decision time (default: the latest time on the model's grid)")
    n_alternatives: Int = 0
    seed: Int = Field(0, ge=0, le=2**31 - 1)


def _n_alt(n_max: int):
    return Field(0, ge=0, le=n_max, description=f"sampled alternatives grouped into modes (0..{n_max})")


def conflict_request_model(n_alternatives_max: int) -> type[ConflictRequestBase]:
    class ConflictRequest(ConflictRequestBase):
        n_alternatives: Int = _n_alt(n_alternatives_max)
    return ConflictRequest


def batch_request_model(conflict: type[ConflictRequestBase], max_batch: int) -> type[BaseModel]:
    class BatchRequest(Strict):
        conflicts: list[conflict] = Field(min_length=1, max_length=max_batch,  # type: ignore[valid-type]
                                          description=f"at most {max_batch} conflicts")
    return BatchRequest


def detect_request_model(n_alternatives_max: int, max_aircraft: int) -> type[DetectRequestBase]:
    class DetectRequest(DetectRequestBase):
        aircraft: list[AircraftTrack] = Field(min_length=2, max_length=max_aircraft,
                                              description=f"every aircraft of the radar picture (2..{max_aircraft})")
        flight_plans: list[FlightPlan] = Field(default_factory=list, max_length=max_aircraft,
                                               description="flight plans (read by goal-conditioned models)")
        n_alternatives: Int = _n_alt(n_alternatives_max)
    return DetectRequest


def cross_checks(aircraft: list[AircraftTrack], neighbours: list[AircraftTrack] = (),
                 prefix: tuple = ("body",)) -> list[dict]:
    """Checks across fields: distinct flight ids, all points within :data:`SPAN_MAX_S`. -> error items."""
    errors, seen = [], {}
    groups = [("aircraft", aircraft), ("neighbours", neighbours)]
    for field, tracks in groups:
        for i, ac in enumerate(tracks):
            if ac.flight_id in seen:
                errors.append({"loc": [*prefix, field, i, "flight_id"], "type": "duplicate",
                               "msg": f"flight_id {ac.flight_id!r} also given at {seen[ac.flight_id]}"})
            else:
                seen[ac.flight_id] = f"{field}[{i}]"
    times = [(ac.points[0].time, ac.points[-1].time) for _, tracks in groups for ac in tracks]
    if times:
        span = (max(t[1] for t in times) - min(t[0] for t in times)).total_seconds()
        if span > SPAN_MAX_S:
            errors.append({"loc": [*prefix, "aircraft"], "type": "time_span",
                           "msg": f"track points span {span:.0f} s; at most {SPAN_MAX_S:.0f} s per request"})
    return errors


# ------------------------------------------------------------------ responses
class ModelRef(BaseModel):
    name: str
    spec_hash: str | None


class ConflictOut(BaseModel):
    flight_id_1: str = Field(description="aircraft 1: the smaller flight_id of the pair")
    flight_id_2: str
    in_conflict: bool = Field(description="predicted loss of separation within the look-ahead at the decision time")
    los: bool | None = Field(None, description="separation lost now (null when the pair is not in conflict)")
    tcpa_s: float | None = None
    dcpa_nm: float | None = None
    dist_nm: float | None = None


class DecisionOut(BaseModel):
    act: bool = Field(description="the most likely choice: does the controller act now on this conflict")
    p_act: float | None = Field(description="probability of acting now")
    aircraft: int = Field(description="1 or 2: which aircraft of the pair the action is for")
    flight_id: str
    action_type: str = Field(description="the most likely action given that the controller acts")
    value: float | None = Field(description="signed change in `unit` (heading deg + = right, altitude ft + = "
                                   "climb, speed kt + = faster, 0 for resume)")
    unit: str


class ModeOut(BaseModel):
    aircraft: int
    flight_id: str
    action_type: str
    value: float | None
    unit: str
    probability: float | None = Field(description="P(act) x the mode's share of the sampled actions")
    probability_given_act: float


class PredictionOut(BaseModel):
    time: datetime = Field(description="decision time (UTC, on the model's grid)")
    conflict: ConflictOut
    decision: DecisionOut
    alternatives: list[ModeOut] = Field(description="sampled actions grouped into modes, most frequent first")


class PredictResponse(PredictionOut):
    model: ModelRef


class BatchResponse(BaseModel):
    model: ModelRef
    results: list[PredictionOut]


class DetectResponse(BaseModel):
    model: ModelRef
    time: datetime
    n_aircraft: int = Field(description="aircraft with a position at the decision time")
    conflicts: list[PredictionOut]


class ModelInfo(BaseModel):
    uri: str
    name: str
    version: str | None = None
    spec_hash: str | None
    history_steps: int
    step_s: float
    exact_log_prob: bool
    runtime: str = Field(description="where the context network runs: onnxruntime or torch")
    loaded_at: datetime
    limits: dict[str, int | float]


class Health(BaseModel):
    status: str
    detail: str | None = None


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    error: str = Field(description="validation_error, data_error, bad_request, unauthorized, too_large, "
                       "not_found, not_ready, internal_error")
    message: str
    detail: list[ErrorItem] = Field(default_factory=list)
