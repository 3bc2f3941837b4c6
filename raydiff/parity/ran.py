"""RAN (VandyLu/anomaly_diff) against ``raydiff.scoring.ran_kl``: the KL map on the respaced chain.

What is fed to both sides: raydiff's Gaussian pixel model (ε and the learned-range v) wrapped in
improved-diffusion's model interface (``model(x, t, **model_kwargs)`` → ``cat([ε, v], dim=1)``,
``t`` the ORIGINAL step: the reference's ``SpacedDiffusion`` maps its index through
``_WrappedModel``), the reference's ``SpacedDiffusion`` built from the model's own betas
(float64, as ``create_gaussian_diffusion`` builds it: ε-prediction, ``LEARNED_RANGE``,
``rescale_timesteps=False``, ``timestep_respacing 250``: test.sh), the same images, and the
same noise: one seeded draw per t and image, given to raydiff's ``q_sample`` and to the
reference's ``q_sample(noise=...)``, and patched into the reference's ``th.randn_like`` when its
``calc_bpd_loop`` runs.

raydiff's side is the reproducing instance's settings (configs/mvtec-papers.yaml ``ran``):
``chain_steps: 250``, ``timesteps: [5, 50, 100]``, ``clip_x0: true``, ``fresh_noise: true``.
A model whose schedule is not 1000 steps long is respaced proportionally (T/4 steps, the
timesteps scaled alike); the reference's ``calc_bpd_loop`` hard-codes t = 5, 50, 100, so its
combination is then recomputed here from its per-t maps as that loop does (the note says so).

Stages, per t: the step the UNet is called at, x_t, x̂0 (clipped), the true posterior mean,
p_θ's mean and log-variance (the learned-range interpolation on the respaced β, β̃), and the
KL map in bits (channel mean). Then the combination: the reference's ``calc_bpd_loop``
(``diff_mask``: each t's per-channel KL map z-scored over the whole batch, channels and pixels,
with torch's unbiased std; averaged over t; channel mean), run with batch 1 per image as
scripts/image_anomaly.py does, against (a) the same per-image z-score applied to raydiff's
per-channel KL (must be equal: the only difference is the normalisation) and (b) raydiff's own
``combine`` with held-out statistics (a deviation, docs/methods.md "kl"); and the top-64 image
scores of both. Not compared: RAN's feature head (an EfficientNet-feature predictor on the
UNet; raydiff uses φ of x̂0 instead, docs/methods.md "kl"); the check feeds the reference's
feature path zeros so that ``calc_bpd_loop`` runs, and ignores its ``feat_mask``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from raydiff import diffusion as D
from raydiff.config import KLConfig
from raydiff.parity.compare import Stage
from raydiff.parity.inputs import ParityInputs
from raydiff.parity.refs import NoiseFeed, Reference, patched
from raydiff.scoring import ran_kl
from raydiff.scoring.fit import RunningMoments, _ring_moments, _ring_result
from raydiff.scoring.postprocess import RINGS, image_score

REFERENCE = "ran"
MODULES = ("guided_diffusion.gaussian_diffusion", "guided_diffusion.respace")
#: Imported at module level by gaussian_diffusion.py, not on the compared path: cv2 (line 8),
#: torchvision (line 1162, the FeatureExtractor / Padim backbones) and, through
#: ``from .backbones import efficientnet_b4`` (line 1163), ``guided_diffusion.initializer``,
#: which backbones/resnet.py:7 imports but the repository has never contained (a reference bug:
#: gaussian_diffusion.py does not import from a clean checkout). That one is a dotted name, a
#: missing submodule of the checkout itself: the loader must stub an ``absent`` entry matched by
#: its full name, not only by its top-level package.
ABSENT = ("cv2", "torchvision", "guided_diffusion.initializer")
METHOD = "ran-kl"

#: The reference's chain and steps (test.sh ``--timestep_respacing 250``; calc_bpd_loop).
CHAIN_STEPS = 250
TIMESTEPS = (5, 50, 100)
TOP_K = 64  # scripts/image_anomaly.py get_score: topk(k=64)
#: Held-out images used for raydiff's normalisation statistics (at most).
MAX_HELDOUT = 32


class _NoFeatureExtractor:
    """Stands in for the reference's EfficientNet ``FeatureExtractor`` (built in
    ``GaussianDiffusion.__init__``, moved to CUDA, pretrained weights): returns four zero maps
    (the feature term is not compared)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def cuda(self) -> _NoFeatureExtractor:
        return self

    def eval(self) -> _NoFeatureExtractor:
        return self

    def parameters(self) -> Iterator[torch.Tensor]:
        return iter(())

    def __call__(self, img: torch.Tensor) -> tuple[list[torch.Tensor], None]:
        b, _, h, w = img.shape
        z = torch.zeros(b, 1, max(h // 4, 1), max(w // 4, 1), device=img.device)
        return [z, z, z, z], None


class RefModel:
    """raydiff's model in improved-diffusion's interface: ``model(x, t, **kw)`` → (B, 2C, H, W)
    = [ε, v]; with ``get_feature=True`` (the reference's feature head) → (that, zeros).

    ``steps``: every t it was called with for the diffusion output (``get_feature`` off)."""

    def __init__(self, model: Any, feat_shape: int) -> None:
        self.model = model
        self.feat_shape = feat_shape
        self.steps: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> Any:
        if kwargs.get("get_feature"):
            # RAN's feature head: not compared; no UNet pass (the output is discarded there).
            return None, torch.zeros(x.shape[0], 4, self.feat_shape, self.feat_shape, device=x.device)
        self.steps.append(t.detach().clone())
        eps, v = self.model.model_output(x, t.long())
        if v is None:
            raise ValueError("the RAN check needs a model with a learned variance (variance: learned)")
        return torch.cat([eps, v], dim=1)


def chain_and_steps(timesteps: int) -> tuple[int, tuple[int, ...], str]:
    """(respaced chain length, t's on it, note): the reference's 250 and 5, 50, 100 for a
    1000-step model, proportionally scaled otherwise."""
    if timesteps == 1000:
        return CHAIN_STEPS, TIMESTEPS, ""
    n = max(2, round(CHAIN_STEPS * timesteps / 1000))
    ts = tuple(sorted({min(n - 1, max(1, round(t * n / CHAIN_STEPS))) for t in TIMESTEPS}))
    return n, ts, (f"the model has {timesteps} steps, not 1000: chain respaced to {n} steps, t = {list(ts)} "
                   f"(the reference's 250 and 5, 50, 100 scaled)")


def build_reference_diffusion(ref: Reference, betas: torch.Tensor, steps: int) -> Any:
    """The reference's ``SpacedDiffusion`` as ``create_gaussian_diffusion`` builds it for
    ``learn_sigma=True``, ``use_kl=False``, ``predict_xstart=False``, ``rescale_timesteps=False``,
    ``timestep_respacing=str(steps)``, from ``betas`` (its EfficientNet extractor bypassed)."""
    gd = ref.module("guided_diffusion.gaussian_diffusion")
    rs = ref.module("guided_diffusion.respace")
    b = betas.detach().to("cpu", torch.float64).numpy()
    with patched(gd, "FeatureExtractor", _NoFeatureExtractor):
        return rs.SpacedDiffusion(
            use_timesteps=rs.space_timesteps(len(b), str(steps)), betas=b,
            model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=gd.ModelVarType.LEARNED_RANGE,
            loss_type=gd.LossType.MSE, rescale_timesteps=False,
        )


def _noise(seed: int, tag: int, t: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1_000_003 * seed + 7919 * tag + t)
    return torch.randn(*shape, generator=g)


def _ours_per_t(model: Any, chain: D.Schedule, x0: torch.Tensor, t: int, k: int, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """raydiff's quantities at t of the chain (UNet at step k): x_t, ε, v, p_θ, per-channel KL."""
    b = x0.shape[0]
    kk = torch.full((b,), k, dtype=torch.long, device=x0.device)
    tt = torch.full((b,), t, dtype=torch.long, device=x0.device)
    x_t = D.q_sample(model.schedule, x0, kk, noise)  # ran_kl.fresh_level: x_t at the model's step k
    eps, v = model.model_output(x_t, kk)
    mean_q, _, log_var_q = D.q_posterior(chain, x0, x_t, tt)
    p = D.p_mean_variance(chain, torch.cat([eps, v], dim=1), x_t, tt, learned_variance=True, clip_x0=True)
    return {
        "k": kk, "x_t": x_t, "eps": eps, "v": v, "q_mean": mean_q, "p": p,  # type: ignore[dict-item]
        # ran_kl.kl_map before its channel mean (the reference z-scores per channel, then averages)
        "kl_c": ran_kl.gaussian_kl_bits(mean_q, log_var_q, p.mean, p.log_var),
        "kl": ran_kl.kl_map(chain, x0, x_t, tt, eps, v, clip_x0=True),
    }


def _vb_terms_per_image(diffusion: Any, ref_model: RefModel, x0: torch.Tensor, x_t: torch.Tensor, t: int
                        ) -> dict[str, torch.Tensor]:
    """The reference's ``_vb_terms_bpd_anom`` one image at a time (its code runs batch 1: with
    B > 1 its ``th.where(t.expand_as(decoder_nll) == 0, ...)`` broadcasts the (B,) t against the
    maps' last axis, gaussian_diffusion.py:973-975), the outputs concatenated."""
    outs = []
    for i in range(x0.shape[0]):
        tt = torch.full((1,), t, dtype=torch.long, device=x0.device)
        outs.append(diffusion._vb_terms_bpd_anom(ref_model, x_start=x0[i : i + 1], x_t=x_t[i : i + 1], t=tt,
                                                 clip_denoised=True, model_kwargs={}))
    return {k: torch.cat([o[k] for o in outs]) for k in ("pred_xstart", "mean", "log_variance", "kl_map", "nll_map")}


def _zscore_batch(x: torch.Tensor) -> torch.Tensor:
    """The reference's ``(vb - vb.mean()) / vb.std()`` (whole tensor, unbiased std)."""
    return (x - x.mean()) / x.std()


def _heldout_stats(model: Any, chain: D.Schedule, images: torch.Tensor, model_step: dict[int, int], seed: int
                   ) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """raydiff's normalisation statistics of each kl_t (per ring, as ``fit.normalisation_stats``)
    over ``images`` with their own seeded noise."""
    stats: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    for t, k in model_step.items():
        noise = _noise(seed, 2, t, tuple(images.shape)).to(images.device)
        moments = [RunningMoments() for _ in range(RINGS)]
        _ring_moments(moments, _ours_per_t(model, chain, images, t, k, noise)["kl"])
        stats[ran_kl.kl_component(t)] = _ring_result(moments)
    stats[ran_kl.FEATURE] = (0.0, 1.0)  # type: ignore[assignment]
    return stats


def stages(ref: Reference, inputs: ParityInputs) -> list[Stage]:
    model = inputs.model("gaussian")
    x0 = inputs.images
    dev = x0.device
    b = x0.shape[0]
    n, ts, scale_note = chain_and_steps(model.schedule.timesteps)
    params = KLConfig(timesteps=ts, chain_steps=n, clip_x0=True, fresh_noise=True, feature_weight=0.0,
                      smoothing="none", image_score="topk-mean", top_k=TOP_K)
    chain, model_step = ran_kl.scoring_chain(model.schedule, params, dev)

    diffusion = build_reference_diffusion(ref, model.schedule.betas, n)
    ref_model = RefModel(model, int(getattr(diffusion, "feat_shape", 16)))
    kept = list(diffusion.timestep_map)
    ours_kept = ran_kl.space_timesteps(model.schedule.timesteps, n)
    out: list[Stage] = []

    def add(stage: str, ours: torch.Tensor, theirs: torch.Tensor, kind: str = "tensor", note: str = "",
            deviation: str | None = None) -> None:
        out.append(Stage(METHOD, stage, ours, theirs, kind=kind, deviation=deviation, note=note))  # type: ignore[arg-type]

    add("respaced chain: kept steps", torch.tensor(ours_kept), torch.tensor(kept),
        note=scale_note or "space_timesteps(1000, '250')")
    add("respaced chain: β'", chain.betas.double().cpu(), torch.from_numpy(diffusion.betas),
        note="SpacedDiffusion betas (float64) vs raydiff's respaced table (float32)")

    noises = {t: _noise(inputs.seed, 1, t, tuple(x0.shape)).to(dev) for t in ts}
    ours: dict[int, dict[str, torch.Tensor]] = {}
    for t in ts:
        k = model_step[t]
        o = ours[t] = _ours_per_t(model, chain, x0, t, k, noises[t])
        tt = torch.full((b,), t, dtype=torch.long, device=dev)
        x_t = diffusion.q_sample(x0, tt, noise=noises[t])
        true_mean, _, _ = diffusion.q_posterior_mean_variance(x_start=x0, x_t=x_t, t=tt)
        ref_model.steps.clear()
        r = _vb_terms_per_image(diffusion, ref_model, x0, x_t, t)
        called = torch.cat(ref_model.steps) if len(ref_model.steps) == b else torch.full((b,), -1)
        add(f"UNet step (t={t})", o["k"].cpu(), called.cpu(), note="_WrappedModel: t of the chain → original step")
        add(f"x_t (t={t})", o["x_t"], x_t, note="same noise; raydiff: q_sample at the original step k")
        add(f"x̂0 (t={t})", o["p"].x0, r["pred_xstart"], note="clipped to [-1, 1]")
        add(f"q mean (t={t})", o["q_mean"], true_mean)
        add(f"p mean (t={t})", o["p"].mean, r["mean"])
        add(f"p log-variance (t={t})", o["p"].log_var, r["log_variance"], note="learned range on β', β̃'")
        add(f"KL map bits (t={t})", o["kl"], r["kl_map"].mean(dim=1), kind="map",
            note="raydiff ran_kl.kl_map vs the reference's _vb_terms_bpd_anom kl_map, channel mean")

    # The reference's combination: calc_bpd_loop per image (batch 1, scripts/image_anomaly.py),
    # its randn_like draws patched: x_cur (drawn, unused), then one per t.
    if ts == TIMESTEPS:
        theirs_maps = []
        for i in range(b):
            draws = [torch.zeros_like(x0[i : i + 1])] + [noises[t][i : i + 1] for t in ts]
            feed = NoiseFeed(draws)
            with patched(torch, "randn_like", feed):  # the reference's th.randn_like
                res = diffusion.calc_bpd_loop(ref_model, x0[i : i + 1], clip_denoised=True, model_kwargs={})
            feed.check_all_taken()
            theirs_maps.append(res["diff_mask"][:, 0])
        theirs_kl = torch.cat(theirs_maps)
        how = "reference: calc_bpd_loop diff_mask, batch 1 per image, the same noise"
    else:  # calc_bpd_loop hard-codes t = 5, 50, 100: its combination, from its per-t maps
        theirs_kl = torch.zeros(b, *x0.shape[-2:], device=dev)
        for t in ts:
            tt = torch.full((b,), t, dtype=torch.long, device=dev)
            r = _vb_terms_per_image(diffusion, ref_model, x0, diffusion.q_sample(x0, tt, noise=noises[t]), t)
            for i in range(b):
                theirs_kl[i] += _zscore_batch(r["nll_map"][i]).mean(dim=0) / len(ts)
        how = "reference: calc_bpd_loop's combination of its per-t maps (recomputed here; " + scale_note + ")"

    # raydiff's `normalise: per-image` (the reproducing instance): ran_kl.per_image_zscore per t,
    # combined by ran_kl.combine (feature_weight 0: the KL part).
    per_image = dataclasses.replace(params, normalise="per-image")
    ours_refnorm = ran_kl.combine(
        "ran", {**{ran_kl.kl_component(t): ran_kl.per_image_zscore(ours[t]["kl_c"]) for t in ts},
                ran_kl.FEATURE: torch.zeros_like(ours[ts[0]]["kl"])}, None, per_image)
    add("per-t z-scored KL, channel mean (raydiff normalise: per-image)", ours_refnorm, theirs_kl,
        kind="map", note=how + "; raydiff: ran_kl.per_image_zscore of its per-channel KL, ran_kl.combine")

    heldout = inputs.train_images[:MAX_HELDOUT].to(dev)
    stats = _heldout_stats(model, chain, heldout, model_step, inputs.seed)
    comps = {ran_kl.kl_component(t): ours[t]["kl"] for t in ts}
    comps[ran_kl.FEATURE] = torch.zeros_like(ours[ts[0]]["kl"])
    ours_kl = ran_kl.combine("ran", comps, stats, params)  # feature_weight 0: the KL part
    add("per-t z-scored KL, channel mean (raydiff normalise: held-out, its default)", ours_kl, theirs_kl, kind="map",
        deviation="kl", note=f"raydiff combine: each kl_t standardised per ring with statistics of "
        f"{heldout.shape[0]} training images (own noise), mean over t; the reference z-scores each "
        f"image's per-channel map over channels and pixels (so a score depends on the image alone in raydiff)")

    theirs_score = image_score(theirs_kl, "topk-mean", top_k=TOP_K)
    add(f"image score (top-{TOP_K} mean of the KL part, raydiff normalise: per-image)",
        image_score(ours_refnorm, "topk-mean", top_k=TOP_K), theirs_score, kind="score",
        note="RAN's image score adds its feature map (not compared)")
    add(f"image score (top-{TOP_K} mean of the KL part, raydiff normalise: held-out)",
        image_score(ours_kl, "topk-mean", top_k=TOP_K), theirs_score, kind="score", deviation="kl",
        note="raydiff: held-out statistics (before postprocess.finish's final rescaling)")
    return out
