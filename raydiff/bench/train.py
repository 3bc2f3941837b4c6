"""Training throughput of a UNet preset: images/s and model FLOP/s (printed, never asserted).

    python -m raydiff.bench.train --preset tiny --image-size 64 --batch 16 --steps 20            # CPU
    python -m raydiff.bench.train --preset ddad --image-size 256 --batch 32 --steps 30 --device cuda

One step = what ``train_one`` does for the ``pixel`` kind (RGB, ε + learned variance, hybrid
loss, AdamW, grad clipping, EMA; bf16 autocast on CUDA) on random data, so data loading and
noise sampling are excluded. FLOPs of one step (forward + backward) are counted once with
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
from raydiff.models.presets import build_unet, count_parameters
from raydiff.train.loop import diffusion_loss, ema_update

#: Dense bf16 peak FLOP/s by device-name fragment (vendor data sheets, without sparsity).
PEAK_BF16: dict[str, float] = {"H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12,
                               "A100": 312e12, "L4": 121e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def bench_train(preset: str, image_size: int, batch: int, steps: int, device: str | torch.device = "cpu",
                channels: int = 3, warmup: int = 2, peak: float | None = None) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup``; → images/s, FLOP/step, FLOP/s, MFU."""
    dev = torch.device(device)
    torch.manual_seed(0)
    s = D.Schedule.build("linear", 1000).to(dev)
    unet = build_unet(preset, channels, 2 * channels, image_size).to(dev).train()  # type: ignore[arg-type]
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    amp = torch.bfloat16 if dev.type == "cuda" else None
    x0 = torch.rand(batch, channels, image_size, image_size, device=dev) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (batch,), device=dev)

    def step() -> None:
        x_t = D.q_sample(s, x0, t, noise)
        with torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            out = unet(x_t, t).sample
        loss, _, _ = diffusion_loss(s, out, x0, x_t, t, noise, True, 0.001)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema_update(ema, unet, 0.999)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops_per_step = float(counter.get_total_flops())
    for _ in range(max(0, warmup - 1)):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    achieved = flops_per_step * steps / seconds
    peak = peak if peak is not None else peak_flops(dev)
    return {
        "preset": preset, "image_size": image_size, "batch": batch, "steps": steps, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "dtype": "bf16 autocast" if amp else "fp32",
        "parameters": count_parameters(unet), "seconds": seconds,
        "images_per_s": batch * steps / seconds, "flop_per_step": flops_per_step,
        "flop_per_image": flops_per_step / batch, "flop_per_s": achieved,
        "mfu": achieved / peak if peak else None, "peak_flop_per_s": peak,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", choices=["tiny", "ddad", "anoddpm"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--channels", type=int, default=3)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    result = bench_train(args.preset, args.image_size, args.batch, args.steps, args.device, args.channels)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
