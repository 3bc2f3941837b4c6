"""RAN's initialisation: guided-diffusion's ``UNetModel`` (VandyLu/anomaly_diff
``guided_diffusion/unet.py``, OpenAI's network) against the same weights renamed into diffusers'
``UNet2DModel`` by ``raydiff.models.guided``.

RAN fine-tunes OpenAI's 256×256 class-conditional checkpoint; raydiff loads such a file into a
``UNet2DModel`` (``models.NAME.init``). This check builds the reference network at a small size
with every parameter drawn at random (its zero-initialised output layers too, so that no path is
trivially zero), saves its ``state_dict`` as a file, loads that file the ways raydiff does, and
feeds both networks the same x, t and class labels y:

1. ``convert_state_dict`` + ``unet_kwargs`` on a small network (32 px, 64 channels, levels
   32/16/8/4 px, attention at 16 and 8 px in 2 heads of 32, 15 classes, learn_sigma);
2. ``init_unet`` — what training does — with preset ``guided`` at base 64: OpenAI's 256×256
   layout (channel_mult 1,1,2,2,4,4, attention at 1/8, 1/16, 1/32 of 256 px, 64-channel heads,
   ``resblock_updown``, scale-shift) at a quarter of the width, run at 32 px, its label
   embedding kept (``class_embedding: keep``) so both sides condition alike;
3. the scoring path: that model with one label folded into its time embedding
   (``fold_class_label``), every image conditioned on it.

Stages compare the full output [ε, v] (B, 6, 32, 32). The networks need nothing of raydiff's
trained models: ``inputs`` gives the batch size and the seed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file

from raydiff.config import InitConfig, ModelSpec
from raydiff.models import guided as G
from raydiff.models.checkpoint import fold_class_label
from raydiff.parity.compare import Stage
from raydiff.parity.inputs import ParityInputs
from raydiff.parity.refs import Reference

REFERENCE = "ran"
MODULES = ("guided_diffusion.unet",)
ABSENT: tuple[str, ...] = ()  # unet.py imports numpy and torch only (through fp16_util, nn, logger)
METHOD = "ran-init"
SIZE = 32
#: Standard deviation of the random weights (outputs of order 0.1-1 through 6 levels).
WEIGHT_STD = 0.05

#: The reference networks (``UNetModel`` keyword arguments; ``attention_resolutions`` as
#: downsampling rates, as script_util.create_model passes them).
SMALL: dict[str, Any] = dict(image_size=SIZE, in_channels=3, model_channels=64, out_channels=6, num_res_blocks=2,
                             attention_resolutions=(2, 4), channel_mult=(1, 2, 2, 2), num_classes=15,
                             num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True)
OPENAI_256: dict[str, Any] = dict(image_size=256, in_channels=3, model_channels=64, out_channels=6, num_res_blocks=2,
                                  attention_resolutions=(8, 16, 32), channel_mult=(1, 1, 2, 2, 4, 4), num_classes=1000,
                                  num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True)


def reference_unet(ref: Reference, kwargs: dict[str, Any], seed: int) -> torch.nn.Module:
    """The reference ``UNetModel`` with every parameter ~ N(0, WEIGHT_STD²), seeded, eval mode."""
    unet = ref.module("guided_diffusion.unet").UNetModel(**kwargs).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * WEIGHT_STD)
    return unet


def stages(ref: Reference, inputs: ParityInputs) -> list[Stage]:
    b = inputs.images.shape[0]
    g = torch.Generator().manual_seed(inputs.seed)
    x = torch.randn(b, 3, SIZE, SIZE, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    out: list[Stage] = []

    def add(stage: str, ours: torch.Tensor, theirs: torch.Tensor, note: str) -> None:
        out.append(Stage(METHOD, stage, ours, theirs, note=note))

    # 1. the converter on a small network
    small = reference_unet(ref, SMALL, inputs.seed)
    y = torch.randint(0, SMALL["num_classes"], (b,), generator=g)
    state = {k: v.detach().clone() for k, v in small.state_dict().items()}
    arch = G.infer_arch(state)
    converted, _ = G.convert_state_dict(state, arch, SMALL["num_head_channels"])
    ours = UNet2DModel(**G.unet_kwargs(arch, SIZE, SMALL["num_head_channels"])).eval()
    ours.load_state_dict(converted, strict=True)
    add("UNet output [ε, v], small network (64 ch, attention at 16/8 px, 2 heads, 15 classes)",
        ours(x, t, class_labels=y).sample, small(x, t, y),
        "guided.convert_state_dict + unet_kwargs, load_state_dict(strict=True); same x, t, y")

    # 2. the training path: preset guided from the file (models.NAME.init)
    big = reference_unet(ref, OPENAI_256, inputs.seed + 1)
    y = torch.randint(0, OPENAI_256["num_classes"], (b,), generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "unet.safetensors"
        save_file({k: v.contiguous() for k, v in big.state_dict().items()}, str(path))
        spec = ModelSpec(preset="guided", base_channels=OPENAI_256["model_channels"], variance="learned",
                         init=InitConfig(checkpoint=str(path), class_embedding="keep"))
        unet, info = G.init_unet(spec, 3, 6, SIZE, "ran")
    unet.eval()
    theirs = big(x, t, y)
    add("UNet output [ε, v], preset guided (OpenAI's 256x256 layout, base 64) from the file, at 32 px",
        unet(x, t, class_labels=y).sample, theirs,
        f"guided.init_unet (training's loader), class_embedding keep; {info['tensors']} tensors")

    # 3. the scoring path: one label folded into the time embedding
    label = int(y[0])
    fold_class_label(unet, label)
    add(f"UNet output [ε, v], label {label} folded in (scoring)", unet(x, t).sample,
        big(x, t, torch.full((b,), label, dtype=torch.long)), "checkpoint.fold_class_label, as load_model does")
    return out
