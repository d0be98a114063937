"""The policy: Normalizer + encoder + optional HistoryVAE + head, implementing
:class:`models.interface.PolicyInterface` (the only way callers reach it).

Raw observations go in; the policy normalises them with the training split's statistics it holds as
buffers (saved with its weights). The head is conditioned on ``summary`` or ``concat(summary, z)``.

A saved policy directory holds ``weights.pt`` (the state dict, loaded with ``weights_only=True``),
``config.yaml`` (the ModelConfig) and ``feature_spec.json`` (the data set's feature spec, with the
normalisation statistics); ``load_policy`` rebuilds the modules from the registries by name.

Device: inputs are moved to the device of the module. Mixed precision: run under
``torch.autocast('cuda', dtype=torch.bfloat16)``; distributions and log-probs stay float32.
Compilation: ``policy.compile_encoder()`` compiles the encoder in place (state-dict keys unchanged).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

import models.encoders  # noqa: F401  (registers the encoders)
from atc_il.config import validate
from atc_il.errors import AtcIlError, ModelError
from atc_il.feature_spec import FeatureSpec
from atc_il.io import atomic_write_text
from models import style as style_mix
from models.config import ModelConfig
from models.encoders import HazardEncoder
from models.heads import HEADS, drop_other_heads_fields
from models.interface import ENCODERS, Context, Decisions, Observations
from models.normalizer import Normalizer
from models.style import StyleCode
from models.vae import HistoryVAE

WEIGHTS_FILE, CONFIG_FILE, SPEC_FILE = "weights.pt", "config.yaml", "feature_spec.json"


class Policy(nn.Module):
    def __init__(self, config: ModelConfig, spec: FeatureSpec | dict):
        super().__init__()
        self.config = config
        spec = FeatureSpec.of(spec, error=ModelError)      # validated once here
        # the plain dict form, for callers that index it by key; :attr:`feature_spec` is derived from it
        self.spec = spec.to_dict()
        self.normalizer = Normalizer(spec)
        self.encoder = ENCODERS.get(config.encoder.name)(spec, config.encoder)
        ctx_dim = self.encoder.out_dim
        self.vae = HistoryVAE(spec, config.vae, self.encoder.out_dim) if config.vae.enabled else None
        if self.vae is not None:
            ctx_dim += self.vae.latent_dim
        self.hazard = None
        if config.head.act_inputs == "geometry":
            if config.encoder.name == "markov":
                raise ModelError("head.act_inputs = geometry reads the geometry's history features (time in conflict, "
                                 "the controller's clearances), which the markov encoder must not see; use act_inputs "
                                 "= context with it")
            # P(act)'s own summary, the last head.hidden features of the context (models/heads/base.py)
            self.hazard = HazardEncoder(spec.to_dict(), config.encoder, config.head.hidden)
            ctx_dim += self.hazard.out_dim
        self.head = HEADS.get(config.head.name)(ctx_dim, config.head)
        # the session style code (models/style.py): its q-logits ride at the end of the context tensor
        self.style = StyleCode(spec, config.style, ctx_dim) if config.style.enabled else None
        self.exact_log_prob = self.head.exact_log_prob

    @property
    def feature_spec(self) -> FeatureSpec:
        """The typed feature spec, from :attr:`spec` (one copy of the spec: a caller's completion of the dict,
        e.g. its spec_hash, is what is saved)."""
        return FeatureSpec.of(self.spec, error=ModelError)

    @property
    def device(self) -> torch.device:
        return self.normalizer.pair_mean.device

    # -- internals -------------------------------------------------------------------------------
    def _encode(self, obs: Observations, sample_z: bool = False):
        """(context (B, C), normalised obs, summary, (z, q) or None). z is a reparameterised sample only
        when ``sample_z`` (the training loss); sample/log_prob/predict use the posterior mean, so their
        randomness comes only from the generator passed in."""
        obs = obs.to(self.device)
        obs_n = self.normalizer(obs)
        geometry_n = obs_n.geometry
        if self.style is not None and self.config.style.bottleneck:
            obs_n = self.style.hide_session(obs_n)       # the style reaches the head only through the code
        summary, _ = self.encoder(obs_n)
        ctx, zq = summary, None
        if self.vae is not None:
            q = self.vae.posterior(summary)
            z = q.rsample() if sample_z else q.mean
            ctx, zq = torch.cat([summary, z.to(summary.dtype)], dim=-1), (z, q)
        if self.hazard is not None:
            ctx = torch.cat([ctx, self.hazard(obs_n.geometry).to(ctx.dtype)], dim=-1)
        if self.style is not None:
            ctx = torch.cat([ctx, self.style.logits(obs.geometry, geometry_n).to(ctx.dtype)], dim=-1)
        return ctx, obs_n, summary, zq

    def _ctx(self, obs: Observations | Context) -> torch.Tensor:
        return obs.tensor.to(self.device) if isinstance(obs, Context) else self._encode(obs)[0]

    # -- the policy interface (models/interface.py) ------------------------------------------------
    def encode(self, obs: Observations | Context) -> Context:
        """The conditioning vector the head sees (B, C), to pass to the methods below in place of ``obs``."""
        return obs if isinstance(obs, Context) else Context(self._encode(obs)[0])

    def loss(self, obs: Observations, dec: Decisions) -> tuple[torch.Tensor, dict[str, float]]:
        ctx, obs_n, _, zq = self._encode(obs, sample_z=self.training)
        if self.style is not None:
            loss, logs = style_mix.loss(self.head, self.style, ctx, dec.to(self.device), self.config.train.act_weight)
        else:
            loss, logs = self.head.loss(ctx, dec.to(self.device), act_weight=self.config.train.act_weight)
        if zq is not None:
            vae_loss, vae_logs = self.vae.loss(zq[0], zq[1], obs_n)
            loss = loss + vae_loss
            logs.update(vae_logs)
        logs["loss"] = loss.detach()
        values = torch.stack([v.float() for v in logs.values()]).tolist()     # one device sync, not one per log
        return loss, dict(zip(logs, values))

    @torch.no_grad()
    def p_act(self, obs: Observations | Context, code: torch.Tensor | None = None) -> torch.Tensor:
        """P(act now | history) (B,); ``code`` (B,): the session style code to hold fixed where >= 0 (a style
        policy only; :func:`models.style.p_act`), else marginal over q(c | session)."""
        if self.style is not None:
            return style_mix.p_act(self.head, self.style, self._ctx(obs), code)
        return self.head.p_act(self._ctx(obs))

    @torch.no_grad()
    def sample(self, obs: Observations | Context, n: int, generator: torch.Generator | None = None,
               **options) -> Decisions:
        if self.style is not None:
            return style_mix.sample(self.head, self.style, self._ctx(obs), n, generator, False, **options)
        return self.head.sample(self._ctx(obs), n, generator, **options)

    @torch.no_grad()
    def sample_actions(self, obs: Observations | Context, n: int, generator: torch.Generator | None = None,
                       code: torch.Tensor | None = None, **options) -> Decisions:
        """n actions per context (B, n) given that the controller acts; ``code`` as in :meth:`p_act`."""
        if self.style is not None:
            return style_mix.sample(self.head, self.style, self._ctx(obs), n, generator, True, code, **options)
        return self.head.sample(self._ctx(obs), n, generator, given_act=True, **options)

    def log_prob(self, obs: Observations | Context, dec: Decisions, **options) -> torch.Tensor:
        if self.style is not None:
            return sum(self.log_prob_terms(obs, dec).values())
        return self.head.log_prob(self._ctx(obs), dec.to(self.device), **options)

    def log_prob_terms(self, obs: Observations | Context, dec: Decisions) -> dict[str, torch.Tensor]:
        if self.style is not None:
            return style_mix.log_prob_terms(self.head, self.style, self._ctx(obs), dec.to(self.device))
        return self.head.terms(self._ctx(obs), dec.to(self.device))

    @torch.no_grad()
    def predict(self, obs: Observations | Context, **options) -> Decisions:
        if self.style is not None:
            return style_mix.predict(self.head, self.style, self._ctx(obs), False, **options)
        return self.head.predict(self._ctx(obs), **options)

    @torch.no_grad()
    def predict_action(self, obs: Observations | Context, code: torch.Tensor | None = None, **options) -> Decisions:
        """The most likely action given that the controller acts; ``code`` as in :meth:`p_act`."""
        if self.style is not None:
            return style_mix.predict(self.head, self.style, self._ctx(obs), True, code, **options)
        return self.head.predict(self._ctx(obs), given_act=True, **options)

    def session_prior(self) -> torch.distributions.Categorical | None:
        """q(c | a session without clearances): the style codes' distribution at the start of a session (None
        for a policy without a style code). A simulated controller draws its style from it once per session."""
        if self.style is None:
            return None
        idx = self.style.session_idx
        zero_n = ((0.0 - self.normalizer.geometry_mean[idx]) / self.normalizer.geometry_std[idx])
        return torch.distributions.Categorical(logits=self.style.prior_logits(zero_n))

    @torch.no_grad()
    def posterior_mean(self, obs: Observations) -> torch.Tensor:
        """E[z | history] (B, latent_dim), for evaluating what z captures (e.g. separability of styles)."""
        if self.vae is None:
            raise ModelError("this policy has no VAE (vae.enabled = false): there is no latent z")
        summary, _ = self.encoder(self.normalizer(obs.to(self.device)))
        return self.vae.posterior(summary).mean

    @property
    def has_latent(self) -> bool:
        return self.vae is not None

    @property
    def has_discrete_code(self) -> bool:
        """A discrete code to read: the session style code when there is one, else a cvae head's code."""
        return self.style is not None or (bool(getattr(self.head, "discrete", False))
                                          and hasattr(self.head, "code_posterior"))

    def _code_head(self):
        if not self.has_discrete_code:
            raise ModelError(f"the {self.config.head.name} head has no discrete code (a cvae head with "
                             "latent = discrete has one, and so has a policy with style.enabled)")
        return self.head

    def code_prior(self, obs: Observations | Context) -> torch.distributions.Distribution:
        """The code's distribution before the decision: q(c | session) of the style code, or a discrete-code
        head's learned prior p(c | history)."""
        if self.style is not None:
            return torch.distributions.Categorical(logits=style_mix.split(self._ctx(obs), self.style.K)[1])
        return self._code_head().code_prior(self._ctx(obs))

    def code_posterior(self, obs: Observations | Context, dec: Decisions) -> torch.distributions.Distribution:
        """The code given the demonstrated decision too: p(c | session, decision) of the style code, or
        p(c | history, decision) of a discrete-code head (its prior where the decision has no value)."""
        d = dec.to(self.device)
        if self.style is not None:
            return torch.distributions.Categorical(
                logits=style_mix.code_posterior_logits(self.head, self.style, self._ctx(obs), d))
        return self._code_head().code_posterior(self._ctx(obs), d.aircraft, d.type, d.value)

    def context_module(self) -> nn.Module:
        """The context network alone: (pair, neighbours, geometry, clearances) -> (B, C), for export."""
        return _ContextNet(self)

    def compile_encoder(self, **kwargs) -> Policy:
        """Compile the encoder in place with torch.compile (state-dict keys stay the same)."""
        self.encoder.compile(**kwargs)
        return self

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path_dir: str | Path) -> Path:
        path_dir = Path(path_dir)
        path_dir.mkdir(parents=True, exist_ok=True)
        tmp = path_dir / f".{WEIGHTS_FILE}.tmp"
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, tmp)
        tmp.replace(path_dir / WEIGHTS_FILE)
        atomic_write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False), path_dir / CONFIG_FILE)
        atomic_write_text(self.feature_spec.to_json(), path_dir / SPEC_FILE)
        return path_dir


