"""Validated configuration. Every stage takes one pydantic section; a YAML file may set any of them.

Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from atc_il.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CleanConfig(Section):
    max_gs_kt: float = Field(1000.0, gt=0, le=5000, description="position jumps implying a faster ground speed are glitches")
    max_vs_fpm: float = Field(12000.0, gt=0, le=100_000, description="altitude jumps implying a faster climb/descent are spikes")
    max_gap_s: float = Field(60.0, gt=0, le=3600, description="a gap longer than this splits a flight into segments (at most an hour: no interpolation bridges more)")
    min_segment_points: int = Field(3, ge=2, le=100_000, description="segments with fewer raw points are quarantined")
    merge_window_s: float = Field(1.0, ge=0, le=10, description="ADS-B messages of one aircraft this close in time "
                                  "are merged before validation (position rows take the missing altitude/velocity "
                                  "of the nearest message; rows without a position near a position row are merged "
                                  "into it: pipelines/merge.py); 0 turns merging off")


class ResampleConfig(Section):
    step_s: float = Field(5.0, ge=0.1, le=600, description="regular grid step (0.1 s to 10 min)")


class ConflictConfig(Section):
    rpz_nm: float = Field(5.0, gt=0, le=100, description="protected radius (horizontal separation minimum)")
    hpz_ft: float = Field(1000.0, gt=0, le=20_000, description="protected height (vertical separation minimum)")
    lookahead_s: float = Field(600.0, gt=0, le=7200, description="look-ahead time")
    max_episode_gap_s: float = Field(30.0, ge=0, le=3600, description="detections of a pair closer in time join one episode")
    min_alt_ft: float = Field(-1e9, description="ignore aircraft below this altitude (e.g. on ground)")


class ActionConfig(Section):
    heading_min_deg: float = Field(10.0, gt=0, description="smallest sustained track change reported as a heading action")
    heading_rate_min_dps: float = Field(0.5, gt=0, description="turn rate that starts a turn")
    level_min_ft: float = Field(500.0, gt=0, description="smallest level change reported as an altitude action")
    vs_level_fpm: float = Field(300.0, gt=0, description="|vertical rate| under which flight counts as level")
    level_hold_s: float = Field(30.0, ge=0, description="level flight needed before a climb or descent counts")
    speed_min_kt: float = Field(15.0, gt=0, description="smallest sustained ground speed change reported")
    sustain_s: float = Field(20.0, ge=0, description="a change must hold this long")
    direct_to_tol_deg: float = Field(5.0, gt=0, description="track within this of a downstream waypoint's bearing")
    link_margin_s: float = Field(30.0, ge=0, description="an action up to this long before first detection still links")


class DatasetConfig(Section):
    history_steps: int = Field(24, ge=1, le=2000, description="H: grid steps of history per sample (24 x 5 s = 2 min)")
    neighbours: int = Field(4, ge=0, le=128, description="K nearest other aircraft, padded and masked")
    recent_clearances: int = Field(8, ge=0, le=1024, description="M most recent clearances in the airspace")
    clearance_horizon_s: float = Field(1800.0, gt=0, description="older clearances are not recent")
    neighbour_range_nm: float = Field(80.0, gt=0, description="aircraft further away are not neighbours")
    split: str = Field("day", pattern="^(day|hour|scenario)$", description="split unit: by day, by hour (of "
                       "the episode's first detection: for a day or two of tracks) or by scenario")
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    seed: int = 0
    shard_rows: int = Field(20_000, ge=1, le=10_000_000, description="samples per shard (bounds memory while building)")
    goal: bool = Field(False, description="goal conditioning: append each aircraft's flight-plan exit point and "
                       "level to the geometry tensor (needs flight plans; off leaves the feature spec unchanged)")
    nuisance: bool = Field(False, description="causal-confusion study: append to the geometry tensor, per history "
                           "step, whether each aircraft of the pair is manoeuvring (an un-resumed clearance issued "
                           "strictly before that step, within nuisance_window_s); off leaves the feature spec unchanged")
    nuisance_window_s: float = Field(600.0, gt=0, description="a clearance older than this no longer counts as "
                                     "manoeuvring (dataset.nuisance)")
    controller_history: bool = Field(True, description="append to the geometry tensor, per history step, the "
                                     "controller's own history: seconds since each aircraft's last clearance, whether "
                                     "it was cleared since the conflict was first detected, and the clearances of each "
                                     "kind given within clearance_horizon_s (pipelines/history.py)")
    history_cap_s: float = Field(600.0, gt=0, description="seconds since the last clearance are capped here (and an "
                                 "aircraft never cleared gets this value) (dataset.controller_history)")
    pair_history: bool = Field(False, description="append to the geometry tensor, per history step, the seconds since "
                               "each aircraft's last clearance given against the other aircraft of the pair (the "
                               "controller acted on this very conflict; from actions that name against_flight_id, as "
                               "the simulator's clearance logs do; inferred actions do not, and the feature stays at "
                               "the cap), capped at history_cap_s "
                               "(pipelines/history.py); off leaves the feature spec unchanged")
    resume_samples: bool = Field(True, description="decision steps for resumes: after each clearance given against "
                                 "another aircraft, the steps at which the pair diverges, up to the aircraft's next "
                                 "clearance and at most resume_window_s later (pipelines/resume.py); the closed loop asks "
                                 "the policy at the same steps")
    resume_window_s: float = Field(900.0, gt=0, description="resume steps end this long after the clearance")
    other_conflicts: bool = Field(False, description="append to the geometry tensor, per history step, the number of "
                                  "predicted conflicts each aircraft of the pair has with third aircraft (what a conflict "
                                  "display shows; a controller resumes or turns an aircraft that is in no other conflict "
                                  "rather than one that is); off leaves the feature spec unchanged")


class EnRouteConfig(Section):
    """The en-route focus of the conflicts, actions and dataset stages (``pipelines/enroute.py``): by default
    everything is kept. A conflict episode is kept when both aircraft are at or above ``min_alt_ft`` and inside
    the airspace at first detection; an action when its aircraft is, at the action's time."""

    min_alt_ft: float | None = Field(None, ge=-2000, le=60_000, description="altitude floor (ft); none: no floor")
    airspace: str | None = Field(None, description="airspace polygon: GeoJSON (Polygon, MultiPolygon, Feature or "
                                 "FeatureCollection) or a CSV of lat,lon vertices; none: everywhere")
    sector: str | None = Field(None, description="the named feature of a GeoJSON FeatureCollection to use as the "
                               "airspace; none: the union of its polygons")


