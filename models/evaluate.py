"""Offline evaluation of a policy on a data-set split, against the demonstrations and, on synthetic data,
against the Bayes ceiling of the expert that made them.

Metrics (``evaluate``): act-or-not accuracy and F1; on the samples where the controller acted, aircraft
and type accuracy of the policy's most probable aircraft and type given that it acts (the type marginal over
the aircraft, as the ceiling's accuracies are defined; ``decision_*_accuracy``: of the most likely decision,
whose type is the most likely given its aircraft), type macro-F1, value error per type (mean absolute error in
degrees, feet, knots of the most likely value given the right type), from the most likely decision *given that
it acts*; timing error (per episode with an action: seconds between the first step the policy's most likely
decision is to act and the demonstrated action; episodes where it never acts count as misses); negative
log-likelihood per sample (nats; the value's density in its type's unit) and its discrete part (act,
aircraft, type); mode coverage (the share of the expert's modes that receive real probability mass,
synthetic data, from ``mode_samples`` draws given acting per acting sample; ``mode_coverage_ceiling``: the
achievable ceiling's own, by the same estimator); value NLL per type (``value_nll_<type>``, nats in the type's unit, on the samples of that
type); calibration of P(act) (``act_ece``, expected calibration error over equal-mass bins, and
``act_reliability``, the curve); when the controller first acts in a conflict, demonstrated against the
policy's distribution (``acting_times``); the total-variation distance between sampled and demonstrated decisions over the
acting samples (aircraft x type x value cells of the mode tolerance); what the VAE's latent captures
(cross-validated accuracy of the true controller style from E[z | history], synthetic data); for a cvae
head with a discrete code (``head.latent = discrete``), whether the code aligns with the synthetic
controller's style (normalised mutual information, sklearn's arithmetic normalisation, between the
scenario's true style and the most probable code: ``code_style_nmi_posterior`` from the exact posterior
given the demonstrated decision, over the samples with a valued action; ``code_style_nmi_prior`` from the
learned prior given the history, over all samples; with ``code_style_samples_*`` the sample counts and
``code_style_codes_used_*`` how many distinct codes were chosen; synthetic data, absent for other heads;
None when the split holds a single style; a policy with a session style code (``style.enabled``) is read the
same way, its code posterior given the decision and its q(c | session)).

Ceilings (synthetic data, models/ceiling.py): ``ceiling`` is the achievable one (the style marginalised with its
posterior given the session's earlier decisions; the oracle for truth tables without per-style records,
``ceiling_kind`` says which), ``oracle_ceiling`` the expert's own probabilities; ``gap`` is to the former,
``gap_oracle`` to the latter, and ``ceiling_difference_discrete_nll`` what no model can win back.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from atc_il.io import write_json
from atc_il.schemas import ACTION_TYPES
from models.ceiling import (
    MODE_TOLERANCE,
    ceiling_metrics,
    expert_distributions,
    mode_coverage,
    sample_modes,
    truth_and_achievable,
)
from models.data import load_data
from models.interface import N_TYPES, Decisions, Observations, PolicyInterface
from pipelines.shards import load_split

META = ["time", "flight_id_1", "flight_id_2", "episode_id", "split_key"]


def _f1(y: np.ndarray, p: np.ndarray, positive) -> float:
    tp = np.sum((p == positive) & (y == positive))
    fp = np.sum((p == positive) & (y != positive))
    fn = np.sum((p != positive) & (y == positive))
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else float("nan")


@torch.no_grad()
def _run(policy: PolicyInterface, obs: Observations, n_samples: int, batch: int, seed: int) -> dict:
    """Most likely decisions (unconditional and given acting), discrete and total log-likelihoods, samples
    given acting, and E[z] when the policy has a latent; in batches."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: dict[str, list] = {k: [] for k in ("act", "p_act", "aircraft", "type", "value", "lp", "lp_disc", "s_ac", "s_ty", "s_val", "z",
                                            "p_aircraft", "p_type")}
    n = obs.batch_size
    for i in range(0, n, batch):
        o = Observations(*(getattr(obs, k)[i:i + batch] for k in ("pair", "neighbours", "geometry", "clearances")))
        ctx = policy.encode(o)
        pred = policy.predict(ctx)
        cond = policy.predict_action(ctx)
        out["act"].append(pred.act.cpu())
        out["p_act"].append(policy.p_act(ctx).cpu())
        out["aircraft"].append(cond.aircraft.cpu())
        out["type"].append(cond.type.cpu())
        out["value"].append(cond.value.cpu())
        p_ac, p_ty = action_marginals(policy, ctx, o.batch_size)
        out["p_aircraft"].append(p_ac)
        out["p_type"].append(p_ty)
        s = policy.sample_actions(ctx, n_samples, gen)
        out["s_ac"].append(s.aircraft.cpu())
        out["s_ty"].append(s.type.cpu())
        out["s_val"].append(s.value.cpu())
        if policy.has_latent:
            out["z"].append(policy.posterior_mean(o).cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items() if v}


