"""What a variant sees: the category's models and fitted state, and a per-batch cache.

The cache is how variants share work: every variant that asks for ε_θ at the same (model kind,
t, noise draw) gets the same tensor, computed once; φ(x0) is computed once per batch. Noise draws
are seeded from (run seed, image id, noise kind) so that the same x_t is shared across variants
and a score never depends on the batch an image was scored in.

UNet forward passes are counted per variant and in total, per image (``cache.forwards``), and
so are backward passes (``cache.backwards``: trend's input gradients) and noise draws
(``cache.noise_draws``), for the benchmarks.

Engine settings (``cfg.scoring``; :func:`engine_context` applies them): UNet calls run under
bf16 autocast or in fp32 (``precision``), optionally in channels_last memory format and through
``torch.compile`` (once per context, i.e. per actor and category). Two things always run in fp32,
whatever the setting: trend's input gradient (a difference of nearby ε values scaled by up to
1/√ᾱ_t; bf16's 8-bit mantissa would leave mostly rounding noise in it) and φ (the KNN prior's bin
edges are thresholds on fp32 L1 distances measured at fit time; bf16 features would move
images across them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from raydiff import diffusion as D
from raydiff.config import Config, NoiseKind
from raydiff.config.schema import Precision, ScoringConfig
from raydiff.errors import CheckpointError
from raydiff.features import PHI_BASE, ResNetFeatures
from raydiff.models.checkpoint import DiffusionModel
from raydiff.noise import sample_noise
from raydiff.seeding import derive_seed


def autocast_dtype(precision: Precision, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of UNet calls (None = fp32): ``auto`` is bf16 on CUDA, fp32 elsewhere."""
    device = torch.device(device)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if precision in ("auto", "fp32"):
        return None
    raise ValueError(f"scoring.precision must be auto, bf16 or fp32, got {precision!r}")


@dataclass
class CategoryContext:
    """Everything loaded once per (actor, category): models by kind, φ, fitted state."""

    cfg: Config
    category: str
    #: Model kind → DiffusionModel (raydiff.models.checkpoint.load_model).
    models: dict[str, DiffusionModel]
    #: The base feature extractor φ (raydiff.features: the file's weights or the calibrated random
    #: init), eval mode, on ``device``: RAN's feature term and DynAD's unadapted instances.
    features: ResNetFeatures
    #: Fitted state (raydiff.scoring.fit.FittedState) or None while fitting. Typed Any: fit.py
    #: imports this module, and tests/test_layers.py counts a TYPE_CHECKING import back as a cycle.
    fitted: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: Autocast dtype of UNet calls (None = fp32); :func:`engine_context` sets it from
    #: ``cfg.scoring.precision``.
    autocast_dtype: torch.dtype | None = None
    #: UNet inputs in channels_last memory format (the models' weights were converted).
    channels_last: bool = False
    #: Model kind → the callable that runs its UNet (a ``torch.compile``-d one; absent:
    #: ``models[kind].unet``).
    unets: dict[str, Callable[..., Any]] = field(default_factory=dict)
    #: Further φ instances by key (``raydiff.features.PHI_ADAPTED``: DynAD's domain-adapted copy),
    #: each its own module, so adapting one never changes another consumer's φ.
    phis: dict[str, ResNetFeatures] = field(default_factory=dict)

    def phi(self, key: str) -> ResNetFeatures:
        """The φ instance ``key`` (``PHI_BASE``: ``features``); CheckpointError when it was not fitted."""
        if key == PHI_BASE:
            return self.features
        if key not in self.phis:
            raise CheckpointError(f"category {self.category}", f"no '{key}' feature extractor φ was fitted.",
                                  "run `raydiff fit` for this config and category again.")
        return self.phis[key]


def engine_context(
    cfg: Config, category: str, models: dict[str, DiffusionModel], features: ResNetFeatures, fitted: Any = None,
    device: torch.device | str = "cpu", scoring: ScoringConfig | None = None,
) -> CategoryContext:
    """A :class:`CategoryContext` with the engine settings of ``scoring`` (default
    ``cfg.scoring``) applied: precision, channels_last (converts the UNets' weights in place)
    and torch.compile (one compiled callable per UNet, static shapes: a new batch shape
    recompiles once). Fit and score both build their context here."""
    device = torch.device(device)
    sc = scoring or cfg.scoring
    unets: dict[str, Callable[..., Any]] = {}
    for kind, model in models.items():
        # A torch module: mypy resolves diffusers' UNet2DModel to its no-torch dummy class.
        unet = cast(torch.nn.Module, model.unet)
        if sc.channels_last:  # Module.to takes memory_format, which torch's type stubs omit
            unet.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if sc.compile:
            unets[kind] = torch.compile(unet, dynamic=False)
    return CategoryContext(
        cfg=cfg, category=category, models=models, features=features, fitted=fitted, device=device,
        autocast_dtype=autocast_dtype(sc.precision, device), channels_last=sc.channels_last, unets=unets,
    )


