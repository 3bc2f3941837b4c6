"""AnoDDPM (Julian-Wyatt/AnoDDPM) against raydiff's simplex noise and ``static-*`` reconstruction.

Two things of AnoDDPM's are in raydiff: its simplex noise (``simplex.py``: ``Simplex_CLASS``,
``rand_3d_fixed_T_octaves``; ``GaussianDiffusion.generate_simplex_noise``) and its partial-diffusion
reconstruction (``GaussianDiffusionModel.forward_backward``), which the ``static-*`` variants
(Kashihara, Fučka) follow. Stages, per role:

**Noise** (model role ``simplex``; the config's octaves / persistence / frequency):
``generate_simplex_noise`` is run on a (1, C, H, W) input at slice t = :data:`SLICE_T`; the
OpenSimplex seeds it draws (``np.random``, one per channel) are recorded at ``simplex._init`` and
given to raydiff's ``fractal_simplex`` (raydiff.noise.simplex) with z = t:

- raw octave sum at AnoDDPM's f_0 (``frequency`` px at every size): must agree;
- raw octave sum at raydiff's own f_0 = frequency·H/256: deviation (methods.md "simplex",
  feature size; identical at 256 px);
- raydiff's standardised map against AnoDDPM's raw one: deviation (methods.md "simplex", scale).

**Reconstruction** (roles ``simplex`` and ``gaussian``): AnoDDPM's ``t_distance`` λ noises to
``sample_q(x, λ-1)`` (its arrays are 0-based, its λ is the paper's 1-based t), then walks
``sample_p`` at t = λ-1 … 0, σ² = β_t ("fixed large": ``model_var = [β̃_1, β_1, β_2, …]``),
x̂0 clamped to [-1, 1]. raydiff's ``t0`` noises to ᾱ[t0] (diffusers indexing), so the check runs
raydiff with t0 = :data:`T0`, S = t0 steps, ``ddpm``, ``variance: fixed-large`` and AnoDDPM with
λ = T0 + 1: the same x_t0. Both get the same model (raydiff's UNet as AnoDDPM's ``model(x, t) -> ε``;
a learned variance's v is not used by AnoDDPM), the same images and the same noise: raydiff's
own draws (its ``BatchCache``: forward draw, one z per step) are fed to the reference by patching
``GaussianDiffusion.generate_simplex_noise`` and ``torch.randn_like`` inside the call.

raydiff's chain evaluates the UNet at τ = t0 … 1 and its last step goes from level 1 straight to
the clean image (``raydiff.scoring.sampling``: ``reverse_timesteps`` keeps τ ≥ 1); AnoDDPM also
steps from level 1 to level 0 (adding σ_1·z) and takes x̂0 there, one UNet call more. So:

- x_t0 and x after 1, 2 and T0-1 steps (level 1): must agree;
- raydiff's x̂0 against AnoDDPM's x̂0 at level 1 (``p_mean_variance(model, x_1, 1)["pred_x_0"]``,
  which is what raydiff's merged last step returns) and the map Σ_c (x0 - x̂0)² from it: must agree;
- raydiff's x̂0 and map against ``forward_backward``'s output (the extra level-0 step, z drawn as
  raydiff would at τ = 1): deviation (static: last level);
- raydiff's x̂0 with its default ``variance: model`` (β̃_t for a fixed-small model, learned for
  the Gaussian one) against AnoDDPM's x̂0 at level 1: deviation (static: reverse variance).

AnoDDPM's map is ``(image - output).square()`` (detection.py), per channel on its 1-channel MRI;
raydiff sums it over channels (Fučka eq. 6); the check applies the channel sum to both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from raydiff.config import SimplexConfig, StaticConfig
from raydiff.noise.simplex import SimplexMaps, fractal_simplex
from raydiff.noise.standardise import standardise
from raydiff.parity.compare import Stage
from raydiff.parity.inputs import ParityInputs, model_roles
from raydiff.parity.refs import NoiseFeed, Reference, patched
from raydiff.scoring.context import BatchCache, engine_context
from raydiff.scoring.kashihara_static import squared_error_map
from raydiff.scoring.sampling import reverse_to_clean

REFERENCE = "anoddpm"
MODULES = ("simplex", "GaussianDiffusion")
#: Off the compared path: helpers.py (torchvision.utils: image grids), evaluation.py (skimage,
#: sklearn: metrics), GaussianDiffusion/simplex (matplotlib: plots). numba is ON the path (simplex).
ABSENT: tuple[str, ...] = ("torchvision", "cv2", "skimage", "sklearn", "matplotlib", "nibabel", "lpips")
METHOD = "anoddpm"

#: raydiff's t0 of the compared chain (AnoDDPM's t_distance = T0 + 1): small, every level walked.
T0 = 20
#: The slice z (= AnoDDPM's timestep argument) of the compared simplex maps.
SLICE_T = 249
#: AnoDDPM's ``sample_p`` ``denoise_fn`` per role (detection.py passes args["noise_fn"]).
DENOISE_FN = {"simplex": "simplex", "gaussian": "gauss"}
#: AnoDDPM's linear schedule at T = 1000 (get_beta_schedule: scaled by 1000 / T).
ANODDPM_LINEAR = (1e-4, 0.02)


class _EpsModel:
    """raydiff's UNet in AnoDDPM's model interface: ``model(x, t) -> ε`` (t LongTensor (B,))."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps, _v = self.model.model_output(x.float(), t.long().to(x.device))
        return eps.float()


