"""The ``varied`` demonstration controller: the clearance kinds real controllers give and the synthetic expert lacks.

Not a conflict resolver: a source of manoeuvres with exact ground truth (what it issues is what
``clearances.parquet`` records), for benchmarks and tests of action extraction from tracks
(``bench/extraction.py``). At each decision step, each aircraft that has been on the picture for at least
``min_seen_s``, was last cleared at least ``min_gap_s`` ago and is more than ``exit_margin_nm`` from its exit
point is cleared with probability ``rate_per_s * dt``; the kind is drawn with ``kind_weights`` (altitude
weighted ``climbing_altitude_factor`` times more for an aircraft climbing or descending, direct-to forced with
``p_back_on_route`` after a heading vector), and its value as follows:

- ``heading``: a turn of 5-40 degrees (uniform, whole degrees), either side;
- ``speed``: a step of 5-20 kt CAS (uniform, whole knots), slower or faster (faster only while the Mach number
  stays under ``mach_max``);
- ``altitude``, level aircraft: 1000-4000 ft (probabilities ``level_step_probs``) up or down onto a 1000 ft level
  within ``fl_min``..``fl_max``; climbing or descending aircraft (|vs| > 500 ft/min): either stop the climb or
  descent at a 1000 ft level 1000-2000 ft ahead of the aircraft, short of its cleared level (visible only as an
  earlier level-off), or reverse it onto a level 1000-3000 ft behind it. (A clearance that extends a climb beyond
  its cleared level changes nothing on a track until the old level is reached, so none is given.)
- ``direct_to``: the 2nd-4th next waypoint of the flight plan while on the route, the 1st-4th after a heading
  vector; only when the track changes by at least ``min_direct_deg``.

:func:`dense_routes` gives a scenario's flights routes with waypoints 2-4 minutes apart and a few NM off the
straight line (as real routes through beacons are), so that direct-to changes the track by a few degrees.
Aircraft fly with VNAV off (``spawn_commands``): BlueSky's VNAV changes the speed at route turns, which aircraft
in cruise do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from atc_il.geometry import bearing_deg, from_local_nm, haversine_nm, to_local_nm, wrap180
from simulator_adapters.controllers import Clearance, Controller, Decision, Observation
from simulator_adapters.scenarios import Scenario, Waypoint

KINDS = ("heading", "altitude", "speed", "direct_to")


@dataclass(frozen=True)
class VariedParams:
    rate_per_s: float = 1.0 / 300.0        # mean time between clearances of an eligible aircraft: 5 min
    min_gap_s: float = 240.0
    min_seen_s: float = 120.0
    exit_margin_nm: float = 45.0          # the manoeuvre must be seen before the aircraft leaves
    kind_weights: tuple[float, float, float, float] = (0.25, 0.3, 0.25, 0.2)
    climbing_altitude_factor: float = 4.0
    p_back_on_route: float = 0.8
    heading_deg: tuple[float, float] = (5.0, 40.0)
    speed_kt: tuple[float, float] = (5.0, 20.0)
    mach_max: float = 0.78                # faster than this the performance model caps the speed
    level_step_probs: tuple[float, float, float, float] = (0.4, 0.3, 0.2, 0.1)
    fl_min: int = 200
    fl_max: int = 350                     # an A320 in BlueSky climbs no higher than about FL365
    min_direct_deg: float = 3.0


def _next_index(route, lat, lon, trk) -> int:
    """Index of the next waypoint of ``route`` [(name, lat, lon, alt)]: the first one still ahead along the leg
    leading to it (for the first waypoint, along the aircraft's track); len(route) when all are behind."""
    wlat = np.array([w[1] for w in route], float)
    wlon = np.array([w[2] for w in route], float)
    x, y = to_local_nm(wlat, wlon, lat, lon)
    px, py = np.r_[0.0, x[:-1]], np.r_[0.0, y[:-1]]
    dx, dy = x - px, y - py
    dx[0], dy[0] = math.sin(math.radians(trk)), math.cos(math.radians(trk))
    ahead = x * dx + y * dy > 0
    idx = np.flatnonzero(ahead)
    return int(idx[0]) if len(idx) else len(route)


class VariedController(Controller):
    name = "varied"
    # VNAV off: with VNAV's speed management BlueSky changes the speed at every route turn (its turn speed),
    # which en-route aircraft holding their Mach number do not; LNAV stays on
    spawn_commands = ("VNAV {fid} OFF",)

    def __init__(self, params: VariedParams = VariedParams()):
        self.p = params
        self.rng = np.random.default_rng(0)
        self.first_seen: dict[str, float] = {}
        self.last: dict[str, tuple[float, str]] = {}
        self.target_alt: dict[str, float] = {}
        self.style = None

    def reset(self, scenario_name: str, seed: int) -> None:
        self.rng = np.random.default_rng([seed, 14])
        self.first_seen, self.last, self.target_alt = {}, {}, {}

    def decide(self, obs: Observation) -> Decision:
        now, p, dec = obs.sim_s, self.p, Decision()
        dt = 5.0
        for ac in obs.radar.to_dict("records"):
            fid = ac["flight_id"]
            self.first_seen.setdefault(fid, now)
            last_t, last_kind = self.last.get(fid, (-1e9, ""))
            plan = (obs.flight_plans or {}).get(fid) or {}
            route = list(plan.get("route") or ())
            if now - self.first_seen[fid] < p.min_seen_s or now - last_t < p.min_gap_s or not route:
                continue
            _, elat, elon, _ = route[-1]
            if float(haversine_nm(ac["lat_deg"], ac["lon_deg"], elat, elon)) < p.exit_margin_nm:
                continue
            vectored = last_kind == "heading"
            rate = p.rate_per_s * (3.0 if vectored else 1.0)
            if self.rng.random() >= rate * dt:
                continue
            c = self._clearance(ac, route, plan, vectored)
            if c is not None:
                dec.clearances.append(c)
                self.last[fid] = (now, c.action_type)
        return dec

    def _clearance(self, ac: dict, route: list, plan: dict, vectored: bool) -> Clearance | None:
        p, r = self.p, self.rng
        fid = ac["flight_id"]
        climbing = abs(ac["vs_fpm"]) > 500
        if vectored and r.random() < p.p_back_on_route:
            kind = "direct_to"
        else:
            w = np.array(p.kind_weights, float)
            if climbing:
                w[1] *= p.climbing_altitude_factor
            kind = KINDS[int(r.choice(4, p=w / w.sum()))]
        if kind == "heading":
            return Clearance(fid, "heading", float(r.choice([-1, 1]) * round(r.uniform(*p.heading_deg))))
        if kind == "speed":
            step = float(round(r.uniform(*p.speed_kt)))
            from bluesky.tools import aero
            mach = float(aero.vtas2mach(ac["gs_kt"] * aero.kts, ac["alt_ft"] * aero.ft))
            faster = r.random() < 0.5 and mach + step * aero.kts / float(aero.vvsound(ac["alt_ft"] * aero.ft)) <= p.mach_max
            return Clearance(fid, "speed", step if faster else -step)
        if kind == "altitude":
            return self._altitude(ac, plan, climbing)
        nxt = _next_index(route, ac["lat_deg"], ac["lon_deg"], ac["trk_deg"])
        first = nxt if vectored else nxt + 1
        cand = []
        for j in range(first, min(nxt + 4, len(route))):
            brg = float(bearing_deg(ac["lat_deg"], ac["lon_deg"], route[j][1], route[j][2]))
            if abs(float(wrap180(brg - ac["trk_deg"]))) >= p.min_direct_deg and abs(float(wrap180(brg - ac["trk_deg"]))) < 90:
                cand.append(route[j][0])
        if not cand:
            return None
        return Clearance(fid, "direct_to", 0.0, waypoint=str(cand[int(r.integers(len(cand)))]))

    def _altitude(self, ac: dict, plan: dict, climbing: bool) -> Clearance | None:
        p, r = self.p, self.rng
        fid, alt = ac["flight_id"], float(ac["alt_ft"])
        lo, hi = p.fl_min * 100.0, p.fl_max * 100.0
        if climbing:
            sign = 1.0 if ac["vs_fpm"] > 0 else -1.0
            target = self.target_alt.get(fid, plan.get("level_ft"))
            if r.random() < 0.6:         # stop the climb or descent short of its cleared level
                level = math.ceil((alt + sign * 1000.0) / 1000.0) * 1000.0 if sign > 0 else \
                    math.floor((alt + sign * 1000.0) / 1000.0) * 1000.0
                level += sign * 1000.0 * float(r.integers(0, 2))
                if target is not None and sign * (float(target) - level) < 500.0:
                    return None
            else:                        # reverse it
                level = (math.floor if sign > 0 else math.ceil)((alt - sign * 1000.0) / 1000.0) * 1000.0
                level -= sign * 1000.0 * float(r.integers(0, 3))
        else:
            step = 1000.0 * (1 + int(r.choice(4, p=np.array(p.level_step_probs))))
            level = round(alt / 1000.0) * 1000.0 + float(r.choice([-1, 1])) * step
            if not lo <= level <= hi:
                level = round(alt / 1000.0) * 1000.0 - math.copysign(step, level - alt)
        if not lo <= level <= hi or abs(level - alt) < 500.0:
            return None
        self.target_alt[fid] = level
        return Clearance(fid, "altitude", level - alt)


def dense_routes(scenario: Scenario, seed: int = 0, spacing_nm: tuple[float, float] = (15.0, 30.0),
                 offset_nm: float = 3.0) -> Scenario:
    """The scenario with every flight's route through waypoints every ``spacing_nm`` (uniform; 2-4 min at
    450 kt), each ``offset_nm`` (standard deviation) off the straight line between the original waypoints,
    which are kept; the first new waypoint lies on the initial heading. Names ``<flight>-NN``."""
    rng = np.random.default_rng([seed, 1414])
    flights = []
    for f in scenario.flights:
        anchors = [(f.lat_deg, f.lon_deg, None)] + [(w.lat_deg, w.lon_deg, w) for w in f.route]
        route: list[Waypoint] = []
        k = 0
        for (la0, lo0, _), (la1, lo1, w1) in zip(anchors[:-1], anchors[1:]):
            x1, y1 = to_local_nm(la1, lo1, la0, lo0)
            length = float(math.hypot(x1, y1))
            if length < 1e-6:
                continue
            ux, uy = x1 / length, y1 / length
            d = float(rng.uniform(*spacing_nm))
            while d < length - spacing_nm[0] / 2:
                off = 0.0 if not route else float(rng.normal(0.0, offset_nm))
                la, lo = from_local_nm(ux * d - uy * off, uy * d + ux * off, la0, lo0)
                k += 1
                route.append(Waypoint(f"{f.flight_id}-{k:02d}", float(la), float(lo), None))
                d += float(rng.uniform(*spacing_nm))
            route.append(w1)
        flights.append(replace(f, route=tuple(route)))
    return replace(scenario, flights=flights)