class BatchCache:
    """Memoised model evaluations for one batch of images (B,C,H,W) in [-1, 1]."""

    def __init__(self, ctx: CategoryContext, images: torch.Tensor, image_ids: list[str]) -> None:
        if images.dim() != 4 or len(image_ids) != images.shape[0]:
            raise ValueError(f"images must be (B,C,H,W) with one id each, got {tuple(images.shape)}")
        self.ctx = ctx
        self.x0 = images.to(ctx.device, torch.float32)
        self.image_ids = list(image_ids)
        self.batch = images.shape[0]
        self._memo: dict[tuple[Any, ...], Any] = {}
        #: UNet forward passes per image, by the variant family that first asked.
        self.forwards: Counter[str] = Counter()
        #: UNet backward passes per image (trend's input gradients), by family.
        self.backwards: Counter[str] = Counter()
        #: Forward passes per image a family used that another family made first (memo hits),
        #: and the family whose pass it first rode on.
        self.shared_forwards: Counter[str] = Counter()
        self.rides_on: dict[str, str] = {}
        self._passes: dict[tuple[Any, ...], tuple[str, int]] = {}
        #: Noise draws for the whole batch, by (noise kind, shape).
        self.noise_draws: Counter[tuple[str, tuple[int, ...]]] = Counter()
        self.current: str = "shared"

    # -- bookkeeping -------------------------------------------------------------------------

    def memo(self, key: tuple[Any, ...], compute: Any) -> Any:
        if key not in self._memo:
            before = self.forwards[self.current]
            self._memo[key] = compute()
            if self.forwards[self.current] > before:  # it ran the UNet: remember who, and how often
                self._passes[key] = (self.current, self.forwards[self.current] - before)
        elif key in self._passes and self._passes[key][0] != self.current:
            owner, n = self._passes[key]
            self.shared_forwards[self.current] += n
            self.rides_on.setdefault(self.current, owner)
        return self._memo[key]

    def count_forward(self, n: int = 1) -> None:
        """Record ``n`` UNet forward passes per image for the current variant family."""
        self.forwards[self.current] += n

    def seeds(self, *purpose: object) -> list[int]:
        return [derive_seed(self.ctx.cfg.seed, image_id, *purpose) for image_id in self.image_ids]

    # -- shared quantities --------------------------------------------------------------------

    def model(self, kind: str) -> DiffusionModel:
        return self.ctx.models[kind]

    def model_of(self, variant: str) -> str:
        """The name of the model variant ``variant`` scores with (``cfg.variants.model``)."""
        return self.ctx.cfg.variants.model(variant)

    def noise(self, kind: str, noise_kind: str, shape: tuple[int, ...] | None = None, draw: int = 0) -> torch.Tensor:
        """The shared noise draw ``draw`` of ``noise_kind`` for model ``kind`` (B,C,H,W)."""
        shape = shape or tuple(self.x0.shape)

        def compute() -> torch.Tensor:
            return self.draw_noise(noise_kind, shape, self.seeds("noise", kind, noise_kind, draw), kind)

        return self.memo(("noise", kind, noise_kind, shape, draw), compute)

    def draw_noise(self, noise_kind: str, shape: tuple[int, ...], seeds: list[int], model: str) -> torch.Tensor:
        """A counted noise draw (B,C,H,W) on the context's device, one seed per image, with the
        noise settings (simplex octaves, GMM bumps) of model ``model``."""
        self.noise_draws[(noise_kind, tuple(shape))] += 1
        spec = self.ctx.cfg.model_spec(model)
        # A model's noise kind is a str (its meta.json), a shape any tuple: sample_noise checks
        # both (a known kind, four positive sizes) before drawing.
        kind, shape4 = cast(NoiseKind, noise_kind), cast(tuple[int, int, int, int], shape)
        return sample_noise(kind, shape4, seeds, spec, device=self.ctx.device)

    def reverse_variance(self, model: str, requested: str) -> str:
        """σ² of a ddpm step: the variant's ``variance`` (``fixed-large``), or with ``model`` the
        model's own (its spec's ``variance``: learned, fixed-small β̃ or fixed-large β)."""
        if requested == "model" and self.ctx.cfg.model_spec(model).variance == "fixed-large":
            return "fixed-large"
        return requested

    def unet(self, kind: str, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One counted UNet call of model ``kind``: → (ε, v or None), fp32."""
        self.count_forward()
        return self._call_unet(kind, x_t, t)

    def _call_unet(
        self, kind: str, x_t: torch.Tensor, t: torch.Tensor, fp32: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ε, v or None) as fp32 tensors; the UNet runs under the context's autocast dtype
        unless ``fp32`` (trend's gradient pass)."""
        model = self.model(kind)
        compiled = self.ctx.unets.get(kind)
        dtype = None if fp32 else self.ctx.autocast_dtype
        x = x_t.contiguous(memory_format=torch.channels_last) if self.ctx.channels_last else x_t
        with torch.autocast(self.ctx.device.type, dtype=dtype, enabled=dtype is not None):
            if compiled is None:
                eps, v = model.model_output(x, t)
            else:
                eps, v = D.split_model_output(compiled(x, t.to(x.device)).sample, x.shape[1], model.learned_variance)
        return eps.float(), (v.float() if v is not None else None)

    def x_t(self, kind: str, x0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        sched = self.model(kind).schedule
        tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        return D.q_sample(sched, x0, tt, noise)

    def forward_eps(
        self, kind: str, t: int, noise_kind: str, x0: torch.Tensor | None = None, space: str = "pixel", draw: int = 0
    ) -> dict[str, torch.Tensor]:
        """ε_θ(x_t, t) at x_t = q_sample(x0, t, shared noise): shared by every variant that asks.

        Returns {"x_t", "eps", "v" (or absent)}; ``space`` names what x0 is ("pixel" or "latent").
        """

        def compute() -> dict[str, torch.Tensor]:
            base = self.x0 if x0 is None else x0
            noise = self.noise(kind, noise_kind, tuple(base.shape), draw)
            xt = self.x_t(kind, base, t, noise)
            tt = torch.full((base.shape[0],), t, dtype=torch.long, device=base.device)
            with torch.no_grad():
                eps, v = self.unet(kind, xt, tt)
            out = {"x_t": xt, "eps": eps, "noise": noise}
            if v is not None:
                out["v"] = v
            return out

        return self.memo(("forward_eps", kind, t, noise_kind, space, draw), compute)

    def eps_and_input_grad(
        self, kind: str, t: int, noise_kind: str, probe: torch.Tensor, space: str = "pixel", draw: int = 0
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """ε_θ at ``forward_eps``'s x_t and ∂(Σ ε_θ·probe)/∂x_t (B,C,H,W), from one forward pass with
        autograd and one backward pass.

        The forward pass also serves ``forward_eps``: when its memo is empty this pass fills it
        (so variants asking later reuse it); when it is full the memoised tensors are returned
        (so every variant sees the same ε, whichever asked first). ``probe`` (B,C,H,W) is a
        fixed per-image direction (Kim et al.'s uncertainty); the gradient is per image because
        the UNet has no cross-image operation.
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "raydiff.scoring.context.BatchCache.eps_and_input_grad: called under torch.inference_mode(), "
                "where no gradient can be taken (trend's uncertainty needs one backward pass per level). "
                "Fix: score under torch.no_grad() instead of torch.inference_mode()."
            )
        key = ("forward_eps", kind, t, noise_kind, space, draw)
        noise = self.noise(kind, noise_kind, tuple(self.x0.shape), draw)
        xt = self.x_t(kind, self.x0, t, noise).detach()
        tt = torch.full((xt.shape[0],), t, dtype=torch.long, device=xt.device)
        # The backward pass keeps every activation of the forward pass: ``ray.gradient_chunk``
        # images at a time bounds that memory (one counted forward per batch, as without chunks).
        chunk = self.ctx.cfg.ray.gradient_chunk or xt.shape[0]
        parts: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        self.count_forward()
        self.backwards[self.current] += 1
        for s in range(0, xt.shape[0], chunk):
            x_part = xt[s : s + chunk].detach().requires_grad_(True)
            with torch.enable_grad():
                # fp32 whatever ``scoring.precision`` says: see the module docstring.
                e, vv = self._call_unet(kind, x_part, tt[s : s + chunk], fp32=True)
                (g,) = torch.autograd.grad((e * probe[s : s + chunk]).sum(), x_part)
            parts.append((e.detach(), None if vv is None else vv.detach(), g))
        eps = torch.cat([p[0] for p in parts])
        vs = [p[1] for p in parts if p[1] is not None]  # all chunks or none: one model
        v = torch.cat(vs) if vs else None
        grad = torch.cat([p[2] for p in parts])
        if key not in self._memo:
            out = {"x_t": xt, "eps": eps, "noise": noise}
            if v is not None:
                out["v"] = v
            self._memo[key] = out
        return self._memo[key], grad

    def features_x0(self, phi: str = PHI_BASE) -> dict[str, torch.Tensor]:
        """φ(x0): layer2/layer3 features of the input images by φ instance ``phi`` (computed once each)."""

        def compute() -> dict[str, torch.Tensor]:
            with torch.no_grad():  # fp32, outside any autocast: see the module docstring
                return self.ctx.phi(phi)(self.x0)

        return self.memo(("phi_x0", phi), compute)
