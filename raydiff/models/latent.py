"""The ``latent`` model kind's autoencoder: diffusers ``AutoencoderKL``.

Either a local pretrained folder (``models.latent.vae_path``, e.g. a Stable Diffusion VAE the
user downloaded; never fetched at run time) or one trained here per category from scratch:

    loss = mean |x - x̂| + mean (x - x̂)² + kl_weight · KL(q(z|x) ‖ N(0, I)) / (C·H·W)

with x̂ decoded from a posterior sample. The KL is summed over latent elements and divided by
the number of *image* elements, which keeps LDM's ratio of a summed reconstruction loss to a
summed KL (their kl_weight = 1e-6) while the reconstruction terms are per-pixel means.

Latents for the diffusion model are the posterior **mean** (deterministic) times a scale:
``models.latent.scale`` if configured; else the pretrained VAE's own ``scaling_factor``
(SD: 0.18215); else 1 / std of the training latents (docs/methods.md, Models), stored in
meta.json and in the saved VAE's config (``scaling_factor``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import Tensor

from raydiff.config import LatentConfig
from raydiff.config.identity import checked_sha256, vae_keys
from raydiff.errors import ConfigError
from raydiff.models.presets import apply_padding
from raydiff.seeding import derive_seed, generator

#: preset → (widths per level at full depth, res blocks per level).
VAE_PRESETS: dict[str, tuple[tuple[int, ...], int]] = {
    "tiny": ((32, 64, 64, 64, 64, 64), 1),
    "ddad": ((64, 128, 256, 256, 256, 256), 2),
    "anoddpm": ((128, 256, 512, 512, 512, 512), 2),
    # DynAD encodes with Stable Diffusion's VAE (train.py: CompVis/stable-diffusion-v1-4 "vae", test.py:
    # stabilityai/sd-vae-ft-mse; f = 8, widths 128/256/512/512, 2 blocks per level); this is
    # that architecture (deeper levels repeat 512) for a VAE trained here.
    "dynad": ((128, 256, 512, 512, 512, 512), 2),
}


def build_vae(preset: str, channels: int, image_size: int, latent_channels: int, downsample: int,
              padding: str = "zeros") -> AutoencoderKL:
    """A fresh AutoencoderKL: ``downsample`` 2× reductions (latents are image_size / 2**downsample);
    ``padding``: its convolutions' padding mode (``raydiff.models.presets.apply_padding``)."""
    widths, layers = VAE_PRESETS[preset]
    if image_size % (1 << downsample):
        raise ConfigError(
            "models.latent.vae_downsample",
            f"image size {image_size} is not divisible by 2^{downsample}.",
            "lower vae_downsample or use a power-of-two image size.",
        )
    blocks = widths[: downsample + 1]
    vae = AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=blocks,
        layers_per_block=layers,
        latent_channels=latent_channels,
        norm_num_groups=math.gcd(32, blocks[0] // 2),
        sample_size=image_size,
    )
    return apply_padding(vae, padding)  # type: ignore[arg-type]


