"""Where a policy acts less (or more) readily than the expert on the policy's own states, by the pair's history.

    atc-il simulate --expert dagger:MODEL_DIR --scenarios 12 --seed 1 --workers 2 --out ROLLOUTS
    .venv/bin/python bench/onpolicy.py ROLLOUTS [ROLLOUTS ...]

``dagger:URI`` with its default beta 0 lets the policy drive while the synthetic expert, run in shadow on the same
observations, records at every conflict it considers its own P(act) and the policy's (``learner_p_act``,
simulator_adapters/dagger.py). Offline calibration (on the expert's own states) does not show how the policy acts on
the states it drives into; this does. Each conflict record of the policy's steps is put in one class by the
clearances executed before it against the pair (the rollouts' clearance log, ``against_flight_id``):

- ``not asked``: the policy was not asked about the pair at that step (it cannot act there);
- ``fresh``: no clearance against the pair yet;
- ``< 90 s after a clearance`` / ``>= 90 s after a clearance``: the pair's last resolution clearance that long ago
  (the synthetic expert leaves a conflict it acted on alone for ``recheck_s`` = 90 s);
- ``< 90 s after a resume``: the pair's last clearance was a resume, less than 90 s ago (a resume longer ago
  counts as ``>= 90 s after a clearance``).

Per class: records, and the sums of the expert's and the policy's P(act) over them (expected acts per step: a
policy below the expert in a class under-acts there). Prints a markdown table per folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = ("not asked", "fresh", "< 90 s after a clearance", ">= 90 s after a clearance", "< 90 s after a resume")


def _pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One string per unordered pair of flight ids."""
    return np.where(a < b, a + "|" + b, b + "|" + a)


def classify(truth: pd.DataFrame, clearances: pd.DataFrame, recheck_s: float = 90.0) -> pd.Series:
    """The class of each conflict record (see the module doc)."""
    c = clearances[clearances["against_flight_id"].notna()] if "against_flight_id" in clearances else clearances[:0]
    ck = pd.DataFrame({"pair": _pair_key(c["flight_id"].astype(str).to_numpy(), c["against_flight_id"].astype(str).to_numpy()),
                       "t": pd.to_datetime(c["time"], utc=True).to_numpy(), "resume": (c["action_type"] == "resume").to_numpy()})
    tk = pd.DataFrame({"pair": _pair_key(truth["flight_id_1"].astype(str).to_numpy(), truth["flight_id_2"].astype(str).to_numpy()),
                       "t": pd.to_datetime(truth["time"], utc=True).to_numpy(), "row": np.arange(len(truth))})
    # the last clearance strictly before each record, of the same pair
    m = pd.merge_asof(tk.sort_values("t"), ck.assign(tc=ck["t"]).sort_values("t"), on="t", by="pair",
                      allow_exact_matches=False, direction="backward").sort_values("row")
    since = (m["t"] - m["tc"]).dt.total_seconds().to_numpy()
    resume = m["resume"].fillna(False).astype(bool).to_numpy()
    asked = truth["learner_asked"].astype(bool).to_numpy() if "learner_asked" in truth \
        else (truth["learner_p_act"].to_numpy(float) > 0)
    cls = np.select([~asked, np.isnan(since), resume & (since < recheck_s), resume, since < recheck_s],
                    ["not asked", "fresh", "< 90 s after a resume", ">= 90 s after a clearance", "< 90 s after a clearance"],
                    ">= 90 s after a clearance")
    return pd.Series(cls, index=truth.index)


def table(folder: Path) -> str:
    truth = pd.read_parquet(folder / "expert_truth.parquet")
    if "learner_p_act" not in truth:
        raise SystemExit(f"{folder}: no learner_p_act in expert_truth.parquet; simulate with --expert dagger:MODEL")
    t = truth[(truth["kind"] == "conflict") & (truth["in_control"] == "learner")]
    cl = pd.read_parquet(folder / "clearances.parquet")
    t = t.assign(cls=classify(t, cl))
    g = t.groupby("cls").agg(records=("p_act", "size"), expert=("p_act", "sum"), policy=("learner_p_act", "sum"))
    g = g.reindex([c for c in CLASSES if c in g.index])
    lines = [f"{folder}: {len(t)} conflict records on the policy's steps, {len(cl)} clearances executed", "",
             "| class | records | sum of the expert's P(act) | sum of the policy's P(act) | policy / expert |",
             "|---|---|---|---|---|"]
    for name, r in g.iterrows():
        lines.append(f"| {name} | {int(r.records)} | {r.expert:.1f} | {r.policy:.1f} | {r.policy / max(r.expert, 1e-9):.2f} |")
    tot = g.sum()
    lines.append(f"| all | {int(tot.records)} | {tot.expert:.1f} | {tot.policy:.1f} | {tot.policy / max(tot.expert, 1e-9):.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rollouts", type=Path, nargs="+", help="folders written by simulate --expert dagger:MODEL")
    args = ap.parse_args()
    for f in args.rollouts:
        if not (f / "expert_truth.parquet").exists():
            sys.exit(f"{f}: no expert_truth.parquet (simulate --expert dagger:MODEL writes it)")
        print(table(f) + "\n")


if __name__ == "__main__":
    main()