@contextmanager
def _numpy_rng(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (AnoDDPM draws its OpenSimplex seeds there); restore it after."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextmanager
def _recorded_seeds(simplex_mod: Any) -> Iterator[list[int]]:
    """The seeds ``Simplex_CLASS.newSeed`` passes to ``simplex._init``, in order."""
    real = simplex_mod._init
    seen: list[int] = []

    def record(seed: Any = None, *args: Any, **kwargs: Any) -> Any:
        seen.append(int(seed))
        return real(seed, *args, **kwargs)

    simplex_mod._init = record
    try:
        yield seen
    finally:
        simplex_mod._init = real


class _RecordingCache(BatchCache):
    """raydiff's batch cache, recording its noise draws and the inputs of its UNet calls."""

    def __init__(self, ctx: Any, images: torch.Tensor, image_ids: list[str], model_name: str) -> None:
        super().__init__(ctx, images, image_ids)
        self.model_name = model_name
        self.draws: list[torch.Tensor] = []
        self.unet_inputs: list[tuple[int, torch.Tensor]] = []
        self._draw_memo: dict[tuple[Any, ...], torch.Tensor] = {}

    def model_of(self, variant: str) -> str:
        return self.model_name

    def draw_noise(self, noise_kind: str, shape: tuple[int, ...], seeds: list[int], model: str) -> torch.Tensor:
        # A draw is a function of its seeds: the second chain (variance: model) reuses the first's.
        key = (noise_kind, tuple(shape), tuple(seeds), model)
        if key not in self._draw_memo:
            self._draw_memo[key] = super().draw_noise(noise_kind, shape, seeds, model)
        z = self._draw_memo[key]
        self.draws.append(z)
        return z

    def unet(self, kind: str, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.unet_inputs.append((int(t[0]), x_t.detach().clone()))
        return super().unet(kind, x_t, t)


def _simplex_cfg(inputs: ParityInputs) -> SimplexConfig:
    name = model_roles(inputs.cfg).get("simplex")
    return inputs.cfg.model_spec(name).simplex if name else SimplexConfig()


def noise_stages(ref: Reference, inputs: ParityInputs) -> list[Stage]:
    """The simplex octave sum: AnoDDPM's ``generate_simplex_noise`` against raydiff's ``fractal_simplex``."""
    gd, sx = ref.module("GaussianDiffusion"), ref.module("simplex")
    cfg = _simplex_cfg(inputs)
    c, h, w = inputs.images.shape[1:]
    x = torch.zeros(1, c, h, w)
    t = torch.tensor([SLICE_T])
    with _numpy_rng(inputs.seed), _recorded_seeds(sx) as seeds:
        inst = sx.Simplex_CLASS()
        theirs = gd.generate_simplex_noise(inst, x, t, False, octave=cfg.octaves, persistence=cfg.persistence,
                                           frequency=cfg.frequency, in_channels=c)
    seeds = seeds[-c:]  # the instance's own first seed is overwritten per channel
    theirs = theirs[0].float()  # (C, H, W): AnoDDPM works at batch size 1
    maps = SimplexMaps(tuple(seeds), (float(SLICE_T),) * c)
    # AnoDDPM's f_0 is `frequency` px at every size; raydiff's is frequency·H/256: pass the
    # reference's feature size through raydiff's scaling.
    at_ref = replace(cfg, frequency=cfg.frequency * 256 / h)
    ours_ref = fractal_simplex(maps, h, w, at_ref)
    ours_own = fractal_simplex(maps, h, w, cfg)
    f_own = cfg.frequency * h / 256
    params = f"{cfg.octaves} octaves, persistence {cfg.persistence}, slice t={SLICE_T}, seeds from AnoDDPM's newSeed"
    return [
        Stage(METHOD, f"simplex octave sum, f0={cfg.frequency:g} px (AnoDDPM's)", ours_ref, theirs,
              note=f"raw (unstandardised); {params}"),
        Stage(METHOD, f"simplex octave sum, f0={f_own:g} px (raydiff's at {h} px)", ours_own, theirs,
              deviation=None if f_own == cfg.frequency else "simplex: feature size",
              note="raydiff scales f0 with the image size (identical at 256 px)"),
        Stage(METHOD, "simplex map standardised (raydiff) vs raw (AnoDDPM)", standardise(ours_ref), theirs,
              deviation="simplex: scale", note="raydiff standardises each map; AnoDDPM never rescales"),
    ]


def _schedule_stage(gd: Any, sched: Any, role: str) -> list[Stage]:
    kind, steps = str(sched.kind), int(sched.timesteps)
    if kind not in ("linear", "cosine"):
        return []
    theirs = torch.from_numpy(np.asarray(gd.get_beta_schedule(steps, kind), dtype=np.float64))
    deviation = None
    if kind == "linear":
        scale = 1000 / steps
        want = (ANODDPM_LINEAR[0] * scale, ANODDPM_LINEAR[1] * scale)
        got = (float(sched.betas[0]), float(sched.betas[-1]))
        if not np.allclose(got, want, rtol=1e-5):
            deviation = "config: beta range"
    return [Stage(METHOD, f"{role}: beta schedule ({kind}, T={steps})", sched.betas.double().cpu(), theirs,
                  deviation=deviation, note="get_beta_schedule; the chains below use raydiff's betas on both sides")]


def chain_stages(ref: Reference, inputs: ParityInputs, role: str) -> list[Stage]:
    """Partial diffusion to T0 and reconstruction: AnoDDPM's ``forward_backward`` against raydiff's
    ``static`` chain (``BatchCache.forward_eps`` + ``reverse_to_clean`` + ``squared_error_map``)."""
    gd = ref.module("GaussianDiffusion")
    model = inputs.model(role)
    name = model_roles(inputs.cfg)[role]
    sched = model.schedule
    x0 = inputs.images.float()
    device = x0.device
    b, c, h, w = x0.shape
    out = _schedule_stage(gd, sched, role)

    # --- raydiff: the static variant's own code, σ² = β_t (AnoDDPM's "fixed large") -----------
    scoring = replace(inputs.cfg.scoring, precision="fp32", compile=False, channels_last=False)
    ctx = engine_context(inputs.cfg, inputs.category, {name: model}, inputs.features, device=device, scoring=scoring)
    cache = _RecordingCache(ctx, x0, list(inputs.image_ids), name)
    vid = f"parity-anoddpm-{role}"
    shared = cache.forward_eps(name, T0, model.noise_kind)
    params = StaticConfig(t0=T0, steps=T0, sampler="ddpm", variance="fixed-large")  # validated like a variant's
    ours_x0 = reverse_to_clean(cache, name, shared["x_t"], params.t0, params.steps, params.sampler, purpose=(vid,),
                               first=(shared["eps"], shared.get("v")), variance=params.variance)
    ours_map = squared_error_map(cache.x0, ours_x0)
    draws = list(cache.draws)  # [forward n, z at τ = T0 … 2]
    xs = {T0 - k: x for k, (_t, x) in enumerate(cache.unet_inputs)}  # level → x (levels T0 … 1)
    if len(draws) != T0 or sorted(xs) != list(range(1, T0 + 1)):
        raise RuntimeError(f"raydiff's chain took {len(draws)} draws and UNet calls at {sorted(xs)}; expected "
                           f"{T0} draws and levels 1..{T0} (raydiff.scoring.sampling changed? update this check)")
    # The z raydiff would draw at τ = 1 if it stepped to level 0 (AnoDDPM does), and t = 0's (unused).
    z_level1 = cache.draw_noise(model.noise_kind, (b, c, h, w), cache.seeds("reverse", vid, 1), name)
    own_x0 = reverse_to_clean(cache, name, shared["x_t"], T0, T0, "ddpm", purpose=(vid,),
                              first=(shared["eps"], shared.get("v")), variance="model")

    # --- AnoDDPM: forward_backward with t_distance = T0 + 1 (sample_q at index T0) -------------
    eps_model = _EpsModel(model)
    betas = sched.betas.detach().to("cpu", torch.float64).numpy()
    with _numpy_rng(inputs.seed):
        diff = gd.GaussianDiffusionModel((h, w), betas, img_channels=c, loss_type="l2", loss_weight="none",
                                         noise="simplex" if role == "simplex" else "gauss")
    # AnoDDPM's noise calls, looked up at call time by noise_fn and sample_p, take raydiff's draws in order.
    feed = NoiseFeed(draws + [z_level1, torch.zeros_like(x0)], dtype=torch.float32)
    with (patched(gd, "generate_simplex_noise", lambda _self, x, *a, **k: feed(x)),
          patched(torch, "randn_like", feed)):
        seq = diff.forward_backward(eps_model, x0, see_whole_sequence="half", t_distance=T0 + 1,
                                    denoise_fn=DENOISE_FN[role])
    feed.check_all_taken()
    seq = [s.to(device) for s in seq]  # [x0, x_T0, then x after each step: levels T0-1 … 0, output]
    theirs_x0 = seq[-1]
    t1 = torch.full((b,), 1, dtype=torch.long, device=device)
    theirs_x0_at1 = diff.p_mean_variance(eps_model, seq[T0], t1)["pred_x_0"]

    note_chain = (f"t0={T0} (AnoDDPM t_distance={T0 + 1}), S={T0} ddpm steps, σ²=β_t, x̂0 clipped; "
                  f"raydiff's draws fed to both; {'simplex' if role == 'simplex' else 'Gaussian'} noise")
    out.append(Stage(METHOD, f"{role}: x_t0 (sample_q)", xs[T0], seq[1], note=note_chain))
    for k in sorted({1, 2, T0 - 1}):
        out.append(Stage(METHOD, f"{role}: x after {k} reverse steps (level {T0 - k})", xs[T0 - k], seq[1 + k]))
    out.append(Stage(METHOD, f"{role}: x̂0 (AnoDDPM's x̂0 at level 1)", ours_x0, theirs_x0_at1,
                     note="raydiff's last step goes from level 1 to the clean image: AnoDDPM's pred_x_0 there"))
    out.append(Stage(METHOD, f"{role}: map Σc(x0-x̂0)² (AnoDDPM's x̂0 at level 1)", ours_map,
                     (x0 - theirs_x0_at1).square().sum(dim=1), kind="map"))
    out.append(Stage(METHOD, f"{role}: x̂0 (forward_backward output)", ours_x0, theirs_x0,
                     deviation="static: last level",
                     note="AnoDDPM also steps level 1 → 0 (σ_1·z) and takes x̂0 at level 0; raydiff's τ ≥ 1"))
    out.append(Stage(METHOD, f"{role}: map Σc(x0-x̂0)² (forward_backward output)", ours_map,
                     (x0 - theirs_x0).square().sum(dim=1), kind="map", deviation="static: last level"))
    var_name = ctx.cfg.model_spec(name).variance
    if var_name != "fixed-large":
        out.append(Stage(METHOD, f"{role}: x̂0 with raydiff's variance: model ({var_name})", own_x0, theirs_x0_at1,
                         deviation="static: reverse variance",
                         note="AnoDDPM: σ²=β_t (fixed large); raydiff's default static variance: the model's"))
    return out


def _no_numba_cache(module: Any) -> None:
    """Turn off the numba cache of ``module``'s ``@njit(cache=True)`` functions (AnoDDPM's simplex.py)
    before their first call. numba's default writes it into the checkout's ``__pycache__`` (the
    harness writes nothing into a user's checkout), and reading it back fails for a module the
    harness imported and then took out of ``sys.modules`` (``No module named '<dynamic>'``).
    They compile on every run instead (~20 s). A no-op without numba."""
    try:  # lazy, in the try: part of this patch of the reference's numba functions, a no-op without numba
        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher
    except ImportError:
        return
    for obj in vars(module).values():
        if isinstance(obj, Dispatcher):
            obj._cache = NullCache()


def stages(ref: Reference, inputs: ParityInputs) -> list[Stage]:
    _no_numba_cache(ref.module("simplex"))
    out = noise_stages(ref, inputs)
    roles = model_roles(inputs.cfg)
    for role in ("simplex", "gaussian"):
        if role in roles:
            out += chain_stages(ref, inputs, role)
    return out
