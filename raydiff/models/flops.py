"""Model FLOPs counted by torch's FLOP counter on shapes alone (meta tensors: no weights, no compute).

Used to price work before it runs: packing trainings (``raydiff.train.launch``) and the
schedule benchmark. Counted: matmuls and convolutions (2 FLOP per multiply-accumulate), as is
usual for "model FLOPs"; a training step costs 3x the forward (forward + backward).
"""

from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from raydiff.config import Config
from raydiff.models.latent import build_vae
from raydiff.models.presets import build_unet

#: Forward + backward of a training step, in forwards.
TRAIN_STEP_FORWARDS = 3.0


@functools.lru_cache(maxsize=64)
def unet_forward_flops(preset: str, in_channels: int, out_channels: int, size: int, base: int | None) -> float:
    """FLOP of one UNet forward for one (in_channels, size, size) sample."""
    with torch.device("meta"):
        unet = build_unet(preset, in_channels, out_channels, size, base)  # type: ignore[arg-type]
        x = torch.zeros(1, in_channels, size, size)
        t = torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, t)
    return float(counter.get_total_flops())


@functools.lru_cache(maxsize=64)
def vae_flops(preset: str, channels: int, size: int, latent_channels: int, downsample: int) -> tuple[float, float]:
    """FLOP of (encode, decode) of one (channels, size, size) image by the VAE the latent kind trains."""
    with torch.device("meta"):
        vae = build_vae(preset, channels, size, latent_channels, downsample)
        x = torch.zeros(1, channels, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as enc:
        z = vae.encode(x).latent_dist.mean
    with torch.no_grad(), FlopCounterMode(display=False) as dec:
        vae.decode(z)
    return float(enc.get_total_flops()), float(dec.get_total_flops())


def training_flops(cfg: Config, kind: str, channels: int = 3, steps: int | None = None) -> float:
    """FLOP of training model ``kind`` (a name of ``cfg.models``): UNet steps, plus the VAE for a
    latent model. ``steps``: the UNet steps of one category (``ModelSpec.steps_for``; default
    ``train_steps``)."""
    mc = spec = cfg.model_spec(kind)
    steps = mc.train_steps if steps is None else steps
    lat, size = spec.vae, cfg.dataset.image_size
    learned = 2 if spec.learned_variance else 1  # the UNet also predicts v (the variance)
    if not spec.is_latent:
        per_sample = unet_forward_flops(mc.preset, channels, channels * learned, size, mc.base_channels)
        return TRAIN_STEP_FORWARDS * per_sample * mc.batch_size * steps
    z = size >> lat.vae_downsample
    unet = unet_forward_flops(mc.preset, lat.latent_channels, lat.latent_channels, z, mc.base_channels)
    encode, decode = vae_flops(mc.preset, channels, size, lat.latent_channels, lat.vae_downsample)
    vae_training = 0.0 if lat.vae_path else TRAIN_STEP_FORWARDS * (encode + decode) * mc.batch_size * lat.vae_train_steps
    # Every UNet step encodes its batch (forward only) before the UNet's forward + backward.
    return vae_training + (encode + TRAIN_STEP_FORWARDS * unet) * mc.batch_size * steps


def model_forward_flops(cfg: Config, name: str, channels: int = 3) -> float:
    """FLOP of one UNet forward pass of model ``name`` on one image (its latent for a latent model)."""
    spec = cfg.model_spec(name)
    size = cfg.dataset.image_size
    if spec.is_latent:
        lat = spec.vae
        return unet_forward_flops(spec.preset, lat.latent_channels, lat.latent_channels, size >> lat.vae_downsample,
                                  spec.base_channels)
    return unet_forward_flops(spec.preset, channels, channels * (2 if spec.learned_variance else 1), size,
                              spec.base_channels)
