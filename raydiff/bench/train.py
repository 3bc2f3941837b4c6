"""Training throughput of a UNet preset per model kind: images/s and model FLOP/s (printed, never asserted).

    python -m raydiff.bench.train --preset tiny --image-size 64 --batch 16 --steps 20            # CPU
    python -m raydiff.bench.train --preset ddad --image-size 256 --batch 32 --steps 30 --device cuda \\
        --kinds pixel pixel-simplex pixel-gmm latent

One step = what ``train_one`` does for the kind (``raydiff.train.loop``'s pieces: batch indices,
augmentation and t drawn on the device by the step's generator, the kind's noise generated on
the device, q_sample, the UNet under bf16 autocast on CUDA, the kind's loss, AdamW (fused on
CUDA unless told otherwise), grad clipping, the EMA update (foreach unless told otherwise); for
``latent`` the VAE's encoder first) on random training images; no logging, no checkpoints.
FLOPs of one step (forward + backward, and the encoder's forward) are counted once with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; the optimizer and
element-wise ops are not counted, as usual for "model FLOPs"). MFU = achieved / ``peak``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from raydiff import diffusion as D
from raydiff.config import BUILTIN_MODELS, AugmentConfig, ModelSpec
from raydiff.models.latent import build_vae
from raydiff.models.presets import build_unet, count_parameters
from raydiff.seeding import derive_seed, generator
from raydiff.train.loop import augment_batch, diffusion_loss, ema_update, make_optimizer, sample_training_noise

#: Dense bf16 peak FLOP/s by device-name fragment (vendor data sheets, without sparsity).
PEAK_BF16: dict[str, float] = {"H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12,
                               "A100": 312e12, "L4": 121e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def bench_train(preset: str, image_size: int, batch: int, steps: int, device: str | torch.device = "cpu",
                channels: int = 3, warmup: int = 2, peak: float | None = None, kind: str = "pixel",
                fused_adamw: bool = True, foreach_ema: bool = True, channels_last: bool = False,
                models_cfg: ModelSpec | None = None) -> dict[str, Any]:
    """Time ``steps`` training steps of model ``kind`` after ``warmup``; → images/s, FLOP/step, FLOP/s, MFU."""
    dev = torch.device(device)
    mc = spec = models_cfg or ModelSpec(preset=preset, **BUILTIN_MODELS[kind])  # type: ignore[arg-type]
    torch.manual_seed(0)
    s = D.Schedule.build("linear", 1000).to(dev)
    vae, sample_channels, sample_size = None, channels, image_size
    if spec.is_latent:
        lat = mc.vae
        vae = build_vae(preset, channels, image_size, lat.latent_channels, lat.vae_downsample).to(dev).eval()
        vae.requires_grad_(False)
        sample_channels, sample_size = lat.latent_channels, image_size >> lat.vae_downsample
    out_channels = sample_channels * (2 if spec.learned_variance else 1)
    unet = build_unet(preset, sample_channels, out_channels, sample_size).to(dev).train()  # type: ignore[arg-type]
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = make_optimizer(unet.parameters(), mc, fused_adamw, dev)
    amp = torch.bfloat16 if dev.type == "cuda" else None
    images = torch.rand(max(64, batch), channels, image_size, image_size, device=dev) * 2 - 1
    aug = AugmentConfig()
    counter = [0]

    def step() -> None:
        k = counter[0]
        counter[0] += 1
        g = generator(derive_seed(0, "bench-step", k), dev)
        idx = torch.randint(images.shape[0], (batch,), generator=g, device=dev)
        x0 = augment_batch(images[idx], aug, g)
        if vae is not None:
            with torch.no_grad(), torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                x0 = vae.encode(x0).latent_dist.mean.float()
        t = torch.randint(0, s.timesteps, (batch,), generator=g, device=dev)
        seeds = [derive_seed(0, "bench-noise", k, i) for i in range(batch)]
        noise = sample_training_noise(spec.noise, tuple(x0.shape), seeds, mc, dev)
        x_t = D.q_sample(s, x0, t, noise)
        x_in = x_t.contiguous(memory_format=torch.channels_last) if channels_last else x_t
        with torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            out = unet(x_in, t).sample
        loss, _, _ = diffusion_loss(s, out, x0, x_t, t, noise, spec.learned_variance, 0.001)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema_update(ema, unet, 0.999, foreach=foreach_ema)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    fc = FlopCounterMode(display=False)
    with fc:
        step()
    flops_per_step = float(fc.get_total_flops())
    for _ in range(max(0, warmup - 1)):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    achieved = flops_per_step * steps / seconds
    peak = peak if peak is not None else peak_flops(dev)
    return {
        "kind": kind, "preset": preset, "image_size": image_size, "batch": batch, "steps": steps, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "dtype": "bf16 autocast" if amp else "fp32",
        "fused_adamw": fused_adamw and dev.type == "cuda", "foreach_ema": foreach_ema, "channels_last": channels_last,
        "parameters": count_parameters(unet), "seconds": seconds,
        "images_per_s": batch * steps / seconds, "flop_per_step": flops_per_step,
        "flop_per_image": flops_per_step / batch, "flop_per_s": achieved,
        "mfu": achieved / peak if peak else None, "peak_flop_per_s": peak,
        "peak_memory_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", choices=["tiny", "ddad", "anoddpm", "dynad"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--kinds", nargs="+", default=["pixel"], choices=list(BUILTIN_MODELS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--no-fused-adamw", action="store_true")
    p.add_argument("--no-foreach-ema", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    results = [bench_train(args.preset, args.image_size, args.batch, args.steps, args.device, args.channels, kind=k,
                           fused_adamw=not args.no_fused_adamw, foreach_ema=not args.no_foreach_ema,
                           channels_last=args.channels_last) for k in args.kinds]
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