class _ContextNet(nn.Module):
    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, pair, neighbours, geometry, clearances):
        return self.policy._encode(Observations(pair, neighbours, geometry, clearances))[0]


def build_policy(config: ModelConfig, spec: FeatureSpec | dict) -> Policy:
    """Build a policy from the registries by name (``config.encoder.name``, ``config.head.name``)."""
    return Policy(config, spec)


def load_policy(path_dir: str | Path, map_location="cpu") -> Policy:
    """Rebuild a policy saved with :meth:`Policy.save` (in eval mode)."""
    path_dir = Path(path_dir)
    if not path_dir.is_dir():
        raise ModelError(f"{path_dir}: no such policy directory")
    for name in (WEIGHTS_FILE, CONFIG_FILE, SPEC_FILE):
        if not (path_dir / name).exists():
            hint = (" (the feature spec carries the normalisation statistics a policy needs)" if name == SPEC_FILE
                    else "")
            raise ModelError(f"{path_dir}: not a saved policy, {name} is missing{hint}; save it with Policy.save")
    try:
        raw = yaml.safe_load((path_dir / CONFIG_FILE).read_text()) or {}
        if isinstance(raw.get("head"), dict):      # saved by an earlier version: every head's fields in one section
            raw["head"] = drop_other_heads_fields(raw["head"])
        config = validate(ModelConfig, raw, str(path_dir / CONFIG_FILE))
        spec = FeatureSpec.load(path_dir / SPEC_FILE, error=ModelError)
    except (AtcIlError, ValueError, yaml.YAMLError) as exc:
        raise ModelError(f"{path_dir}: cannot read the policy's configuration or feature spec: {exc}") from None
    if not spec.normalisation:
        raise ModelError(f"{path_dir}/{SPEC_FILE} has no normalisation statistics; the policy cannot normalise "
                         "its inputs (save it from a policy built on a data set's feature spec)")
    policy = build_policy(config, spec)
    try:
        state = torch.load(path_dir / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    except Exception as exc:   # noqa: BLE001 - corrupt, truncated or a pickle that is not plain weights
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ModelError(f"{path_dir / WEIGHTS_FILE}: not a readable weights file ({type(exc).__name__}: {first}); "
                         "it was not loaded: save the policy again (Policy.save) or retrain") from None
    try:
        policy.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path_dir}/{WEIGHTS_FILE} does not match its config.yaml: {exc}") from None
    if isinstance(map_location, (str, torch.device)):
        policy = policy.to(map_location)
    return policy.eval()
