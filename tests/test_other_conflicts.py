"""dataset.other_conflicts: per step, each aircraft's predicted conflicts with third aircraft, as the conflicts stage
finds them; off leaves the feature spec unchanged; the aircraft contrast reads them with each aircraft's state."""

import numpy as np

from atc_il.config import DatasetConfig
from pipelines.conflicts import detect
from pipelines.features import OTHER_CONFLICTS, TrackIndex, build_features, feature_spec
from tests.helpers import STEP, actions_frame, grid_tracks, pair_samples, spec_with_stats

# A and B head-on (CPA at 10:08 at the origin); C crosses A's track and meets A at 10:04 (CPA 42 NM from B's);
# FAR meets nobody
FLIGHTS = {"A": (0, -60, 0, 450, 35000), "B": (0, 60, 180, 450, 35000), "C": (30, -30, 270, 450, 35000),
           "FAR": (300, 0, 90, 400, 35000)}
CFG = DatasetConfig(history_steps=4, neighbours=2, recent_clearances=2, other_conflicts=True)


def _other(geometry: np.ndarray) -> np.ndarray:
    names = [f["name"] for f in feature_spec(CFG, STEP)["tensors"]["geometry"]["features"]]
    return geometry[..., [names.index(n) for n, _, _ in OTHER_CONFLICTS]]


def test_each_aircraft_counts_its_conflicts_with_third_aircraft_as_the_conflicts_stage_finds_them():
    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS)
    s = pair_samples(tracks, "2024-01-01T10:01:00Z", "2024-01-01T10:03:30Z")
    g = build_features(s, TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], CFG)["geometry"]
    other = _other(g[:, -1])
    assert (other[:, 0] == 1).all() and (other[:, 1] == 0).all()      # A has C besides B; B has nobody else
    # the same counts from the conflicts stage's table, at every decision step
    c = detect(tracks)
    c = c[c["conflict"].astype(bool)]
    for t, row in zip(s["time"], other):
        now = c[c["time"] == t]
        for k, fid in enumerate(("A", "B")):
            mine = now[(now["flight_id_1"] == fid) | (now["flight_id_2"] == fid)]
            third = mine[~mine[["flight_id_1", "flight_id_2"]].isin(["A", "B"]).all(axis=1)]
            assert row[k] == len(third), (t, fid)
    # padded history steps (before the tracks begin) are zero
    early = pair_samples(tracks, "2024-01-01T10:00:05Z", "2024-01-01T10:00:05Z")
    ge = build_features(early, TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], CFG)["geometry"][0]
    assert (_other(ge)[:2] == 0).all() and (_other(ge)[2:, 0] == 1).all()


def test_off_leaves_the_spec_unchanged_and_on_appends_two_features_before_valid():
    off = feature_spec(DatasetConfig(), STEP)["tensors"]["geometry"]["features"]
    on = feature_spec(DatasetConfig(other_conflicts=True), STEP)["tensors"]["geometry"]["features"]
    assert [f["name"] for f in on] == [f["name"] for f in off][:-1] + [n for n, _, _ in OTHER_CONFLICTS] + ["valid"]


def test_the_aircraft_contrast_reads_each_aircrafts_other_conflicts():
    from models.config import ModelConfig
    from models.policy import build_policy
    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS)
    feats = build_features(pair_samples(tracks, "2024-01-01T10:01:00Z", "2024-01-01T10:03:30Z"),
                           TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], CFG)
    spec = spec_with_stats(CFG, feats, STEP)
    pol = build_policy(ModelConfig(name="c", encoder={"name": "mlp", "hidden": 8, "aircraft_contrast": True},
                                   vae={"enabled": False}, head={"name": "mdn", "hidden": 8}), spec)
    names = [f["name"] for f in spec["tensors"]["geometry"]["features"]]
    own = [[names[i] for i in row] for row in pol.encoder.own_idx.tolist()]
    assert own == [["since_clr_ac1_s", "cleared_in_conflict_ac1", "other_conflicts_ac1"],
                   ["since_clr_ac2_s", "cleared_in_conflict_ac2", "other_conflicts_ac2"]]
