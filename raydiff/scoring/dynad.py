"""DynAD (Tebbe & Tayyub, "Dynamic Addition of Noise in a Diffusion Model for Anomaly Detection").

Variants ``dynamic`` (the ``latent`` model: AutoencoderKL + latent UNet, as the paper) and
``dynamic-pixel`` (the same algorithm on the ``pixel`` model, z ≡ x).

Per image (Alg. 1 and 2 of the paper; reference JustinTebbe/Dynamic-noise-AD:test.py, sample.py):

1. T̂ from the KNN prior (Alg. 2): b = bin of the mean L1 distance of φ_layer2(x0) pooled 16×16
   to its K nearest training images; T̂ = round10(max(b, 2) / |B| · T_max)
   (``ctx.fitted.knn_for(phi)`` + ``raydiff.knn_prior.noise_level``). Each image has its own T̂.
2. z0 = s·E(x0) (posterior mean, no sampling; the reference samples) or z0 = x0 in pixel space.
3. Noiseless start (Alg. 1 line 4, DynAD Table 6): z_T̂ = √ᾱ_T̂ · z0, no random term.
4. Deterministic DDIM (eq. 7, σ = 0) with DDAD guidance (eq. 8-9):
       ỹ_t = √ᾱ_t z0 + √(1-ᾱ_t) ε_θ(z_t, t)
       ε̂_t = ε_θ(z_t, t) - w √(1-ᾱ_t) (ỹ_t - z_t)
       ẑ0(z_t) = (z_t - √(1-ᾱ_t) ε̂_t) / √ᾱ_t
       z_prev = √ᾱ_prev ẑ0(z_t) + √(1-ᾱ_prev) ε̂_t
   over the timesteps of :func:`ddim_timesteps`; x̂0 = D(ẑ0 / s) for the latent model.
5. Maps (section 4.2), at the image resolution, higher = more anomalous:
       l_map = mean_c |ẑ0 - z0|                       (latent resolution, then bilinear upsampling)
       f_map = Σ_{j ∈ layer2, layer3} 1 - cos(φ_j(x0), φ_j(x̂0))   (cosine over channels, upsampled)
       A = λ · norm(l_map) + (1-λ) · norm(f_map)      (eq. 10)
   ``norm`` standardises with mean/std of the raw map over held-out normal training images
   (the reference min-max-normalises over the whole test set, which makes one image's score
   depend on the others). Gaussian σ = 4 and the max are applied by ``postprocess.finish``.

Symbols ↔ names: x0 ``cache.x0``, z0 ``z0``, s ``model.latent_scale``, T̂ ``t_hat``, w ``w``
(DDAD's η₂, config ``guidance_w``), λ ``params.lam``, ᾱ ``sched.alphas_cumprod``.

Timesteps (diffusers indexing, ᾱ_t = ``alphas_cumprod[t]``, as every raydiff variant): with
n = min(S, T̂) steps the UNet is evaluated at τ_k = T̂ - ⌊k·T̂/n⌋, k = 0 … n-1 (τ_0 = T̂, where z_T̂
lives: the paper's Alg. 1 loop "for t = T̂, …, 1"; the same rule as ``sampling.reverse_timesteps``)
and the last step goes to the clean sample (ᾱ = 1). The reference code scales the start by ᾱ_T̂
but evaluates the UNet first at T̂ - T̂/10 (``seq = range(0, T̂, T̂ // 10)`` walked backwards, last
evaluation at 0): its schedule is ours shifted down by one stride. ``ddim_grid: reference``
(params) walks the reference's grid instead (``raydiff parity`` measures both; docs/parity.md).

φ (:func:`phi_key`): DynAD's own instance — the domain-adapted copy (section 4.3, eq. 11) when
``features.domain_adaptation_epochs`` > 0 and the instance's ``domain_adaptation`` is on, else the
base φ; the KNN prior of step 1 is fitted over the same φ (the paper: "domain adapted features for
both DIC and the construction of the feature anomaly map"). RAN's feature term never sees the
adapted copy. ``domain_adaptation: false`` beside the default gives DynAD Table 6's DA ablation in
one run (one KNN prior per φ in the fitted state).

Forward passes per image: S = ``ddim_steps`` UNet passes (fewer only when T̂ < S). Besides the
UNet: the latent variant runs the VAE encoder and decoder once each; both variants run φ once on
x̂0 (φ(x0) is shared with every variant of the same φ through the batch cache, and the KNN level
reuses its layer2 output, so the KNN prior costs no extra φ pass).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from raydiff import diffusion as D
from raydiff.config import DynamicConfig, FeaturesConfig
from raydiff.errors import CheckpointError
from raydiff.features import PHI_ADAPTED, PHI_BASE, cosine_distance_map, pooled_layer2
from raydiff.knn_prior import noise_level
from raydiff.scoring.context import BatchCache
from raydiff.scoring.postprocess import normalise, upsample

#: The ResNet blocks compared in f_map (DynAD appendix 7.1: blocks 2 and 3).
FEATURE_LAYERS: tuple[str, ...] = ("layer2", "layer3")


def phi_key(features: FeaturesConfig, params: DynamicConfig) -> str:
    """The φ instance a dynamic instance uses (its KNN prior and f_map): ``PHI_ADAPTED`` when
    ``features.domain_adaptation_epochs`` > 0 and ``params.domain_adaptation``, else ``PHI_BASE``."""
    return PHI_ADAPTED if features.domain_adaptation_epochs > 0 and params.domain_adaptation else PHI_BASE

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Pure maths
# --------------------------------------------------------------------------------------------


def ddim_timesteps(t_hat: torch.Tensor, steps: int, grid: str = "paper") -> torch.Tensor:
    """Per-image DDIM timesteps, (R, B) long: row k = the k-th UNet evaluation, -1 = none.

    ``grid = "paper"`` (Alg. 1, R = S): image i takes n_i = min(S, T̂_i) evaluations
    τ_k = T̂_i - ⌊k·T̂_i / n_i⌋ (k < n_i): strictly decreasing from T̂_i, all ≥ 1.

    ``grid = "reference"`` (JustinTebbe/Dynamic-noise-AD test.py and sample.py: the stride
    skip_i = max(⌊T̂_i / S⌋, 1), ``seq = arange(0, T̂_i, skip_i)`` walked backwards): evaluations at
    (n_i - 1 - k)·skip_i with n_i = ⌈T̂_i / skip_i⌉, i.e. the paper's grid shifted down by one
    stride, ending with an evaluation at t = 0; R = max n_i (R = S when S divides T̂).

    After its last evaluation an image goes to the clean sample. T̂ = 0 gives no evaluation.
    """
    if steps < 1:
        raise ValueError(f"ddim_steps must be >= 1, got {steps}")
    t_hat = t_hat.long().view(1, -1)
    if grid == "reference":
        skip = torch.clamp(torch.div(t_hat, steps, rounding_mode="floor"), min=1)
        n = torch.div(t_hat + skip - 1, skip, rounding_mode="floor")
        rows = int(n.max()) if n.numel() else 0
        k = torch.arange(rows, device=t_hat.device).view(-1, 1)
        ts = (n - 1 - k) * skip
        return torch.where(k < n, ts, torch.full_like(ts, -1))
    if grid != "paper":
        raise ValueError(f"grid must be 'paper' or 'reference', got {grid!r}")
    n = torch.clamp(t_hat, max=steps)
    k = torch.arange(steps, device=t_hat.device).view(-1, 1)
    ts = t_hat - torch.div(k * t_hat, n.clamp(min=1), rounding_mode="floor")
    return torch.where(k < n, ts, torch.full_like(ts, -1))


def ddad_guided_eps(eps: torch.Tensor, z_t: torch.Tensor, z0: torch.Tensor, a_t: torch.Tensor, w: float) -> torch.Tensor:
    """DDAD eq. 8-9: ε̂ = ε - w √(1-ᾱ_t) (ỹ_t - z_t), ỹ_t = √ᾱ_t z0 + √(1-ᾱ_t) ε.

    ``a_t`` = ᾱ_t broadcastable to z_t (B,1,1,1). Pulls the sample towards the input; w = 0 → ε.
    """
    y_t = a_t.sqrt() * z0 + (1 - a_t).sqrt() * eps
    return eps - w * (1 - a_t).sqrt() * (y_t - z_t)


def reconstruct(
    eps_fn: EpsFn,
    sched: D.Schedule,
    z0: torch.Tensor,
    t_hat: torch.Tensor,
    steps: int,
    w: float,
    noise: torch.Tensor | None = None,
    grid: str = "paper",
    trace: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """DynAD Alg. 1: noiseless start at T̂ (per image), DDAD-guided deterministic DDIM → ẑ0.

    ``noise`` (like z0): start from the noised z_T̂ = √ᾱ z0 + √(1-ᾱ) noise instead (DynAD
    Table 6's ablation of the noiseless start). ``grid``: the timesteps (:func:`ddim_timesteps`).
    ``trace``: a list that receives the start z_T̂ and z after every step (for ``raydiff parity``).

    z0 (B,C,h,w) float32 (latent or image), t_hat (B,) long, best on the CPU (the number of
    steps is read from it before the loop; on an accelerator that read is one host sync, before
    the loop). ``eps_fn(z_t (B,C,h,w), t (B,) long) -> ε`` is called once per step on every
    image; an image whose own steps are done (n_i = min(S, T̂_i) < the step index) is evaluated
    at t = 0 and its result masked out, so the loop never branches on device values (no host
    sync per step). No randomness: ẑ0 depends on z0, T̂ and the model only.
    """
    table = ddim_timesteps(t_hat.cpu(), steps, grid)  # on the CPU: its row count is read here, once
    n_rows = int((table >= 0).any(dim=1).sum()) if table.numel() else 0  # rows with any evaluation
    t_hat = t_hat.to(z0.device).long()
    ts = table[:n_rows].to(z0.device)
    scale = torch.where(t_hat > 0, sched.sqrt_alphas_cumprod.to(z0.device)[t_hat], torch.ones((), device=z0.device))
    z = scale.view(-1, *([1] * (z0.dim() - 1))) * z0  # Alg. 1 line 4: z_T̂ = √ᾱ_T̂ z0, no noise (T̂ = 0: z0)
    if noise is not None:
        sigma = torch.where(t_hat > 0, sched.sqrt_one_minus_alphas_cumprod.to(z0.device)[t_hat],
                            torch.zeros((), device=z0.device))
        z = z + sigma.view(-1, *([1] * (z0.dim() - 1))) * noise
    done = torch.full_like(ts[0], -1) if n_rows else None
    if trace is not None:
        trace.append(z)
    for k in range(n_rows):
        active = (ts[k] >= 0).view(-1, *([1] * (z0.dim() - 1)))
        t = ts[k].clamp(min=0)  # finished images: any valid level, their result is discarded
        t_prev = ts[k + 1] if k + 1 < n_rows else done  # -1: clean
        eps = eps_fn(z, t)
        eps_hat = ddad_guided_eps(eps, z, z0, D.extract(sched.alphas_cumprod, t, z), w)  # line 6
        z_new = D.ddim_step(sched, z, t, t_prev, eps_hat).prev_sample  # line 7
        z = torch.where(active, z_new, z)
        if trace is not None:
            trace.append(z)
    return z


def latent_map(z_hat: torch.Tensor, z0: torch.Tensor, size: int) -> torch.Tensor:
    """l_map = mean_c |ẑ0 - z0| at the latent resolution, bilinearly upsampled: (B,size,size)."""
    return upsample((z_hat - z0).abs().mean(dim=1), size)


def feature_map(phi_x0: Mapping[str, torch.Tensor], phi_hat: Mapping[str, torch.Tensor], size: int) -> torch.Tensor:
    """f_map = Σ_{layer2, layer3} 1 - cos_c(φ(x0), φ(x̂0)), each upsampled: (B,size,size) in [0, 4]."""
    return cosine_distance_map({k: phi_x0[k] for k in FEATURE_LAYERS}, {k: phi_hat[k] for k in FEATURE_LAYERS}, size)


# --------------------------------------------------------------------------------------------
# Shared per-batch quantities
# --------------------------------------------------------------------------------------------


def knn_bins(cache: BatchCache, phi: str = PHI_BASE) -> torch.Tensor:
    """KNN-prior bin per image (B,) long, from layer2 of the shared φ(x0) of φ instance ``phi``
    against the KNN prior fitted over that φ (no extra φ pass).

    ``pooled_layer2`` is what ``raydiff.features.knn_features`` computes for the training images.
    """
    def compute() -> torch.Tensor:
        fitted = cache.ctx.fitted
        knn = None if fitted is None else fitted.knn_for(phi)
        if knn is None:
            raise CheckpointError(
                f"category {cache.ctx.category}",
                f"the dynamic variants need the KNN prior fitted over the {phi} φ, which is missing.",
                "run `raydiff fit` for this config and category before scoring.",
            )
        feats = pooled_layer2(cache.features_x0(phi)["layer2"])
        bins = knn.level(feats.float().cpu().numpy())
        return torch.as_tensor(bins, dtype=torch.long)

    return cache.memo(("dynad", "knn_bin", phi), compute)


def noise_levels(cache: BatchCache, params: DynamicConfig) -> torch.Tensor:
    """T̂ per image (B,) long on the CPU (Alg. 2 line 8, rounded to a multiple of 10 as the reference);
    ``params.fixed_level`` > 0: that level for every image."""
    if params.fixed_level:
        return torch.full((cache.batch,), params.fixed_level, dtype=torch.long)
    bins = knn_bins(cache, phi_key(cache.ctx.cfg.features, params))
    levels = [int(noise_level(int(b), params.t_max, params.bins)) for b in bins.tolist()]
    return torch.tensor(levels, dtype=torch.long)  # on the CPU: ``reconstruct`` reads its max


# --------------------------------------------------------------------------------------------
# Variant interface
# --------------------------------------------------------------------------------------------


def components(cache: BatchCache, variant_id: str, params: DynamicConfig) -> dict[str, torch.Tensor]:
    """Raw maps {"l_map", "f_map"}, each (B,H,W) float32 ≥ 0, higher = more anomalous."""
    kind = cache.model_of(variant_id)
    model = cache.model(kind)
    latent = model.vae is not None
    x0 = cache.x0
    size = x0.shape[-1]
    with torch.no_grad():
        z0 = cache.memo(("dynad", "z0", kind), lambda: model.encode(x0).float()) if latent else x0
        t_hat = noise_levels(cache, params)

        def eps_fn(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # cache.unet counts one pass per image per call (an upper bound when some images
            # have fewer steps than ddim_steps).
            return cache.unet(kind, z_t, t)[0]

        noise = cache.noise(kind, model.noise_kind, tuple(z0.shape)) if params.start == "noised" else None
        z_hat = reconstruct(eps_fn, model.schedule, z0, t_hat, params.ddim_steps, params.guidance_w, noise,
                            grid=params.ddim_grid)
        x_hat = model.decode(z_hat).float() if latent else z_hat
        phi = phi_key(cache.ctx.cfg.features, params)
        phi_hat = cache.ctx.phi(phi)(x_hat)
        phi_x0 = cache.features_x0(phi)
        return {
            "l_map": latent_map(z_hat, z0, size),
            "f_map": feature_map(phi_x0, phi_hat, size),
        }


def combine(
    variant_id: str,
    comps: dict[str, torch.Tensor],
    stats: Mapping[str, tuple[float, float]] | None,
    params: DynamicConfig,
) -> torch.Tensor:
    """Eq. 10: λ·norm(l_map) + (1-λ)·norm(f_map), (B,H,W); raw maps when ``stats`` is None."""
    l_map = normalise(comps["l_map"], stats.get("l_map") if stats else None)
    f_map = normalise(comps["f_map"], stats.get("f_map") if stats else None)
    return params.lam * l_map + (1 - params.lam) * f_map
