"""The synthetic expert: valid distributions, empirical frequencies that match them, history dependence."""

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from simulator_adapters.atco import STYLES, SyntheticAtco, _PairState
from simulator_adapters.controller_registry import make_controller
from simulator_adapters.controllers import Observation

A = {"flight_id": "A", "lat_deg": 50.0, "lon_deg": 5.0, "alt_ft": 35000.0, "trk_deg": 0.0, "vs_fpm": 0.0, "gs_kt": 450.0}
B = {"flight_id": "B", "lat_deg": 50.1, "lon_deg": 5.15, "alt_ft": 35000.0, "trk_deg": 270.0, "vs_fpm": 0.0, "gs_kt": 450.0}
CONF = {"flight_id_1": "A", "flight_id_2": "B", "tcpa_s": 200.0, "dcpa_nm": 1.0, "conflict": True}


def _obs(t, a=A, b=B, conf=CONF):
    return Observation(pd.Timestamp("2024-01-01T00:00Z") + pd.Timedelta(seconds=t), t, pd.DataFrame([a, b]),
                       pd.DataFrame([conf]), {}, pd.DataFrame())


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("b", [B, {**B, "vs_fpm": 1500.0}, {**B, "alt_ft": 36000.0, "trk_deg": 180.0}])
def test_distributions_are_valid(style, b):
    atco = SyntheticAtco(style=style)
    atco.reset("s", 0)
    d = atco.distribution(CONF, A, b, now=100.0, shown_s=60.0)
    assert 0 < d["p_act"] < 1 and 0 < d["p_aircraft_1"] < 1
    probs = np.array([j[3] for j in d["joint"]])
    assert (probs > 0).all() and probs.sum() == pytest.approx(1.0)
    assert len({(j[0], j[1], j[2]) for j in d["joint"]}) == len(d["joint"])


def test_empirical_frequencies_match_the_stated_probabilities():
    draws, n = Counter(), 3000
    atco = SyntheticAtco(style="vectoring_first")
    for seed in range(n):
        atco.reset("s", seed)
        atco.pairs[("A", "B")] = _PairState(first_shown=0.0, last_shown=50.0)     # shown for 60 s at t = 60
        dec = atco.decide(_obs(60.0))
        rec = dec.truth[0]
        draws[(rec["aircraft"], rec["action_type"], rec["value"]) if rec["acted"] else None] += 1
    d = rec
    expected = {None: 1 - d["p_act"]}
    expected.update({(k, t, float(v)): d["p_act"] * q for k, t, v, q in d["joint"]})
    for key, p in expected.items():
        se = math.sqrt(p * (1 - p) / n)
        assert abs(draws[key] / n - p) < 4 * se + 1e-3, (key, draws[key] / n, p)
    assert set(draws) <= set(expected)


def test_timing_depends_on_how_long_the_conflict_was_shown():
    atco = SyntheticAtco(style="vectoring_first")
    atco.reset("s", 0)
    early = atco.distribution(CONF, A, B, now=0.0, shown_s=0.0)["p_act"]
    late = atco.distribution(CONF, A, B, now=0.0, shown_s=90.0)["p_act"]
    assert late > 3 * early


def test_avoids_the_aircraft_cleared_a_minute_ago_and_turns_away():
    atco = SyntheticAtco(style="vectoring_first")
    atco.reset("s", 0)
    atco.last_cleared["A"] = (50.0, "speed", "B")
    d = atco.distribution(CONF, A, B, now=80.0, shown_s=60.0)
    assert d["p_aircraft_1"] < 0.1
    # B is to the right of A (north-east of A flying north): A turns left more often than right
    atco.last_cleared.clear()
    joint = atco.distribution(CONF, A, B, now=80.0, shown_s=60.0)["joint"]
    left = sum(q for k, t, v, q in joint if k == 0 and t == "heading" and v < 0)
    right = sum(q for k, t, v, q in joint if k == 0 and t == "heading" and v > 0)
    assert left > 2 * right > 0          # multimodal: both directions have mass


def test_style_is_latent_per_session_and_registry_builds_controllers():
    styles = set()
    for seed in range(30):
        c = make_controller("atco")
        c.reset("s", seed)
        styles.add(c.style)
    assert styles == set(STYLES)
    assert make_controller("none").decide(_obs(0.0)).clearances == []


def test_records_the_distribution_under_every_style_and_the_resume_decisions():
    atco = SyntheticAtco(style="speed_first")
    atco.reset("s", 0)
    atco.pairs[("A", "B")] = _PairState(first_shown=0.0, last_shown=50.0)
    expected = {s: atco.distribution(CONF, A, B, now=60.0, shown_s=60.0, style=s) for s in STYLES}
    rec = atco.decide(_obs(60.0)).truth[0]
    assert set(rec["by_style"]) == set(STYLES) and rec["kind"] == "conflict"
    assert sum(d["prior"] for d in rec["by_style"].values()) == pytest.approx(1.0)
    own = rec["by_style"]["speed_first"]
    assert own["p_act"] == rec["p_act"] and own["joint"] == rec["joint"]
    for s in STYLES:                  # each entry is that style's exact distribution at the same state
        d = expected[s]
        assert rec["by_style"][s]["p_act"] == pytest.approx(d["p_act"]) and rec["by_style"][s]["joint"] == d["joint"]
    assert rec["by_style"]["vertical_first"]["p_act"] != rec["by_style"]["vectoring_first"]["p_act"]
    # a resume decision is recorded (acted or not) for an aircraft past its conflict, with the pair it was cleared against
    atco.last_cleared["A"] = (0.0, "heading", "B")
    far = {**B, "lat_deg": 49.0, "trk_deg": 180.0}                              # behind A, diverging
    recs = atco.decide(Observation(pd.Timestamp("2024-01-01T00:02Z"), 120.0, pd.DataFrame([A, far]),
                                   pd.DataFrame(), {}, pd.DataFrame())).truth
    assert [r["kind"] for r in recs] == ["resume"]
    r = recs[0]
    assert (r["flight_id_1"], r["flight_id_2"]) == ("A", "B") and r["p_act"] == atco.p.p_resume
    assert r["joint"] == [(0, "resume", 0.0, 1.0)] and r["acted"] == (r["action_type"] == "resume")


def test_a_conflict_hours_away_has_a_tiny_act_probability_and_no_overflow():
    """A time to CPA of hours (nearly parallel tracks) once overflowed math.exp in the act hazard and killed a run."""
    atco = SyntheticAtco()
    atco.reset("s", 0)
    d = atco.distribution({**CONF, "tcpa_s": 1e6}, A, B, now=100.0, shown_s=1e6)
    assert 0.0 <= d["p_act"] < 1e-300
