"""The learned detector's model: training on a clearance log, and a safe file format of its own.

Training (:func:`train`): the candidates of :mod:`pipelines.detector` on the given tracks are labelled from a
clearance log -- a candidate is a true manoeuvre of a type when a clearance of that type on the same flight lies
within ``tol_s`` of its onset (heading for a track candidate, direct-to and resume as ``direct_to``) -- and one
``HistGradientBoostingClassifier`` per signal is fitted on the flights of one half (by a hash of the flight id)
and calibrated on the other: the probability that the candidate is a manoeuvre at all (1 - P(none)) is mapped
through isotonic regression fitted on the held-out half. Optional ``ignore`` intervals (flight_id, start, end)
hold candidates that are neither positives nor negatives (for instance a climb cleared before the track began).
When the candidates have flight plans a second classifier per signal is fitted the same way for flights without
one (:func:`noplan_training_set`: the plan's features withheld, a direct-to as a heading, the plan's own turns at
its waypoints kept as negatives), and :meth:`DetectorModel.classify` scores each candidate without a plan with it.

File format (``.npz``, read with ``allow_pickle=False``: arrays and a JSON header only, never code): per signal
the trees' node arrays (value, feature, threshold, missing-goes-left, left, right, is-leaf) concatenated with
per-tree offsets, the baseline, and the isotonic table (the plan-less classifiers under ``noplan-<signal>``); prediction walks the trees in numpy (identical to
scikit-learn's ``predict_proba``, checked by the tests).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from atc_il.errors import ConfigError, DataError
from pipelines.detector import CLASSES, FEATURES, ROUTE_FEATURES, SIGNALS

FORMAT = "atc-il/detector/1"
NODE_FIELDS = ("value", "feature_idx", "num_threshold", "missing_go_to_left", "left", "right", "is_leaf")
TYPE_OF_LOG = {"heading": "heading", "direct_to": "direct_to", "resume": "direct_to", "altitude": "altitude",
               "speed": "speed"}
ROUTE_TURN_MISS_NM = 1.0    # both lines through a waypoint, the one after along the next leg: the plan's own turn
SIGNAL_OF_TYPE = {"heading": "track", "direct_to": "track", "altitude": "altitude", "speed": "speed"}


def truth_types(log: pd.DataFrame) -> pd.Series:
    """The type a logged clearance shows as on a track: its own, with ``resume`` as a direct-to (the aircraft turns
    back onto its route) when the flight's previous clearance was a heading, and "ignore" otherwise (resuming after
    a level or speed clearance, or while on the route, may change nothing that a track shows)."""
    typ = log["action_type"].map(TYPE_OF_LOG).astype(object)
    order = log.sort_values("time", kind="stable")
    prev = order.groupby("flight_id")["action_type"].shift(1).reindex(log.index)
    resume = (log["action_type"] == "resume").to_numpy()
    typ[resume & (prev != "heading").to_numpy()] = "ignore"
    return typ


@dataclass
class SignalModel:
    classes: tuple[str, ...]
    baseline: np.ndarray                 # (n_outputs,)
    nodes: dict[str, np.ndarray]         # concatenated node arrays
    offsets: np.ndarray                  # (n_iter, n_outputs) start of each tree in ``nodes``
    iso_x: np.ndarray
    iso_y: np.ndarray
    threshold: float = 0.5               # on the calibrated confidence: the best F1 on held-out flights

    def raw(self, X: np.ndarray) -> np.ndarray:
        n_iter, k = self.offsets.shape
        out = np.tile(self.baseline, (len(X), 1)).astype(float)
        rows = np.arange(len(X))
        for it in range(n_iter):
            for c in range(k):
                node = np.full(len(X), self.offsets[it, c], dtype=np.int64)
                base = self.offsets[it, c]
                while True:
                    leaf = self.nodes["is_leaf"][node].astype(bool)
                    if leaf.all():
                        break
                    f = self.nodes["feature_idx"][node]
                    x = X[rows, np.clip(f, 0, X.shape[1] - 1)]
                    go_left = np.where(np.isnan(x), self.nodes["missing_go_to_left"][node].astype(bool),
                                       x <= self.nodes["num_threshold"][node])
                    nxt = base + np.where(go_left, self.nodes["left"][node], self.nodes["right"][node]).astype(np.int64)
                    node = np.where(leaf, node, nxt)
                out[:, c] += self.nodes["value"][node]
        return out

    def proba(self, X: np.ndarray) -> np.ndarray:
        r = self.raw(X)
        if r.shape[1] == 1:
            p1 = 1.0 / (1.0 + np.exp(-r[:, 0]))
            return np.c_[1 - p1, p1]
        e = np.exp(r - r.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def calibrate(self, p_any: np.ndarray) -> np.ndarray:
        if len(self.iso_x) == 0:
            return p_any
        return np.interp(p_any, self.iso_x, self.iso_y)


@dataclass
class DetectorModel:
    signals: dict[str, SignalModel]
    meta: dict = field(default_factory=dict)
    # per signal, the model of candidates without a flight plan (every route feature missing): trained on plan-less
    # copies of the training candidates, the plan's own turns at its waypoints among its negatives; empty in a model
    # from before it (the one model then serves both)
    noplan: dict[str, SignalModel] = field(default_factory=dict)

    @property
    def thresholds(self) -> dict[str, float]:
        """The model's own threshold per signal (candidates with a flight plan)."""
        return {s: m.threshold for s, m in self.signals.items()}

    @property
    def thresholds_noplan(self) -> dict[str, float]:
        """The same for candidates without a flight plan."""
        return {s: self.noplan.get(s, m).threshold for s, m in self.signals.items()}

    def thresholds_for(self, cand: pd.DataFrame) -> np.ndarray:
        """Each candidate's own threshold: its signal's, that of the plan-less model where it has no plan."""
        sig = cand["signal"]
        return np.where(no_plan(cand), sig.map(self.thresholds_noplan), sig.map(self.thresholds)).astype(float)

    def classify(self, cand: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(type or "none", calibrated confidence that it is a manoeuvre) per candidate row; a candidate without a
        flight plan is scored by the plan-less model of its signal when the model has one."""
        kind = np.full(len(cand), "none", dtype=object)
        conf = np.zeros(len(cand))
        nop = no_plan(cand) if len(cand) else np.zeros(0, bool)
        parts = [(s, m, cand["signal"].to_numpy() == s) for s, m in self.signals.items()]
        if self.noplan:
            parts = [(s, self.noplan.get(s, m) if plan_less else m, sel & (nop if plan_less else ~nop))
                     for s, m, sel in parts for plan_less in (False, True)]
        for _, m, sel in parts:
            idx = np.flatnonzero(sel)
            if not len(idx):
                continue
            X = np.array(cand.iloc[idx][list(FEATURES)].to_numpy(float), dtype=float)     # a writable copy
            p = m.proba(X)
            c = m.calibrate(1.0 - p[:, 0])
            best = 1 + np.argmax(p[:, 1:], axis=1)
            kind[idx] = np.array(m.classes, dtype=object)[best]
            conf[idx] = c
        return kind, conf

    # ------------------------------------------------------------ file format
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        header = {"format": FORMAT, "features": list(FEATURES), "meta": self.meta, "signals": {}}
        if self.noplan:
            header["noplan"] = {}
        for key, m, part in [(s, m, "signals") for s, m in self.signals.items()] + \
                [(f"noplan-{s}", m, "noplan") for s, m in self.noplan.items()]:
            s = key
            header[part][key.removeprefix("noplan-")] = {"classes": list(m.classes), "threshold": float(m.threshold)}
            arrays[f"{s}/baseline"] = m.baseline.astype(float)
            arrays[f"{s}/offsets"] = m.offsets.astype(np.int64)
            arrays[f"{s}/iso_x"] = m.iso_x.astype(float)
            arrays[f"{s}/iso_y"] = m.iso_y.astype(float)
            for k in NODE_FIELDS:
                arrays[f"{s}/{k}"] = m.nodes[k]
        arrays["header"] = np.array(json.dumps(header))
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> DetectorModel:
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                if header.get("format") != FORMAT:
                    raise ConfigError(f"{path}: not an atc-il detector model (format {header.get('format')!r}, "
                                      f"expected {FORMAT!r})")
                if header["features"] != list(FEATURES):
                    raise ConfigError(f"{path}: the model was trained on other features than this version computes; "
                                      "retrain it with `atc-il train-detector`")
                parts: dict[str, dict[str, SignalModel]] = {"signals": {}, "noplan": {}}
                for part, prefix in (("signals", ""), ("noplan", "noplan-")):
                    for sig, info in header.get(part, {}).items():
                        s = prefix + sig
                        parts[part][sig] = SignalModel(
                            tuple(info["classes"]), z[f"{s}/baseline"], {k: z[f"{s}/{k}"] for k in NODE_FIELDS},
                            z[f"{s}/offsets"], z[f"{s}/iso_x"], z[f"{s}/iso_y"], float(info.get("threshold", 0.5)))
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{path}: cannot read the detector model: {exc}") from None
        return cls(parts["signals"], header.get("meta", {}), parts["noplan"])


def default_path():
    return resources.files("pipelines") / "data" / "detector.npz"


def load_default() -> DetectorModel:
    ref = default_path()
    with resources.as_file(ref) as p:
        if not Path(p).exists():
            raise ConfigError("the shipped detector model is missing (pipelines/data/detector.npz); train one with "
                              "`atc-il train-detector` and pass it with --detector-model")
        return DetectorModel.load(p)


# ---------------------------------------------------------------- training
def _from_sklearn(clf, iso_x: np.ndarray, iso_y: np.ndarray, classes) -> SignalModel:
    preds = clf._predictors
    parts, offsets, start = [], np.zeros((len(preds), len(preds[0])), np.int64), 0
    for it, trees in enumerate(preds):
        for c, tree in enumerate(trees):
            offsets[it, c] = start
            parts.append(tree.nodes)
            start += len(tree.nodes)
    nodes = np.concatenate(parts)
    small = {"feature_idx": np.int16, "left": np.uint16, "right": np.uint16, "missing_go_to_left": np.uint8,
             "is_leaf": np.uint8}
    arrs = {k: np.ascontiguousarray(nodes[k]).astype(small.get(k, nodes[k].dtype)) for k in NODE_FIELDS}
    return SignalModel(tuple(classes), np.asarray(clf._baseline_prediction, float).ravel(), arrs, offsets,
                       np.asarray(iso_x, float), np.asarray(iso_y, float))


def label_candidates(cand: pd.DataFrame, log: pd.DataFrame, tol_s: float,
                     ignore: pd.DataFrame | None = None) -> pd.Series:
    """Per candidate: the type of the nearest clearance of its signal on its flight within ``tol_s`` of its onset,
    "none" when there is none, "ignore" inside an ``ignore`` interval (flight_id, start, end[, signal])."""
    lab = pd.Series("none", index=cand.index, dtype=object)
    if len(log):
        lg = log[["flight_id", "time", "action_type"]].reset_index(drop=True).rename_axis("index_log").reset_index()
        lg["type"] = truth_types(lg)
        lg = lg[lg["type"].notna()]
        lg = pd.concat([lg[lg["type"] != "ignore"].assign(signal=lambda d: d["type"].map(SIGNAL_OF_TYPE))]
                       + [lg[lg["type"] == "ignore"].assign(signal=s) for s in SIGNALS], ignore_index=True)
        m = cand.reset_index()[["index", "flight_id", "signal", "time"]].merge(lg, on=["flight_id", "signal"],
                                                                             suffixes=("", "_log"))
        m["d"] = (m["time"] - m["time_log"]).abs().dt.total_seconds()
        m = m[m["d"] <= tol_s].sort_values("d", kind="stable")
        used_c, used_t = set(), set()
        for ci, ti, ty in zip(m["index"], m["index_log"], m["type"]):     # one-to-one, nearest first
            if ty == "ignore":
                continue
            if ci not in used_c and ti not in used_t:
                used_c.add(ci)
                used_t.add(ti)
                lab.loc[ci] = ty
        near_ignored = set(m.loc[m["type"] == "ignore", "index"]) - used_c
        lab.loc[sorted(near_ignored)] = "ignore"
    if ignore is not None and len(ignore):
        ig = cand.reset_index()[["index", "flight_id", "signal", "time"]].merge(ignore, on="flight_id",
                                                                              suffixes=("", "_ignore"))
        inside = (ig["time"] >= ig["start"]) & (ig["time"] <= ig["end"])
        if "signal_ignore" in ig:
            inside &= ig["signal_ignore"].isna() | (ig["signal_ignore"] == ig["signal"])
        hit = ig.loc[inside, "index"].to_numpy()
        hit = [h for h in hit if lab.loc[h] == "none"]
        lab.loc[hit] = "ignore"
    return lab


PLAN_FEATURES = ROUTE_FEATURES
NOPLAN_CLASSES = {**CLASSES, "track": ("none", "heading")}     # without the plan a direct-to is a heading change


def no_plan(cand: pd.DataFrame) -> np.ndarray:
    """Candidates of a flight without a flight plan (no waypoint to measure against: every route feature missing)."""
    return cand["wp_dist_nm"].isna().to_numpy()


def noplan_training_set(cand: pd.DataFrame, labels: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """The training set of the plan-less model: every candidate with its plan's features withheld, a direct-to
    labelled a heading, and every other label kept -- the plan's own turns at its waypoints among them as "none":
    without the plan the model must tell them from a vector by what the track alone shows (the cadence of the
    turns, a turn back), or say by its calibrated confidence that it cannot."""
    c = cand.copy()
    c.loc[:, list(PLAN_FEATURES)] = np.nan
    return c, labels.replace({"direct_to": "heading"})


def without_plans(cand: pd.DataFrame, labels: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """Copies of the candidates as if no flight plan were given (plan features missing), so that one model serves
    flights with and without a plan: a direct-to is then a heading change, and a turn onto the plan's next leg
    near a waypoint (a route turn, not a clearance, but indistinguishable without the plan) is left out."""
    route_turn = ((cand["signal"] == "track") & (labels == "none")
                  & (cand["route_turn_miss_nm"] < ROUTE_TURN_MISS_NM)).to_numpy()
    has_plan = cand["wp_dist_nm"].notna().to_numpy()
    keep = has_plan & ~route_turn
    c = cand[keep].copy()
    c.loc[:, list(PLAN_FEATURES)] = np.nan
    lab = labels[keep].replace({"direct_to": "heading"})
    return c, lab


def _best_f1_threshold(conf: np.ndarray, positive: np.ndarray) -> float:
    """The threshold on the calibrated confidence (0.2..0.8) with the best F1 on held-out candidates."""
    best, best_f1 = 0.5, -1.0
    for thr in np.round(np.arange(0.2, 0.801, 0.05), 2):
        pred = conf >= thr
        tp = float(np.sum(pred & positive))
        f1 = 2 * tp / max(1.0, float(pred.sum() + positive.sum()))
        if f1 > best_f1 + 1e-9:
            best, best_f1 = float(thr), f1
    return best


def _split(fids: pd.Series) -> np.ndarray:
    return np.array([int(hashlib.sha1(str(f).encode()).hexdigest()[:8], 16) % 2 == 0 for f in fids])


def _fit_signal(cand: pd.DataFrame, labels: pd.Series, s: str, classes: tuple[str, ...], seed: int, max_iter: int,
                report: dict, tag: str = "") -> SignalModel:
    """One signal's classifier, fitted on one half of the flights and calibrated (isotonic, threshold) on the other."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.isotonic import IsotonicRegression

    idx = np.flatnonzero(cand["signal"].to_numpy() == s)
    y = labels.iloc[idx].map({c: i for i, c in enumerate(classes)}).fillna(0).astype(int).to_numpy()
    report["candidates"][tag + s] = int(len(idx))
    report["positives"][tag + s] = {c: int((y == i).sum()) for i, c in enumerate(classes) if i}
    if len(idx) < 20 or len(np.unique(y)) < 2:
        raise DataError(f"too few labelled {s} candidates to train on ({len(idx)}, classes {sorted(set(y))}); "
                        "give more tracks and clearances")
    X = np.array(cand.iloc[idx][list(FEATURES)].to_numpy(float), dtype=float)     # a writable copy
    fit = _split(cand.iloc[idx]["flight_id"])
    if fit.all() or not fit.any():
        fit = np.arange(len(idx)) % 2 == 0
    X[:, np.isnan(X[fit]).all(axis=0)] = 0.0     # a feature never known (e.g. no flight plans): constant, unused
    present = np.unique(y[fit])
    clf = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=0.08, max_leaf_nodes=15,
                                         min_samples_leaf=10, l2_regularization=1.0, random_state=seed)
    clf.fit(X[fit], y[fit])
    if len(present) < len(classes):     # a class absent from the fitting half: no probability for it
        raise DataError(f"{s}: class(es) {[classes[i] for i in range(len(classes)) if i not in present]} absent "
                        "from the fitting half; give more clearances of that type")
    p_any = 1.0 - clf.predict_proba(X[~fit])[:, 0]
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p_any, (y[~fit] > 0).astype(float))
    m = _from_sklearn(clf, iso.X_thresholds_, iso.y_thresholds_, classes)
    m.threshold = _best_f1_threshold(m.calibrate(p_any), y[~fit] > 0)
    report.setdefault("thresholds", {})[tag + s] = m.threshold
    report.setdefault("sklearn_check", {})[tag + s] = float(np.max(np.abs(m.proba(X[~fit][:200])
                                                                          - clf.predict_proba(X[~fit][:200]))))
    return m


