"""The synthetic air traffic controller: multimodal, non-Markovian, with exact decision probabilities.

Generative process (one controller session = one scenario run; every probability below is computed
exactly and recorded with each decision as ground truth, apart from model inputs):

0. Style. ``style ~ Categorical(style_prior)`` over ``vertical_first, vectoring_first, speed_first``,
   drawn once per session.
At each decision step, for every conflict on the (noisy) radar picture that is not yet handled, in order
of increasing time to CPA (a conflict is handled once a clearance went to either aircraft after it was
first shown; a conflict whose aircraft was cleared earlier in the same step is skipped):
1. Timing (history-dependent). With ``shown_s`` the time the conflict has been shown and ``tcpa_s`` its
   time to CPA: ``p_act = h_max * sigmoid((shown_s - show_min_s[style]) / 10) * sigmoid((tcpa_act_s[style] - tcpa_s) / 30)``.
2. Aircraft (history-dependent). ``logit P(aircraft 1) = recent_penalty * (r2 - r1) + climb_bonus * (v1 - v2)``,
   where ``r`` is 1 if the aircraft received a clearance within ``recent_s`` and ``v`` is 1 if it is climbing
   or descending (|vs| > 500 ft/min).
3. Type given style and aircraft: ``type_probs[style]`` over (heading, altitude, speed); the altitude
   weight is multiplied by ``climbing_altitude_factor`` when the chosen aircraft is climbing or descending,
   and is 0 when no 1000 ft step is possible within [fl_min, fl_max]; renormalised.
4. Value (multimodal), direction then magnitude:
   - heading: ``P(right) = sigmoid(-turn_gain * sin(relative bearing of the other aircraft)
     + goal_gain * sin(relative bearing of the aircraft's exit point))`` (turn away from the other, but
     sometimes towards; rather to the side where the aircraft must go); magnitude from ``heading_mags``
     with ``heading_mag_probs[style]``;
   - altitude: ``P(climb)`` = 0.9 if climbing, 0.1 if descending, else 0.8 if above the other, 0.2 if
     below, 0.5 if level with it; then, when the exit level differs from the aircraft's altitude by
     500 ft or more, ``P(climb) = sigmoid(logit(P(climb)) + goal_gain * sign(exit level - altitude))``
     (towards the level it must leave at); 0 or 1 at the level limits; magnitude from ``altitude_mags``;
   - speed: ``P(faster) = sigmoid(speed_gain * along-track lead over the other / 5 NM)``; magnitude
     from ``speed_mags``.
5. Resume: an aircraft whose last clearance was not a resume, that is in no shown conflict, was last
   cleared at least ``resume_min_s`` ago and is past its closest approach with the aircraft it was
   cleared against (diverging, or that aircraft gone), is told to resume its own navigation with
   probability ``p_resume`` per step.
Goal: an aircraft's exit point is the last waypoint of its flight plan (``Observation.flight_plans``), its
exit level that waypoint's altitude, else the plan's ``exit_level_ft``, else its ``level_ft`` (as in
:func:`simulator_adapters.controllers.flight_plan_rows`); an aircraft without a plan has no goal term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from atc_il.geometry import cpa, kwik_qdr_dist_nm, velocity_kt, wrap180
from simulator_adapters.controllers import Clearance, Controller, Decision, Observation

STYLES = ("vertical_first", "vectoring_first", "speed_first")
TYPES = ("heading", "altitude", "speed")


def _sigmoid(x: float) -> float:
    if x < -700.0:              # exp(-x) would overflow (a time to CPA of hours); 1 / (1 + e^-x) = e^x there
        return math.exp(x)
    return 1.0 / (1.0 + math.exp(-x))


@dataclass(frozen=True)
class AtcoParams:
    style_prior: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    h_max: float = 0.5
    show_min_s: tuple[float, float, float] = (15.0, 40.0, 25.0)
    tcpa_act_s: tuple[float, float, float] = (420.0, 300.0, 480.0)
    recent_s: float = 60.0
    recent_penalty: float = 3.0
    climb_bonus: float = 1.5
    type_probs: tuple[tuple[float, float, float], ...] = ((0.2, 0.7, 0.1), (0.7, 0.2, 0.1), (0.3, 0.2, 0.5))
    climbing_altitude_factor: float = 2.0
    turn_gain: float = 2.5
    goal_gain: float = 2.5     # strength of the goal term (exit side and exit level); 0 = goal-blind
    heading_mags: tuple[float, ...] = (20.0, 30.0, 40.0)
    heading_mag_probs: tuple[tuple[float, ...], ...] = ((0.5, 0.35, 0.15), (0.2, 0.5, 0.3), (0.5, 0.35, 0.15))
    altitude_mags: tuple[float, ...] = (1000.0, 2000.0)
    altitude_mag_probs: tuple[float, ...] = (0.6, 0.4)
    speed_gain: float = 2.0
    speed_mags: tuple[float, ...] = (20.0, 30.0)
    speed_mag_probs: tuple[float, ...] = (0.6, 0.4)
    fl_min: int = 200
    fl_max: int = 410
    resume_min_s: float = 60.0
    p_resume: float = 0.3
    recheck_s: float = 90.0
    forget_s: float = 30.0     # a conflict not shown for this long is forgotten (its shown time restarts)


@dataclass
class _PairState:
    first_shown: float
    last_shown: float
    handled: bool = False
    handled_at: float = 0.0


class SyntheticAtco(Controller):
    name = "atco"

    def __init__(self, params: AtcoParams = AtcoParams(), style: str | None = None):
        self.p = params
        self.fixed_style = style
        self.rng = np.random.default_rng(0)
        self.style = STYLES[0]
        self.pairs: dict[tuple[str, str], _PairState] = {}
        self.last_cleared: dict[str, tuple[float, str, str]] = {}   # fid -> (time, type, cleared against)
        self.plans: dict = {}      # the current observation's flight plans (the goal term)

    def reset(self, scenario_name: str, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        k = int(self.rng.choice(len(STYLES), p=np.array(self.p.style_prior)))
        self.style = self.fixed_style or STYLES[k]
        self.pairs, self.last_cleared, self.plans = {}, {}, {}

    # ------------------------------------------------------------------ distributions
    def distribution(self, c: dict, a: dict, b: dict, now: float, shown_s: float, style: str | None = None) -> dict:
        """The exact decision distribution for one conflict: ``p_act`` and the joint over
        (aircraft, type, value) given acting, as a list of (aircraft, type, value, probability); under
        ``style`` (default: the session's own)."""
        p, s = self.p, STYLES.index(style or self.style)
        p_act = p.h_max * _sigmoid((shown_s - p.show_min_s[s]) / 10.0) * _sigmoid((p.tcpa_act_s[s] - c["tcpa_s"]) / 30.0)
        recent = [float(now - self.last_cleared.get(x["flight_id"], (-1e9,))[0] < p.recent_s) for x in (a, b)]
        vert = [float(abs(x["vs_fpm"]) > 500) for x in (a, b)]
        p1 = _sigmoid(p.recent_penalty * (recent[1] - recent[0]) + p.climb_bonus * (vert[0] - vert[1]))
        joint = []
        for k, (own, other, pk) in enumerate(((a, b, p1), (b, a, 1 - p1))):
            for t, pt in self._type_probs(own, s).items():
                for value, pv in self._value_probs(t, own, other, s).items():
                    if pk * pt * pv > 0:
                        joint.append((k, t, value, pk * pt * pv))
        return {"p_act": p_act, "p_aircraft_1": p1, "joint": joint}

    def _type_probs(self, own: dict, s: int) -> dict:
        p = self.p
        w = dict(zip(TYPES, p.type_probs[s]))
        if abs(own["vs_fpm"]) > 500:
            w["altitude"] *= p.climbing_altitude_factor
        if not (self._can(own, +1) or self._can(own, -1)):
            w["altitude"] = 0.0
        total = sum(w.values())
        return {t: v / total for t, v in w.items()}

    def _can(self, own: dict, direction: int) -> bool:
        target = own["alt_ft"] + direction * self.p.altitude_mags[0]
        return self.p.fl_min * 100 <= target <= self.p.fl_max * 100

    def _value_probs(self, t: str, own: dict, other: dict, s: int) -> dict:
        p = self.p
        qdr, dist = kwik_qdr_dist_nm(own["lat_deg"], own["lon_deg"], other["lat_deg"], other["lon_deg"])
        rel = math.radians(float(wrap180(qdr - own["trk_deg"])))
        goal = self._goal(own)
        if t == "heading":
            up = _sigmoid(-p.turn_gain * math.sin(rel) + (p.goal_gain * goal[0] if goal else 0.0))
            mags, probs = p.heading_mags, p.heading_mag_probs[s]
        elif t == "altitude":
            if own["vs_fpm"] > 500:
                up = 0.9
            elif own["vs_fpm"] < -500:
                up = 0.1
            else:
                d = own["alt_ft"] - other["alt_ft"]
                up = 0.8 if d > 100 else 0.2 if d < -100 else 0.5
            if goal and abs(goal[1]) >= 500:
                up = _sigmoid(math.log(up / (1 - up)) + p.goal_gain * math.copysign(1.0, goal[1]))
            up = up if self._can(own, -1) else 1.0
            up = up if self._can(own, +1) else 0.0
            mags, probs = p.altitude_mags, p.altitude_mag_probs
            out = {}
            for m, pm in zip(mags, probs):
                for sign, pd_ in ((1, up), (-1, 1 - up)):
                    ok = p.fl_min * 100 <= own["alt_ft"] + sign * m <= p.fl_max * 100
                    if ok and pd_ > 0:
                        out[sign * m] = out.get(sign * m, 0.0) + pm * pd_
            total = sum(out.values())
            return {v: q / total for v, q in out.items()} if total > 0 else {}
        else:
            lead = -float(dist) * math.cos(rel)          # > 0: own is ahead of the other along own track
            up = _sigmoid(p.speed_gain * lead / 5.0)
            mags, probs = p.speed_mags, p.speed_mag_probs
        out = {}
        for m, pm in zip(mags, probs):
            out[m] = out.get(m, 0.0) + pm * up
            out[-m] = out.get(-m, 0.0) + pm * (1 - up)
        return {v: q for v, q in out.items() if q > 0}

    def _goal(self, own: dict) -> tuple[float, float] | None:
        """(sin of the exit point's bearing relative to the track, exit level - altitude in ft; 0 if the
        plan gives no level), or None without a plan."""
        plan = self.plans.get(own["flight_id"])
        if not plan or not plan.get("route"):
            return None
        _, lat, lon, level = plan["route"][-1]
        qdr, _ = kwik_qdr_dist_nm(own["lat_deg"], own["lon_deg"], lat, lon)
        level = level if level is not None else plan.get("exit_level_ft", plan.get("level_ft"))
        dalt = float(level) - own["alt_ft"] if level is not None else 0.0
        return math.sin(math.radians(float(qdr) - own["trk_deg"])), dalt

    @staticmethod
    def _diverging(a, b) -> bool:
        qdr, dist = kwik_qdr_dist_nm(a["lat_deg"], a["lon_deg"], b["lat_deg"], b["lon_deg"])
        ua, va = velocity_kt(a["gs_kt"], a["trk_deg"])
        ub, vb = velocity_kt(b["gs_kt"], b["trk_deg"])
        tcpa, _ = cpa(dist * math.sin(math.radians(qdr)), dist * math.cos(math.radians(qdr)), ub - ua, vb - va)
        return float(tcpa) <= 0.0

    # ------------------------------------------------------------------ the decision step
    def decide(self, obs: Observation) -> Decision:
        """Propose and commit: the expert acting on its own decisions."""
        dec, handled = self.propose(obs)
        self.commit(obs.sim_s, dec.clearances, handled)
        return dec

    def propose(self, obs: Observation) -> tuple[Decision, list[tuple[str, str]]]:
        """The expert's decision at this step, drawn from its exact distribution, without committing it: its
        memory of what it cleared and which conflicts are handled is left as it was (what it observes, the
        conflicts shown and since when, is updated). Returns the decision and the conflict pairs it would mark
        handled; :meth:`commit` records what was actually executed (its own decision, or another controller's,
        when the expert only labels the states a learner visits: DAgger)."""
        now = obs.sim_s
        dec = Decision()
        self.plans = obs.flight_plans or {}
        radar = obs.radar.set_index("flight_id", drop=False)
        shown: set[str] = set()
        cleared_now: dict[str, tuple[float, str, str]] = {}
        handled: list[tuple[str, str]] = []
        conf = obs.conflicts
        if len(conf):
            conf = conf[conf["conflict"].astype(bool)].sort_values("tcpa_s", kind="stable")
        for c in conf.to_dict("records"):
            key = (c["flight_id_1"], c["flight_id_2"])
            shown.update(key)
            st = self.pairs.get(key)
            if st is None or now - st.last_shown > self.p.forget_s:
                st = self.pairs[key] = _PairState(now, now)
            st.last_shown = now
            if st.handled and now - st.handled_at >= self.p.recheck_s:
                st.handled = False
            if st.handled:
                continue
            if any(f in cleared_now for f in key):
                handled.append(key)
                continue
            if key[0] not in radar.index or key[1] not in radar.index:
                continue
            a, b = radar.loc[key[0]].to_dict(), radar.loc[key[1]].to_dict()
            shown_s = now - st.first_shown
            dist = self.distribution(c, a, b, now, shown_s)
            by_style = {s: dist if s == self.style else self.distribution(c, a, b, now, shown_s, style=s)
                        for s in STYLES}
            acted = bool(self.rng.random() < dist["p_act"])
            record = {"sim_s": now, "time": obs.time, "flight_id_1": key[0], "flight_id_2": key[1],
                      "kind": "conflict", "style": self.style, "p_act": dist["p_act"],
                      "p_aircraft_1": dist["p_aircraft_1"], "joint": dist["joint"],
                      "by_style": {s: {"prior": pr, "p_act": by_style[s]["p_act"], "joint": by_style[s]["joint"]}
                                   for s, pr in zip(STYLES, self.p.style_prior)},
                      "acted": acted, "aircraft": -1, "action_type": None,
                      "value": float("nan"), "log_prob": math.log(max(1 - dist["p_act"], 1e-300))}
            if acted and dist["joint"]:
                probs = np.array([j[3] for j in dist["joint"]])
                i = int(self.rng.choice(len(probs), p=probs / probs.sum()))
                k, t, v, q = dist["joint"][i]
                fid = key[k]
                dec.clearances.append(Clearance(fid, t, float(v), against=key[1 - k]))
                cleared_now[fid] = (now, t, key[1 - k])
                handled.append(key)
                record.update(aircraft=k, action_type=t, value=float(v), log_prob=math.log(dist["p_act"] * q))
            dec.truth.append(record)
        for fid, (t_last, kind, other) in list(self.last_cleared.items()):
            if fid in cleared_now or kind == "resume" or fid in shown or now - t_last < self.p.resume_min_s \
                    or fid not in radar.index:
                continue
            if other in radar.index and not self._diverging(radar.loc[fid], radar.loc[other]):
                continue
            acted = bool(self.rng.random() < self.p.p_resume)
            dec.truth.append(self._resume_record(obs, fid, other, acted))
            if acted:
                dec.clearances.append(Clearance(fid, "resume", 0.0, against=other))
        return dec, handled

    def commit(self, now: float, executed: list[Clearance], handled: list[tuple[str, str]] | None = None) -> None:
        """Record the clearances executed at ``now``: each aircraft's last clearance, and the conflicts that are
        handled from now on: ``handled`` (as :meth:`propose` returned them, when the expert's own decision was
        executed), else every conflict shown at this step that involves a cleared aircraft."""
        for c in executed:
            self.last_cleared[c.flight_id] = (now, c.action_type, c.against or "")
        if handled is None:
            fids = {c.flight_id for c in executed if c.action_type != "resume"}
            handled = [k for k, st in self.pairs.items() if st.last_shown == now and (k[0] in fids or k[1] in fids)]
        for key in handled:
            st = self.pairs.get(key)
            if st is not None:
                st.handled, st.handled_at = True, now

    def _resume_record(self, obs: Observation, fid: str, other: str, acted: bool) -> dict:
        """The truth record of a resume decision (style-independent: the same under every style), on the
        pair (fid, other) ordered as conflict pairs are (flight_id_1 < flight_id_2)."""
        k = 0 if fid < other else 1
        f1, f2 = (fid, other) if k == 0 else (other, fid)
        p = self.p.p_resume
        joint = [(k, "resume", 0.0, 1.0)]
        return {"sim_s": obs.sim_s, "time": obs.time, "flight_id_1": f1, "flight_id_2": f2, "kind": "resume",
                "style": self.style, "p_act": p, "p_aircraft_1": float(k == 0), "joint": joint,
                "by_style": {s: {"prior": pr, "p_act": p, "joint": joint} for s, pr in zip(STYLES, self.p.style_prior)},
                "acted": acted,
                "aircraft": k if acted else -1, "action_type": "resume" if acted else None,
                "value": 0.0 if acted else float("nan"), "log_prob": math.log(p if acted else 1 - p)}