def load_pretrained_vae(path: str | Path, device: torch.device | str = "cpu") -> AutoencoderKL:
    """A local diffusers AutoencoderKL folder (config.json + weights). Never downloads."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(
            "models.latent.vae_path",
            f"{path} is not a diffusers AutoencoderKL folder (no config.json).",
            "point vae_path at a local folder saved with save_pretrained (e.g. the 'vae' folder of a "
            "Stable Diffusion checkpoint), or set it to null to train a VAE per category.",
        )
    try:
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ConfigError(
            "models.latent.vae_path", f"cannot load the VAE in {path}: {err}".replace("\n", " ")[:500],
            "check that the folder is complete (config.json + safetensors weights).",
        ) from None
    return vae.to(device).eval().requires_grad_(False)


#: What a pretrained folder's config.json says it is (diffusers' own keys; words, not checked).
VAE_IDENTITY_KEYS: tuple[str, ...] = ("_class_name", "_diffusers_version", "_name_or_path")


def pretrained_vae_info(lc: LatentConfig, name: str) -> dict[str, Any]:
    """``meta.json``'s ``vae`` for a model on the pretrained folder ``lc.vae_path`` (``name``: the
    model, for error messages): where it was (``path``), what it is by content (``folder``, its
    name; ``sha256``, ``raydiff.io.folder_sha256``, checked against ``vae_expected_sha256`` and
    the recorded ``vae_sha256``: ConfigError on a mismatch), the expected digest it matched (or
    null), and what its config.json says it is (:data:`VAE_IDENTITY_KEYS` present there)."""
    path = Path(lc.vae_path or "")
    sha = checked_sha256(str(path), True, vae_keys(name), lc.vae_sha256, lc.vae_expected_sha256)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}  # load_pretrained_vae says what is wrong with the folder
    return {"source": "pretrained", "path": str(path.resolve()), "folder": path.name, "sha256": sha,
            "expected_sha256": lc.vae_expected_sha256,
            "config": {k: config[k] for k in VAE_IDENTITY_KEYS if isinstance(config, dict) and k in config}}


def match_channels(x: Tensor, vae_channels: int) -> Tensor:
    if x.shape[1] == vae_channels:
        return x
    if x.shape[1] == 1:
        return x.repeat(1, vae_channels, 1, 1)  # grayscale into an RGB VAE
    raise ValueError(f"cannot feed {x.shape[1]}-channel images to a {vae_channels}-channel VAE")


def encode(vae: AutoencoderKL, x: Tensor, scale: float) -> Tensor:
    """Images (B,C,H,W) in [-1,1] → scale · posterior mean (B, latent_channels, H/f, W/f)."""
    x = match_channels(x, vae.config.in_channels).to(vae.dtype)
    return vae.encode(x).latent_dist.mean * scale


def decode(vae: AutoencoderKL, z: Tensor, scale: float, channels: int) -> Tensor:
    """Scaled latents → images (B, channels, H, W) (mean over RGB for a grayscale dataset)."""
    x = vae.decode(z.to(vae.dtype) / scale).sample
    if x.shape[1] != channels and channels == 1:
        x = x.mean(dim=1, keepdim=True)
    return x


@torch.no_grad()
def latent_std(vae: AutoencoderKL, images: Tensor, batch_size: int) -> float:
    """Standard deviation of the posterior means of ``images`` (all elements pooled)."""
    vae.eval()
    n, s, s2 = 0, 0.0, 0.0
    for i in range(0, images.shape[0], batch_size):
        z = encode(vae, images[i : i + batch_size], 1.0).double()
        n += z.numel()
        s += z.sum().item()
        s2 += z.square().sum().item()
    mean = s / n
    return math.sqrt(max(s2 / n - mean * mean, 1e-24))


def vae_loss(vae: AutoencoderKL, x: Tensor, kl_weight: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(total loss, reconstruction loss) for one batch (B,C,H,W) in [-1, 1]."""
    post = vae.encode(x).latent_dist
    eps = torch.randn(post.mean.shape, generator=generator, device="cpu").to(post.mean.device, post.mean.dtype)
    z = post.mean + post.std * eps
    x_hat = vae.decode(z).sample
    rec = (x_hat - x).abs().mean() + (x_hat - x).square().mean()
    kl = post.kl().mean() / x[0].numel()
    return rec + kl_weight * kl, rec


def train_vae(
    vae: AutoencoderKL,
    images: Tensor,
    steps: int,
    lr: float,
    kl_weight: float,
    batch_size: int,
    seed: int,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    log: Callable[[int, float], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> AutoencoderKL:
    """Train ``vae`` on ``images`` (N,C,H,W) in [-1,1] for ``steps`` AdamW steps (deterministic per seed)."""
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    device = images.device
    for step in range(steps):
        g = generator(derive_seed(seed, "vae-step", step))
        idx = torch.randint(images.shape[0], (min(batch_size, images.shape[0]),), generator=g).to(device)
        x = images[idx]
        if augment is not None:
            x = augment(x, g)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss, rec = vae_loss(vae, x, kl_weight, g)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if log is not None:
            log(step + 1, loss.item())
    return vae.eval().requires_grad_(False)
