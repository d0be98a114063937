"""The dataset builder: conflict episodes -> observation histories (the model input).

One sample per conflict episode and decision time (each grid step from first detection while the
conflict is shown: predicted within the look-ahead, or separation lost, past the closest approach too), its features built by :mod:`pipelines.features` (``pair``,
``neighbours``, ``geometry``, ``clearances``; described by :func:`pipelines.features.feature_spec`). Labels: the action taken at that step
on one of the two aircraft (or none), its type and signed value. Shards are parquet files with
fixed-size-list columns, loaded as tensors without a Python loop per sample (:func:`load_split`).
"""

from __future__ import annotations

import time as _time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from atc_il.config import DatasetConfig, PipelineConfig
from atc_il.errors import ConfigError, DataError
from atc_il.feature_spec import FeatureSpec, NormStats
from atc_il.io import atomic_write_text, mark_complete, read_table, write_json
from atc_il.progress import track
from atc_il.runs import StagedRun, checkpoint, inside, require_complete
from atc_il.schemas import (
    ACTION_LINK_SCHEMA,
    ACTION_SCHEMA,
    ACTION_TYPES,
    CONFLICT_SCHEMA,
    EPISODE_SCHEMA,
    TRACK_SCHEMA,
)
from pipelines.enroute import EnRouteFilter, filter_episodes
from pipelines.features import TrackIndex, build_features, feature_spec
from pipelines.shards import SPEC_FILE, RunningStats, write_shard

SPLITS = ("train", "val", "test")
META = ["sample_id", "episode_id", "time", "flight_id_1", "flight_id_2", "split_key"]
LABELS = ["label_act", "label_aircraft", "label_type", "label_value", "label_confidence"]


def select_samples(conflicts: pd.DataFrame, episodes: pd.DataFrame) -> pd.DataFrame:
    """Decision times: every grid step of an episode while the conflict is shown (``conflict``: predicted within the
    look-ahead, or separation lost). Past the closest approach too: a pair inside the protected zone and diverging is
    still a conflict on the display, and a controller acts there (the synthetic expert gave 3 % of its clearances
    there; a data set that stopped at the closest approach dropped them, and a policy never asked there never acts
    there in the closed loop). The closed loop, batch prediction and the service ask at the same steps."""
    c = conflicts[conflicts["episode_id"].notna() & conflicts["conflict"].astype(bool)]
    s = c[["episode_id", "time", "flight_id_1", "flight_id_2"]].merge(
        episodes[["episode_id", "first_detection"]], on="episode_id", how="inner", validate="many_to_one")
    s = s.sort_values(["time", "episode_id"], kind="stable").reset_index(drop=True)
    return s


def attach_labels(samples: pd.DataFrame, links: pd.DataFrame, idx: TrackIndex) -> tuple[pd.DataFrame, dict]:
    """The action taken at each decision step (the first linked action within [t, t + step)), or none."""
    n = len(samples)
    lab = pd.DataFrame({"label_act": np.zeros(n, np.int8), "label_aircraft": np.full(n, -1, np.int8),
                        "label_type": np.full(n, -1, np.int8), "label_value": np.full(n, np.nan, np.float32),
                        "label_confidence": np.zeros(n, np.float32)})
    stats = {"links": len(links), "labels": 0, "links_without_decision_step": 0, "label_collisions": 0}
    if links.empty or n == 0:
        return lab, stats
    lk = links.sort_values("time", kind="stable").copy()
    lk["tidx"] = idx.to_tidx(lk["time"])        # floor to the grid step the action falls in
    key_s = pd.MultiIndex.from_arrays([samples["episode_id"], idx.to_tidx(samples["time"])])
    key_l = pd.MultiIndex.from_arrays([lk["episode_id"], lk["tidx"]])
    first = ~key_l.duplicated(keep="first")
    stats["label_collisions"] = int((~first).sum())
    pos = key_s.get_indexer(key_l[first])
    hit = pos >= 0
    stats["links_without_decision_step"] = int((~hit).sum())
    chosen = lk[first][hit]
    pos = pos[hit]
    lab.loc[pos, "label_act"] = 1
    lab.loc[pos, "label_aircraft"] = chosen["aircraft"].to_numpy(np.int8) - 1
    lab.loc[pos, "label_type"] = pd.Categorical(chosen["action_type"], categories=ACTION_TYPES).codes.astype(np.int8)
    lab.loc[pos, "label_value"] = chosen["value"].to_numpy(np.float32)
    lab.loc[pos, "label_confidence"] = chosen["confidence"].to_numpy(np.float32)
    stats["labels"] = int(hit.sum())
    return lab, stats