@torch.no_grad()
def action_marginals(policy: PolicyInterface, ctx, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's p(aircraft | act) (b, 2) and p(type | act) (b, n_types), the latter marginal over the
    aircraft: the counterparts of the ceiling's distributions, whose accuracies are those of their argmax
    (the ceiling's are E[max p]). By enumeration of the log-likelihood terms (exact for every head)."""
    lp = torch.empty(b, 2, N_TYPES)
    one, zero = torch.ones(b, dtype=torch.long), torch.zeros(b)
    for a in (0, 1):
        for t in range(N_TYPES):
            terms = policy.log_prob_terms(ctx, Decisions(one, one * a, one * t, zero))
            lp[:, a, t] = (terms["aircraft"] + terms["type"]).float().cpu()
    p = lp.exp()
    return p.sum(2), p.sum(1)


@torch.no_grad()
def _log_probs(policy: PolicyInterface, obs: Observations, dec: Decisions,
               batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Per sample: total and discrete log-likelihoods, the value term alone, and the discrete terms."""
    lp, disc, val = [], [], []
    terms: dict[str, list] = {"act": [], "aircraft": [], "type": []}
    for i in range(0, obs.batch_size, batch):
        sl = slice(i, i + batch)
        o = Observations(*(getattr(obs, k)[sl] for k in ("pair", "neighbours", "geometry", "clearances")))
        d = Decisions(dec.act[sl], dec.aircraft[sl], dec.type[sl], dec.value[sl])
        t = policy.log_prob_terms(o, d)
        disc.append((t["act"] + t["aircraft"] + t["type"]).cpu())
        lp.append((t["act"] + t["aircraft"] + t["type"] + t["value"]).cpu())
        val.append(t["value"].cpu())
        for k, v in terms.items():
            v.append(t[k].cpu())
    return (torch.cat(lp).numpy(), torch.cat(disc).numpy(), torch.cat(val).numpy(),
            {k: torch.cat(v).numpy() for k, v in terms.items()})


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error of P(act) over equal-mass bins (P(act) is small most of the time: equal-width
    bins would leave the upper ones nearly empty), and the reliability curve: per bin the mean predicted
    probability, the observed frequency and the count."""
    order = np.argsort(p, kind="stable")
    curve, ece = [], 0.0
    for part in np.array_split(order, min(bins, max(len(p), 1))):
        if not len(part):
            continue
        mp, fy = float(p[part].mean()), float(y[part].mean())
        curve.append({"p": mp, "freq": fy, "n": int(len(part))})
        ece += len(part) / len(p) * abs(mp - fy)
    return float(ece), curve


def acting_times(meta: pd.DataFrame, y_act: np.ndarray, p_act: np.ndarray, first_s: np.ndarray) -> dict:
    """When the controller first acts in a conflict, demonstrated against the policy's distribution (open loop,
    on the demonstrated histories): per episode, the policy's probability of acting first at each step is
    ``p_k prod_{j<k} (1 - p_j)``. Times in seconds since the conflict's first detection. Returns the share of
    episodes acted on (demonstrated, expected under the policy), the mean first-action time of both (given
    an action), and the 1-Wasserstein distance between the two first-action time distributions."""
    df = pd.DataFrame({"ep": meta["episode_id"].to_numpy(), "t": meta["time"].to_numpy() / 1e9, "y": y_act,
                       "p": np.clip(p_act, 0, 1), "s": first_s}).sort_values(["ep", "t"], kind="stable")
    demo_t, model_t, model_w, acted, p_any = [], [], [], 0, []
    for _, g in df.groupby("ep", sort=False):
        p = g["p"].to_numpy()
        surv = np.concatenate([[1.0], np.cumprod(1 - p)[:-1]])
        w = p * surv
        p_any.append(w.sum())
        model_t.append(g["s"].to_numpy())
        model_w.append(w)
        if g["y"].any():
            acted += 1
            demo_t.append(float(g.loc[g["y"] == 1, "s"].iloc[0]))
    n_ep = max(len(p_any), 1)
    out = {"episodes": len(p_any), "acted_share_demonstrated": acted / n_ep,
           "acted_share_model": float(np.sum(p_any) / n_ep)}
    if demo_t and model_t:
        mt, mw = np.concatenate(model_t), np.concatenate(model_w)
        if mw.sum() > 0:
            from scipy.stats import wasserstein_distance
            out["first_action_s_demonstrated"] = float(np.mean(demo_t))
            out["first_action_s_model"] = float(np.average(mt, weights=mw))
            out["first_action_wasserstein_s"] = float(wasserstein_distance(demo_t, mt, v_weights=mw))
    return out


def _cells(ac, ty, val) -> list:
    tol = np.array([MODE_TOLERANCE[t] for t in ACTION_TYPES])
    ty_c = np.clip(ty, 0, len(ACTION_TYPES) - 1)
    b = np.where(np.isfinite(val), np.round(val / (2 * tol[ty_c])), 0).astype(int)
    return list(zip(ac.tolist(), ty.tolist(), b.tolist()))


def _tv(a: list, b: list) -> float:
    ca, cb = Counter(a), Counter(b)
    na, nb = max(len(a), 1), max(len(b), 1)
    return 0.5 * sum(abs(ca[k] / na - cb[k] / nb) for k in set(ca) | set(cb))


def _timing(meta: pd.DataFrame, y_act: np.ndarray, p_act: np.ndarray) -> tuple[float, float]:
    """Per episode with a demonstrated action: |predicted - demonstrated| time of the first action, the
    prediction being the first step with P(act) >= 0.5, else the step where P(act) is highest (a miss)."""
    df = pd.DataFrame({"ep": meta["episode_id"], "t": meta["time"] / 1e9, "y": y_act, "p": p_act})
    errs, missed = [], 0
    for _, g in df.groupby("ep", sort=False):
        if not g["y"].any():
            continue
        t_true = g.loc[g["y"] == 1, "t"].min()
        over = g["p"] >= 0.5
        if over.any():
            t_pred = g.loc[over, "t"].min()
        else:
            missed += 1
            t_pred = g.loc[g["p"].idxmax(), "t"]
        errs.append(abs(t_pred - t_true))
    return (float(np.mean(errs)) if errs else float("nan")), (missed / len(errs) if errs else float("nan"))


def evaluate(policy: PolicyInterface, dataset_dir: str | Path, split: str = "test", truth: str | Path | None = None,
             n_samples: int = 64, batch: int = 1024, seed: int = 0, out: str | Path | None = None,
             title: str = "evaluation", mode_samples: int = 512) -> dict:
    """Metrics of ``policy`` on a split (see the module docstring); with ``out``, also metrics.json,
    metrics.md and plots (values.png: demonstrated vs sampled values per type, given acting).
    ``n_samples``: decisions drawn per sample for the sampled metrics; ``mode_samples``: drawn given acting per
    acting sample for mode coverage alone (a mode of probability 0.1 is covered at 2.5 % of the draws: with
    a few dozen draws the estimate is mostly sampling noise, which the ceiling's own coverage would show)."""
    dataset_dir = Path(dataset_dir)
    data = load_data(dataset_dir, split, expect=policy.spec)
    meta = pd.DataFrame(load_split(dataset_dir, split, as_torch=False, columns=META))
    obs, dec = data.batch()
    policy.eval()
    r = _run(policy, obs, n_samples, batch, seed)
    lp, lp_disc, lp_val, lp_terms = _log_probs(policy, obs, dec, batch)
    y_act, y_ac, y_ty, y_val = (t.numpy() for t in (dec.act, dec.aircraft, dec.type, dec.value))
    pos = y_act == 1
    m: dict = {"samples": int(len(y_act)), "acting_samples": int(pos.sum()),
               "act_accuracy": float(np.mean(r["act"] == y_act)), "act_f1": _f1(y_act, r["act"], 1),
               "nll": float(-lp.mean()), "nll_discrete": float(-lp_disc.mean()),
               "act_nll": float(-lp_terms["act"].mean())}
    if pos.any():
        # the discrete NLL's terms given acting, per acting sample (as the ceiling's are)
        m["aircraft_nll_given_act"] = float(-lp_terms["aircraft"][pos].mean())
        m["type_nll_given_act"] = float(-lp_terms["type"][pos].mean())
        # accuracies of the most probable aircraft and type given acting (type marginal over the aircraft), as the
        # ceiling's are defined; decision_*: of the most likely decision's (the type given its aircraft)
        m["aircraft_accuracy"] = float(np.mean(r["p_aircraft"][pos].argmax(1) == y_ac[pos]))
        m["type_accuracy"] = float(np.mean(r["p_type"][pos].argmax(1) == y_ty[pos]))
        m["decision_aircraft_accuracy"] = float(np.mean(r["aircraft"][pos] == y_ac[pos]))
        m["decision_type_accuracy"] = float(np.mean(r["type"][pos] == y_ty[pos]))
        present = sorted(set(y_ty[pos].tolist()))
        m["type_macro_f1"] = float(np.nanmean([_f1(y_ty[pos], r["type"][pos], t) for t in present]))
        for ti, t in enumerate(ACTION_TYPES):
            sel = pos & (y_ty == ti) & (r["type"] == ti)
            if t != "resume" and sel.any():
                m[f"value_mae_{t}"] = float(np.mean(np.abs(r["value"][sel] - y_val[sel])))
            if t != "resume" and (pos & (y_ty == ti)).any():
                m[f"value_nll_{t}"] = float(-lp_val[pos & (y_ty == ti)].mean())
        demo = _cells(y_ac[pos], y_ty[pos], y_val[pos])
        sampled = _cells(r["s_ac"][pos].reshape(-1), r["s_ty"][pos].reshape(-1), r["s_val"][pos].reshape(-1))
        m["decision_tv_distance"] = _tv(sampled, demo)
    m["timing_error_s"], m["timing_miss_rate"] = _timing(meta, y_act, r["p_act"])
    m["act_ece"], m["act_reliability"] = calibration(y_act, r["p_act"])
    geom = policy.feature_spec.feature_names("geometry")
    if "time_in_conflict_s" in geom:
        m["acting_times"] = acting_times(meta, y_act, r["p_act"],
                                         obs.geometry[:, -1, geom.index("time_in_conflict_s")].numpy())
    truth = Path(truth) if truth else dataset_dir.parent / "expert_truth.parquet"
    if truth.exists():
        t, t_achievable = truth_and_achievable(truth)
        m.update(_ceilings(t, t_achievable, meta, y_act, y_ac, y_ty, m,
                           lambda rows: _draws_given_act(policy, obs, rows, mode_samples, seed), mode_samples, seed))
        if "z" in r:
            m["latent_style_accuracy"], m["latent_style_majority"] = _style_probe(r["z"], meta, t)
        if _has_discrete_code(policy):
            m.update(code_style_nmi(policy, obs, dec, meta, t, batch))
    if out is not None:
        write_report(m, out, title)
        plot_values(r, y_ty, y_val, pos, Path(out) / "values.png", title)
    return m


@torch.no_grad()
def _draws_given_act(policy: PolicyInterface, obs: Observations, rows: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` decisions (aircraft, type, value) drawn given acting for each of ``rows``, (n, 3) arrays."""
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    out: list[np.ndarray] = []
    step = max(1, 65536 // max(n, 1))
    for i in range(0, len(rows), step):
        sel = torch.as_tensor(rows[i:i + step], dtype=torch.long)
        o = Observations(*(getattr(obs, k)[sel] for k in ("pair", "neighbours", "geometry", "clearances")))
        s = policy.sample_actions(policy.encode(o), n, gen)
        out.extend(np.stack([s.aircraft.cpu().numpy(), s.type.cpu().numpy(), s.value.cpu().numpy()], -1))
    return out


def _ceilings(truth: pd.DataFrame, truth_achievable: pd.DataFrame | None, meta: pd.DataFrame, y_act, y_ac, y_ty,
              m: dict, draws, mode_samples: int, seed: int) -> dict:
    """Both ceilings (models/ceiling.py) on the split's labels, the model's gaps to the achievable one (to the
    oracle where the truth predates per-style records), and mode coverage against the expert's modes: the
    model's (``draws(rows)``: its decisions drawn given acting) beside the achievable ceiling's own, both from
    ``mode_samples`` draws per acting sample."""
    pos = y_act == 1
    out: dict = {}
    kinds = {"oracle": truth}
    if truth_achievable is not None:
        kinds["achievable"] = truth_achievable
    dists = {k: expert_distributions(meta["time"].to_numpy(), meta["flight_id_1"], meta["flight_id_2"], t)
             for k, t in kinds.items()}
    ceil = {k: ceiling_metrics(d, y_act, y_ac, y_ty) for k, d in dists.items()}
    main = "achievable" if "achievable" in ceil else "oracle"
    out["ceiling"], out["ceiling_kind"] = ceil[main], main
    out["oracle_ceiling"] = ceil["oracle"]
    if "discrete_nll" in ceil["oracle"] and "discrete_nll" in ceil[main]:
        # what no model can win back: the style not yet revealed by the session's history
        out["ceiling_difference_discrete_nll"] = ceil[main]["discrete_nll"] - ceil["oracle"]["discrete_nll"]
    for name, c in (("gap", ceil[main]), ("gap_oracle", ceil["oracle"])):
        g = {k: c[k] - m[k] for k in ("act_accuracy", "aircraft_accuracy", "type_accuracy") if k in c and k in m}
        g.update({k: m[k] - c[k] for k in ("act_nll", "aircraft_nll_given_act", "type_nll_given_act")
                  if k in c and k in m})
        if "discrete_nll" in c:
            g["discrete_nll"] = m["nll_discrete"] - c["discrete_nll"]
        out[name] = g
    d = dists["oracle"]
    idx = np.flatnonzero(pos & d["matched"])
    ref = [d["modes"][j] for j in idx]
    out["mode_coverage"] = mode_coverage(ref, draws(idx))
    out["mode_coverage_ceiling"] = mode_coverage(ref, sample_modes([dists[main]["modes"][j] for j in idx],
                                                                   mode_samples, seed))
    out["mode_samples"] = int(mode_samples)
    return out


def plot_values(r: dict, y_ty: np.ndarray, y_val: np.ndarray, pos: np.ndarray, path: Path, title: str) -> None:
    """Demonstrated vs sampled values (given acting) per type: where a person sees mode collapse."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    types = [(i, t) for i, t in enumerate(ACTION_TYPES) if t in ("heading", "altitude", "speed")]
    fig, axes = plt.subplots(1, len(types), figsize=(4.2 * len(types), 3.2))
    for ax, (ti, t) in zip(axes, types):
        demo = y_val[pos & (y_ty == ti)]
        samp = r["s_val"][pos][r["s_ty"][pos] == ti]
        lo, hi = np.nanpercentile(np.concatenate([demo, samp, [0.0]]), [1, 99]) if len(demo) + len(samp) else (-1, 1)
        bins = np.linspace(lo - 1e-6, hi + 1e-6, 41)
        for vals, label in ((demo, "demonstrated"), (samp, "sampled")):
            if len(vals):
                ax.hist(vals, bins=bins, density=True, alpha=0.5, label=f"{label} ({len(vals)})")
        ax.set_title(f"{t} ({ {'heading': 'deg', 'altitude': 'ft', 'speed': 'kt'}[t]})", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def true_style(meta: pd.DataFrame, truth: pd.DataFrame) -> pd.Series:
    """Per sample, the synthetic controller's style in the sample's scenario (from the expert's truth
    table, via the ``split_key`` ``bluesky:<scenario>``); NaN where the scenario has no record."""
    style = truth.drop_duplicates("scenario").set_index("scenario")["style"]
    scen = meta["split_key"].astype(str).str.replace("bluesky:", "", regex=False)
    return scen.map(style).reset_index(drop=True)


def _has_discrete_code(policy: PolicyInterface) -> bool:
    return policy.has_discrete_code


@torch.no_grad()
def codes(policy: PolicyInterface, obs: Observations, dec: Decisions, batch: int = 1024) -> dict:
    """A discrete-code cvae head's most probable code per sample: ``prior`` from p(c | history),
    ``posterior`` from p(c | history, demonstrated decision) (the prior where the sample has no value:
    no action, ``resume``), and ``has_value`` (N,) bool."""
    out: dict[str, list] = {"prior": [], "posterior": []}
    for i in range(0, obs.batch_size, batch):
        sl = slice(i, i + batch)
        o = Observations(*(getattr(obs, k)[sl] for k in ("pair", "neighbours", "geometry", "clearances")))
        ctx = policy.encode(o)
        out["prior"].append(policy.code_prior(ctx).probs.argmax(-1).cpu())
        post = policy.code_posterior(ctx, Decisions(dec.act[sl], dec.aircraft[sl], dec.type[sl], dec.value[sl]))
        out["posterior"].append(post.probs.argmax(-1).cpu())
    r = {k: torch.cat(v).numpy() for k, v in out.items()}
    ac, ty, val = (t.numpy() for t in (dec.aircraft, dec.type, dec.value))
    r["has_value"] = (dec.act.numpy() == 1) & (ac >= 0) & (ty >= 0) & (ty != ACTION_TYPES.index("resume")) & np.isfinite(val)
    return r


def code_style_nmi(policy: PolicyInterface, obs: Observations, dec: Decisions, meta: pd.DataFrame, truth: pd.DataFrame,
                   batch: int = 1024) -> dict:
    """Normalised mutual information between the true style and the most probable discrete code, from the
    posterior (samples with a valued action) and from the prior (all samples); None where fewer than 2
    samples have a known style or they all have the same one (the score is then degenerate: 1 or 0)."""
    from sklearn.metrics import normalized_mutual_info_score
    style = true_style(meta, truth)
    known = style.notna().to_numpy()
    c = codes(policy, obs, dec, batch)
    m: dict = {}
    for k, sel in (("posterior", known & c["has_value"]), ("prior", known)):
        n = int(sel.sum())
        m[f"code_style_nmi_{k}"] = (float(normalized_mutual_info_score(style[sel].astype(str), c[k][sel]))
                                    if n >= 2 and style[sel].nunique() >= 2 else None)
        m[f"code_style_samples_{k}"] = n
        m[f"code_style_codes_used_{k}"] = int(len(np.unique(c[k][sel])))
    m["code_style_styles"] = int(style[known].nunique())
    return m


def _style_probe(z: np.ndarray, meta: pd.DataFrame, truth: pd.DataFrame) -> tuple[float | None, float | None]:
    """Cross-validated accuracy of the true style from E[z | history] (logistic regression), and the
    share of the most frequent style (what a probe that ignores z scores)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    y = true_style(meta, truth)
    ok = y.notna().to_numpy()
    if ok.sum() < 20:
        return None, None
    majority = float(y[ok].value_counts(normalize=True).iloc[0])
    folds = int(min(5, y[ok].value_counts().min()))
    if y[ok].nunique() < 2 or folds < 2:
        return None, majority
    return float(cross_val_score(LogisticRegression(max_iter=500), z[ok], y[ok], cv=folds).mean()), majority


def write_report(metrics: dict, out: str | Path, title: str = "evaluation") -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(metrics, out / "metrics.json")
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    for k, v in metrics.get("ceiling", {}).items():
        flat[f"ceiling_{k}"] = v
    for k, v in metrics.get("oracle_ceiling", {}).items():
        flat[f"oracle_ceiling_{k}"] = v
    flat.update({f"acting_times_{k}": v for k, v in metrics.get("acting_times", {}).items()})
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in flat.items()]
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