def train(cand: pd.DataFrame, labels: pd.Series, seed: int = 0, max_iter: int = 200,
          meta: dict | None = None) -> tuple[DetectorModel, dict]:
    """Fit and calibrate the per-signal classifiers on labelled candidates; returns (model, report).

    Two models per signal when the candidates have flight plans: one for candidates with a plan (trained on them
    and on plan-less copies without the plan's own turns, as before the second existed), and one for candidates
    without (:func:`noplan_training_set`: every candidate, plan features withheld, route turns as negatives)."""
    keep = labels != "ignore"
    cand, labels = cand[keep], labels[keep]
    extra_c, extra_l = without_plans(cand, labels)
    both_c = pd.concat([cand, extra_c], ignore_index=True)
    both_l = pd.concat([labels, extra_l], ignore_index=True)
    report: dict = {"candidates": {}, "positives": {}}
    signals = {s: _fit_signal(both_c, both_l, s, CLASSES[s], seed, max_iter, report) for s in SIGNALS}
    noplan = {}
    if (~no_plan(cand)).any():
        nc, nl = noplan_training_set(cand, labels)
        noplan = {s: _fit_signal(nc, nl, s, NOPLAN_CLASSES[s], seed, max_iter, report, "noplan-") for s in SIGNALS}
    import sklearn
    model = DetectorModel(signals, {**(meta or {}), "sklearn": sklearn.__version__, **report}, noplan)
    return model, report