def _with_resume_steps(samples: pd.DataFrame, actions: pd.DataFrame, idx: TrackIndex,
                       cfg: DatasetConfig) -> tuple[pd.DataFrame, int]:
    """The conflict samples followed by the resume steps of the executed clearances (``pipelines.resume``) that are
    not conflict samples already; their episode id names the pair and the clearance's time."""
    if not cfg.resume_samples:
        return samples, 0
    from pipelines.resume import outstanding, resume_steps
    steps = resume_steps(outstanding(actions), idx, cfg.resume_window_s)
    if steps.empty:
        return samples, 0
    have = pd.MultiIndex.from_arrays([samples["flight_id_1"], samples["flight_id_2"], idx.to_tidx(samples["time"])])
    new = ~pd.MultiIndex.from_arrays([steps["flight_id_1"], steps["flight_id_2"], idx.to_tidx(steps["time"])]).isin(have)
    steps = steps[new].drop(columns="resumer")
    steps.insert(0, "episode_id", "resume:" + steps["flight_id_1"] + "|" + steps["flight_id_2"] + "@"
                 + steps["first_detection"].dt.strftime("%Y%m%dT%H%M%S"))
    out = pd.concat([samples, steps], ignore_index=True)
    return out, len(steps)


def _attach_resume_labels(samples: pd.DataFrame, lab: pd.DataFrame, actions: pd.DataFrame, idx: TrackIndex,
                          n_resume: int) -> dict:
    """Label the resume steps (the last ``n_resume`` samples) with the resumes given there (in place)."""
    stats = {"resume_samples": n_resume, "resume_labels": 0, "resumes_without_decision_step": 0}
    if n_resume == 0 or actions is None or actions.empty or "against_flight_id" not in actions:
        return stats
    from pipelines.resume import ordered
    r = actions[(actions["action_type"] == "resume") & actions["against_flight_id"].notna()]
    if r.empty:
        return stats
    f1, f2, k = ordered(r["flight_id"].to_numpy(dtype=object), r["against_flight_id"].to_numpy(dtype=object))
    key_r = pd.MultiIndex.from_arrays([f1, f2, idx.to_tidx(r["time"])])
    first = ~key_r.duplicated()
    start = len(samples) - n_resume
    tail = samples.iloc[start:]
    key_s = pd.MultiIndex.from_arrays([tail["flight_id_1"], tail["flight_id_2"], idx.to_tidx(tail["time"])])
    pos = key_s.get_indexer(key_r[first])
    hit = pos >= 0
    rows = start + pos[hit]
    lab.loc[rows, "label_act"] = 1
    lab.loc[rows, "label_aircraft"] = k[first][hit]
    lab.loc[rows, "label_type"] = ACTION_TYPES.index("resume")
    lab.loc[rows, "label_value"] = 0.0
    lab.loc[rows, "label_confidence"] = r["confidence"].to_numpy(np.float32)[first][hit]
    stats.update(resume_labels=int(hit.sum()), resumes_without_decision_step=int((~hit).sum()))
    return stats


def assign_splits(keys: pd.Series, cfg: DatasetConfig) -> dict[str, str]:
    """Whole split units (days, hours or scenarios) to splits, seeded; never a random row split."""
    uniq = sorted(keys.dropna().unique())
    rng = np.random.default_rng(cfg.seed)
    order = [uniq[i] for i in rng.permutation(len(uniq))]
    n = len(order)
    n_test = int(round(n * cfg.test_fraction)) if n >= 3 else 0
    n_val = int(round(n * cfg.val_fraction)) if n >= 3 else 0
    if n >= 3:
        n_test, n_val = max(n_test, 1 if cfg.test_fraction > 0 else 0), max(n_val, 1 if cfg.val_fraction > 0 else 0)
    out = {k: "test" for k in order[:n_test]}
    out.update({k: "val" for k in order[n_test:n_test + n_val]})
    out.update({k: "train" for k in order[n_test + n_val:]})
    return out


