"""What a variant sees: the category's models and fitted state, and a per-batch cache.

The cache is how variants share work: every variant that asks for ε_θ at the same (model kind,
t, noise draw) gets the same tensor, computed once; φ(x0) is computed once per batch. Noise draws
are seeded from (run seed, image id, noise kind) so that the same x_t is shared across variants
and a score never depends on the batch an image was scored in.

UNet forward passes are counted per variant and in total, per image (``cache.forwards``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from raydiff import diffusion as D
from raydiff.config import Config
from raydiff.noise import sample_noise
from raydiff.seeding import derive_seed


@dataclass
class CategoryContext:
    """Everything loaded once per (actor, category): models by kind, φ, fitted state."""

    cfg: Config
    category: str
    #: Model kind → DiffusionModel (raydiff.models.checkpoint.load_model).
    models: dict[str, Any]
    #: ResNet-34 feature extractor φ (raydiff.features), eval mode, on ``device``.
    features: Any
    #: Fitted state (raydiff.scoring.fit.FittedState) or None while fitting.
    fitted: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: Autocast dtype for UNet calls on GPU (None = fp32).
    autocast_dtype: torch.dtype | None = None


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
        self.current: str = "shared"

    # -- bookkeeping -------------------------------------------------------------------------

    def memo(self, key: tuple[Any, ...], compute: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def count_forward(self, n: int = 1) -> None:
        """Record ``n`` UNet forward passes per image for the current variant family."""
        self.forwards[self.current] += n

    def seeds(self, *purpose: object) -> list[int]:
        return [derive_seed(self.ctx.cfg.seed, image_id, *purpose) for image_id in self.image_ids]

    # -- shared quantities --------------------------------------------------------------------

    def model(self, kind: str) -> Any:
        return self.ctx.models[kind]

    def noise(self, kind: str, noise_kind: str, shape: tuple[int, ...] | None = None, draw: int = 0) -> torch.Tensor:
        """The shared noise draw ``draw`` of ``noise_kind`` for model ``kind`` (B,C,H,W)."""
        shape = shape or tuple(self.x0.shape)

        def compute() -> torch.Tensor:
            seeds = self.seeds("noise", kind, noise_kind, draw)
            return sample_noise(noise_kind, shape, seeds, self.ctx.cfg.models, device="cpu").to(self.ctx.device)  # type: ignore[arg-type]

        return self.memo(("noise", kind, noise_kind, shape, draw), compute)

    def unet(self, kind: str, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One counted UNet call of model ``kind``: → (ε, v or None), fp32."""
        self.count_forward()
        return self._call_unet(kind, x_t, t)

    def _call_unet(self, kind: str, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = self.model(kind)
        dtype = self.ctx.autocast_dtype
        with torch.autocast(self.ctx.device.type, dtype=dtype, enabled=dtype is not None):
            eps, v = model.model_output(x_t, t)
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
        for s in range(0, xt.shape[0], chunk):
            x_part = xt[s : s + chunk].detach().requires_grad_(True)
            with torch.enable_grad():
                e, vv = self._call_unet(kind, x_part, tt[s : s + chunk])
                (g,) = torch.autograd.grad((e * probe[s : s + chunk]).sum(), x_part)
            parts.append((e.detach(), None if vv is None else vv.detach(), g))
        eps = torch.cat([p[0] for p in parts])
        v = None if parts[0][1] is None else torch.cat([p[1] for p in parts])  # type: ignore[misc]
        grad = torch.cat([p[2] for p in parts])
        if key not in self._memo:
            out = {"x_t": xt, "eps": eps, "noise": noise}
            if v is not None:
                out["v"] = v
            self._memo[key] = out
        return self._memo[key], grad

    def features_x0(self) -> dict[str, torch.Tensor]:
        """φ(x0): ResNet-34 layer2/layer3 features of the input images (computed once)."""

        def compute() -> dict[str, torch.Tensor]:
            with torch.no_grad():
                return self.ctx.features(self.x0)

        return self.memo(("phi_x0",), compute)