class PipelineConfig(Section):
    clean: CleanConfig = CleanConfig()
    resample: ResampleConfig = ResampleConfig()
    conflicts: ConflictConfig = ConflictConfig()
    actions: ActionConfig = ActionConfig()
    dataset: DatasetConfig = DatasetConfig()
    enroute: EnRouteConfig = EnRouteConfig()


def _key_path(loc: tuple, data: Any) -> list[str]:
    """The keys of an error location as the user wrote them: without the tags pydantic inserts for a member
    of a discriminated union (``head.mdn.components`` -> ``head.components``), i.e. without an element that
    is not a key of the data there and is followed by more."""
    out, cur = [], data
    for i, x in enumerate(loc):
        if isinstance(cur, dict) and x not in cur and i < len(loc) - 1:
            continue
        out.append(str(x))
        cur = cur.get(x) if isinstance(cur, dict) else None
    return out


def _format_validation(exc: ValidationError, source: str, data: Any = None) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(_key_path(tuple(err["loc"]), data))
        parts.append(f"{loc}: {err['msg']}")
    return f"{source}: invalid configuration: " + "; ".join(parts)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validate(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source, data)) from None


def load_pipeline_config(path: str | Path | None = None, **overrides: Any) -> PipelineConfig:
    """Load a :class:`PipelineConfig` from YAML (or defaults), then apply section overrides."""
    data: dict[str, Any] = load_yaml(path) if path else {}
    for section, values in overrides.items():
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return validate(PipelineConfig, data, str(path or "config"))