def _split_keys(samples: pd.DataFrame, idx: TrackIndex, tracks: pd.DataFrame, how: str) -> pd.Series:
    if how == "day":
        return samples["first_detection"].dt.strftime("%Y-%m-%d")
    if how == "hour":   # whole hours of first detection: an episode's samples stay in one split
        return samples["first_detection"].dt.strftime("%Y-%m-%dT%H")
    # scenario: the `source` of aircraft 1 at first detection (the simulator writes one source per scenario)
    rows = idx.lookup(idx.flights.get_indexer(samples["flight_id_1"]), idx.to_tidx(samples["first_detection"]))
    src = tracks["source"].to_numpy()
    return pd.Series(np.where(rows >= 0, src[np.maximum(rows, 0)], None), index=samples.index)


def _read_plans(work: Path, path: str | Path | None) -> pd.DataFrame:
    from pipelines.actions import read_flight_plans
    p = Path(path) if path else work / "flight_plans.parquet"
    if not p.exists():
        raise DataError(f"dataset: goal conditioning (dataset.goal) needs flight plans, but {p} does not exist; "
                        "simulate with `atc-il simulate` (it writes flight_plans.parquet) or pass a flight-plan table")
    return read_flight_plans(p)


def build(work: str | Path, out: str | Path | None = None, config: PipelineConfig = PipelineConfig(),
          progress: bool | None = None, flight_plans: str | Path | None = None,
          labels: str | Path | None = None) -> dict:
    """Build observation-history shards from a workspace holding tracks/, conflicts/, episodes/,
    actions/ and action_links/ (the outputs of the earlier stages). Returns a summary.

    ``config.enroute`` (default: keep everything) leaves out the samples of episodes whose aircraft are not
    both at or above its floor and inside its airspace at first detection (``pipelines.enroute``), counted.

    With ``config.dataset.goal``, flight plans are read from ``flight_plans`` (a CSV or parquet table in the
    flight-plan contract) or else ``WORK/flight_plans.parquet`` (written by ``atc-il simulate``).

    ``labels``: a folder holding the ``action_links`` of another action log (an actions stage run over it)
    whose actions label the samples, while the features' clearance history stays the executed one in
    ``WORK/actions``: DAgger, where the expert labels the states a learner visits and the learner's own
    clearances are what was executed. Default: the executed actions label the samples."""
    t_start = _time.perf_counter()
    work = Path(work)
    final = Path(out) if out else work / "dataset"
    for name, stage in (("tracks", "ingest"), ("conflicts", "conflicts"), ("episodes", "conflicts"),
                        ("actions", "actions"), ("action_links", "actions")):
        require_complete(work / name, stage, work)
    if labels is not None:
        require_complete(Path(labels) / "action_links", "actions", Path(labels))
    if flight_plans is not None and inside(flight_plans, [final]) is not None:
        raise ConfigError(f"flight plans {flight_plans} lie inside the data set folder {final}, which a run replaces; "
                          f"copy them elsewhere first (nothing was changed)")
    flt = EnRouteFilter(config.enroute)          # an unusable airspace file is refused before anything is touched
    staged = StagedRun(final.parent, "dataset", [final.name])
    try:
        summary = _build(work, staged.path(final.name), config, progress, flight_plans, t_start, flt, labels)
        staged.commit({"work": str(work), "samples": summary["samples"], "spec_hash": summary["spec_hash"],
                       **{k: summary[k] for k in ("enroute", "episodes_left_out", "episodes_left_out_by_reason",
                                                  "samples_left_out")}})
    except BaseException:
        staged.abort()
        raise
    return summary


