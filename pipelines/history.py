"""The controller's own history as features: what a controller's next decision depends on, made explicit.

A controller's decision about a conflict depends on its own earlier clearances (it does not clear an
aircraft it has just cleared, it leaves alone a conflict it has already acted on, and its habits show in
the kinds of clearance it gives). The ``clearances`` tensor holds the last M clearances in the airspace,
but a model has to learn from a few hundred decisions to relate their ages to the conflict's age and to
each aircraft of the pair; these features state those relations directly (``dataset.controller_history``).

Per history step (the step's time T) and aircraft of the pair, from actions issued strictly before T:
- ``since_clr_ac{1,2}_s``: seconds since the aircraft's last clearance (``history_cap_s`` if none or
  older), any kind, ``resume`` included;
- ``cleared_in_conflict_ac{1,2}``: 1 if the aircraft received a clearance since the conflict was first
  detected (the conflict is then being handled);
and per step, for the airspace (the controller's session: every action in the data set within
``clearance_horizon_s`` before T):
- ``session_{heading,altitude,speed,direct_to}``: how many clearances of each kind were given (the
  controller's style shows in these counts).
With ``dataset.pair_history`` (:data:`PAIR_HISTORY`), per step and aircraft of the pair:
- ``pair_clr_ac{1,2}_s``: seconds since the aircraft's last clearance given *against the other aircraft of the
  pair* (the action's ``against_flight_id``; ``history_cap_s`` if none or older), ``resume`` not counted: the
  controller acted on this very conflict, and how long ago. ``cleared_in_conflict`` cannot tell this from a
  clearance the aircraft got for another conflict while this one was shown; a controller leaves a conflict it has
  acted on alone for a while and then looks at it again, and resumes an aircraft it turned for this pair once the
  pair is past its closest approach (bench/RESULTS.md, "the controller's clearances against the pair"). A resume
  sends the aircraft back on its route and resolves nothing: when the conflict shows again after it, it is as
  unresolved as before, and a resume counted here read as "just acted on" (the policy then waited a recheck period
  after every resume of its own in the closed loop: bench/RESULTS.md, "why the policy gave fewer clearances than the
  expert in the closed loop"). The resume
  itself shows in ``since_clr`` and the ``clearances`` tensor.
Pure in the past like every feature (the leakage test covers them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from atc_il.schemas import to_ns

STYLE_TYPES = ("heading", "altitude", "speed", "direct_to")
HISTORY = ([("since_clr_ac1_s", "s", True), ("since_clr_ac2_s", "s", True),
            ("cleared_in_conflict_ac1", "1", False), ("cleared_in_conflict_ac2", "1", False)]
           + [(f"session_{t}", "1", True) for t in STYLE_TYPES])
PAIR_HISTORY = [("pair_clr_ac1_s", "s", True), ("pair_clr_ac2_s", "s", True)]      # dataset.pair_history


def last_before(actions: pd.DataFrame, flight_ids: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
    """Row (position in ``actions``) of each flight's last action strictly before ``t_ns`` (any shape, with
    ``flight_ids`` broadcast against it); -1 where there is none. ``actions`` needs ``flight_id`` and ``time``."""
    out = np.full(t_ns.shape, -1, dtype=np.int64)
    if actions.empty or t_ns.size == 0:
        return out
    at = to_ns(actions["time"])
    afid = actions["flight_id"].to_numpy(dtype=object)
    flights = pd.Index(pd.unique(afid))
    acode = flights.get_indexer(afid)
    order = np.lexsort((at, acode))                      # by flight, then time
    ac_s, at_s = acode[order], at[order]
    # dense time ranks make one sorted int64 key (flight, time) for actions and queries alike
    _, rank = np.unique(np.concatenate([at_s, t_ns.ravel()]), return_inverse=True)
    r = int(rank.max()) + 1
    akey = ac_s.astype(np.int64) * r + rank[:len(at_s)]
    qrank = rank[len(at_s):].reshape(t_ns.shape)
    ids = np.asarray(flight_ids, dtype=object)
    q = np.broadcast_to(flights.get_indexer(ids.ravel()).reshape(ids.shape), t_ns.shape)
    pos = np.searchsorted(akey, np.maximum(q, 0) * r + qrank, side="left") - 1   # strictly before
    ok = (q >= 0) & (pos >= 0)
    pos = np.maximum(pos, 0)
    ok &= ac_s[pos] == q
    out[ok] = order[pos][ok]
    return out


def last_before_pair(actions: pd.DataFrame, f1: np.ndarray, f2: np.ndarray, t_steps: np.ndarray) -> np.ndarray:
    """(2, N, H) :func:`last_before` rows for aircraft 1 and aircraft 2 of each sample at its steps ``t_steps``."""
    ids = np.stack([np.asarray(f1, dtype=object), np.asarray(f2, dtype=object)])[:, :, None]
    return last_before(actions, ids, np.broadcast_to(t_steps, (2, *t_steps.shape)))


def history_features(actions: pd.DataFrame, t_steps: np.ndarray, f1: np.ndarray, f2: np.ndarray,
                     first_ns: np.ndarray, horizon_s: float, cap_s: float) -> np.ndarray:
    """(N, H, len(HISTORY)) features at the steps ``t_steps`` (N, H; ns) of samples on pairs (f1, f2) whose
    conflict was first detected at ``first_ns`` (N,)."""
    n, h = t_steps.shape
    out = np.zeros((n, h, len(HISTORY)), dtype=np.float32)
    out[..., 0:2] = cap_s
    if n == 0 or actions.empty:
        return out
    at = to_ns(actions["time"])
    rows = last_before_pair(actions, f1, f2, t_steps)                   # (2, N, H): one search for both aircraft
    has = rows >= 0
    last = at[np.maximum(rows, 0)]
    out[..., 0:2] = np.moveaxis(np.minimum(np.where(has, (t_steps - last) / 1e9, cap_s), cap_s), 0, -1)
    out[..., 2:4] = np.moveaxis(has & (last >= first_ns[:, None]), 0, -1)
    kind = actions["action_type"].to_numpy(dtype=object)
    lo = t_steps - int(round(horizon_s * 1e9))
    for k, t in enumerate(STYLE_TYPES):
        tt = np.sort(at[kind == t])
        out[..., 4 + k] = np.searchsorted(tt, t_steps, side="left") - np.searchsorted(tt, lo, side="left")
    return out


def pair_history_features(actions: pd.DataFrame, t_steps: np.ndarray, f1: np.ndarray, f2: np.ndarray,
                          cap_s: float) -> np.ndarray:
    """(N, H, len(PAIR_HISTORY)) features at the steps ``t_steps`` (N, H; ns) of samples on pairs (f1, f2): seconds
    since each aircraft's last clearance strictly before the step given against the pair's other aircraft, ``resume``
    not counted, capped at ``cap_s`` (the cap where there is none, or the log names no ``against_flight_id``)."""
    n, h = t_steps.shape
    out = np.full((n, h, len(PAIR_HISTORY)), cap_s, dtype=np.float32)
    if n == 0 or actions.empty or "against_flight_id" not in actions:
        return out
    against = actions["against_flight_id"]
    linked = against.notna().to_numpy() & (against.astype(str) != "").to_numpy() \
        & (actions["action_type"].astype(str) != "resume").to_numpy()      # a resume resolves nothing
    if not linked.any():
        return out
    a = actions[linked]
    f1, f2 = np.asarray(f1, dtype=object).astype(str), np.asarray(f2, dtype=object).astype(str)
    # one integer key per (aircraft, the aircraft it was cleared against): last_before then searches these keys
    ids = pd.Index(pd.unique(np.concatenate([a["flight_id"].astype(str).to_numpy(), a["against_flight_id"].astype(str)
                                             .to_numpy(), f1, f2])))
    m = len(ids)
    keyed = pd.DataFrame({"flight_id": ids.get_indexer(a["flight_id"].astype(str)).astype(np.int64) * m
                          + ids.get_indexer(a["against_flight_id"].astype(str)), "time": a["time"].to_numpy()})
    c1, c2 = ids.get_indexer(f1).astype(np.int64), ids.get_indexer(f2).astype(np.int64)
    keys = np.stack([c1 * m + c2, c2 * m + c1])[:, :, None]                 # (2, N, 1): one search for both
    rows = last_before(keyed, np.broadcast_to(keys, (2, *t_steps.shape)), np.broadcast_to(t_steps, (2, *t_steps.shape)))
    since = (t_steps - to_ns(keyed["time"])[np.maximum(rows, 0)]) / 1e9
    out[:] = np.moveaxis(np.where(rows >= 0, np.minimum(since, cap_s), cap_s), 0, -1)
    return out