def _build(work: Path, out: Path, config: PipelineConfig, progress, flight_plans, t_start: float,
           flt: EnRouteFilter, labels: str | Path | None = None) -> dict:
    cfg = config.dataset
    tracks = read_table(work / "tracks", TRACK_SCHEMA)
    conflicts = read_table(work / "conflicts", CONFLICT_SCHEMA)
    episodes = read_table(work / "episodes", EPISODE_SCHEMA)
    actions = read_table(work / "actions", ACTION_SCHEMA) if (work / "actions").exists() else \
        ACTION_SCHEMA.empty_table().to_pandas()
    link_dir = Path(labels) / "action_links" if labels is not None else work / "action_links"
    links = read_table(link_dir, ACTION_LINK_SCHEMA) if link_dir.exists() else \
        ACTION_LINK_SCHEMA.empty_table().to_pandas()
    actions = actions.sort_values("time", kind="stable").reset_index(drop=True)
    plans = _read_plans(work, flight_plans) if cfg.goal else None
    idx = TrackIndex.build(tracks, config.resample.step_s)
    samples = select_samples(conflicts, episodes)
    episodes, left = filter_episodes(episodes, tracks, flt)
    n_samples = len(samples)
    if left["episodes_left_out"]:
        samples = samples[samples["episode_id"].isin(episodes["episode_id"])].reset_index(drop=True)
    left = {"enroute": flt.describe(), **left, "samples_left_out": n_samples - len(samples)}
    label_actions = actions
    if labels is not None and (Path(labels) / "actions").exists():
        label_actions = read_table(Path(labels) / "actions", ACTION_SCHEMA)
    samples, n_resume = _with_resume_steps(samples, actions, idx, cfg)
    labels_df, lstats = attach_labels(samples, links, idx)
    lstats.update(_attach_resume_labels(samples, labels_df, label_actions, idx, n_resume))
    labels = labels_df
    samples["split_key"] = _split_keys(samples, idx, tracks, cfg.split)
    split_of = assign_splits(samples["split_key"], cfg)
    split = samples["split_key"].map(split_of)
    samples["sample_id"] = samples["episode_id"] + "@" + samples["time"].dt.strftime("%Y%m%dT%H%M%S")

    spec = FeatureSpec.of(feature_spec(cfg, config.resample.step_s))
    stats = {name: RunningStats(len(t.features)) for name, t in spec.tensors.items()}
    counts = {s: 0 for s in SPLITS}
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    chunks = range(0, len(samples), cfg.shard_rows)
    # a shard is written (parquet encoding, compression, I/O: ~20 % of the stage, in pyarrow without the GIL)
    # while the next one's features are built; at most one chunk's shards are in flight (memory stays bounded)
    with ThreadPoolExecutor(1, thread_name_prefix="atc-il-shards") as writer:
        in_flight: list[Future] = []
        for i, start in enumerate(track(chunks, "dataset shards", show=progress)):
            part = samples.iloc[start:start + cfg.shard_rows]
            tensors = build_features(part, idx, actions, cfg, plans, config.conflicts)
            psplit = split.iloc[start:start + cfg.shard_rows].to_numpy()
            for f in in_flight:                  # the previous chunk's shards are written before this chunk's
                f.result()
            in_flight = []
            for s in SPLITS:
                sel = psplit == s
                if not sel.any():
                    continue
                if s == "train":
                    for name, arr in tensors.items():
                        stats[name].update(arr[sel])
                path = out / f"split={s}" / f"shard-{i:05d}.parquet"
                in_flight.append(writer.submit(write_shard, path, part.loc[sel, META].reset_index(drop=True),
                                               {k: v[sel] for k, v in tensors.items()},
                                               labels.iloc[start:start + cfg.shard_rows][sel].reset_index(drop=True)))
                files[s].append(path.name)
                counts[s] += int(sel.sum())
            checkpoint("dataset")
        for f in in_flight:
            f.result()
    for s in SPLITS:
        if files[s]:
            mark_complete(out / f"split={s}", files[s])
    spec.normalisation = {name: NormStats.model_validate(st.result([f.normalise for f in spec.tensors[name].features]))
                          for name, st in stats.items()}
    spec.normalisation_split = "train"
    per_split_keys: dict[str, list] = {s: [] for s in SPLITS}
    for k, s in split_of.items():
        per_split_keys[s].append(k)
    spec.splits = {s: {"unit": cfg.split, "keys": sorted(per_split_keys[s]), "samples": counts[s],
                       "episodes": int(samples.loc[split == s, "episode_id"].nunique())} for s in SPLITS}
    spec.spec_hash = spec.hash()
    atomic_write_text(spec.to_json(), out / SPEC_FILE)
    summary = {"samples": len(samples), **{f"{s} samples": counts[s] for s in SPLITS},
               "episodes": int(samples["episode_id"].nunique()), "positive samples": int(labels["label_act"].sum()),
               **lstats, **left, "seconds": round(_time.perf_counter() - t_start, 3), "spec_hash": spec.spec_hash}
    empty = [s for s in SPLITS if s != "train" and not counts[s] and getattr(cfg, f"{s}_fraction") > 0]
    if len(samples) and empty:
        units = samples["split_key"].nunique()
        hint = " (--split hour splits a day or two of tracks by whole hours)" if cfg.split == "day" else ""
        summary["split_warning"] = (f"the {' and '.join(empty)} split(s) are empty: the samples come from {units} "
                                    f"{cfg.split}(s) and a split takes whole {cfg.split}s, 3 at least; `atc-il "
                                    f"train` needs a val split{hint}")
    write_json(summary, out / "dataset_report.json")
    return summary
