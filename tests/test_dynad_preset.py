"""The ``dynad`` UNet preset: DynAD's latent UNet (JustinTebbe/Dynamic-noise-AD config.yaml:
192 channels, multipliers (1, 2, 2, 4, 4), 2 res blocks, attention at 32/16/8/4 px on 32-px
latents). The full network is built on the meta device (no weights allocated) and run there,
so forward hooks see the resolution every attention block works at."""

from __future__ import annotations

import pytest
import torch

from raydiff.errors import ConfigError
from raydiff.models import latent as L
from raydiff.models.presets import (
    attention_levels,
    build_unet,
    count_parameters,
    describe_unet,
    unet_levels,
)

#: Documented in raydiff/models/presets.py (4 latent channels in, ε only out; 3 in / 6 out).
DYNAD_PARAMETERS = {(4, 4): 267_178_564, (3, 6): 267_180_294}


def _attention_px(unet: torch.nn.Module, size: int, in_channels: int) -> dict[str, list[int]]:
    """{block group: [spatial size each attention layer saw]} from one (meta) forward pass."""
    seen: dict[str, list[int]] = {"down": [], "mid": [], "up": []}
    hooks = []
    for name, module in unet.named_modules():
        if type(module).__name__ == "Attention":
            group = name.split("_")[0].split(".")[0]  # down_blocks.i… / mid_block… / up_blocks.i…
            hooks.append(module.register_forward_hook(
                lambda _m, inp, _out, g=group: seen[g].append(int(inp[0].shape[-1]))))
    with torch.no_grad():
        x = torch.zeros(1, in_channels, size, size, device="meta")
        out = unet(x, torch.tensor([10], device="meta")).sample
    for h in hooks:
        h.remove()
    assert out.shape == x.shape
    return seen


def test_dynad_preset_at_a_32_px_latent() -> None:
    with torch.device("meta"):
        unet = build_unet("dynad", 4, 4, 32)
    assert unet.config.block_out_channels == (192, 384, 384, 768, 768)
    assert unet.config.layers_per_block == 2
    assert [b.__class__.__name__ for b in unet.down_blocks] == ["AttnDownBlock2D"] * 4 + ["DownBlock2D"]
    assert [b.__class__.__name__ for b in unet.up_blocks] == ["UpBlock2D"] + ["AttnUpBlock2D"] * 4
    # Levels at 32/16/8/4/2 px; attention at every level but the 2-px one (plus the middle block).
    assert unet_levels("dynad", 32) == 5 and attention_levels("dynad", 32) == (0, 1, 2, 3)
    seen = _attention_px(unet, 32, 4)
    assert seen["down"] == [32, 32, 16, 16, 8, 8, 4, 4]  # 2 res blocks, one attention after each
    assert seen["mid"] == [2]
    assert seen["up"] == [4] * 3 + [8] * 3 + [16] * 3 + [32] * 3  # 3 res blocks per up level
    assert count_parameters(unet) == DYNAD_PARAMETERS[(4, 4)]
    assert describe_unet(unet)["attention_px"] == [32, 16, 8, 4]
    with torch.device("meta"):
        assert count_parameters(build_unet("dynad", 3, 6, 32)) == DYNAD_PARAMETERS[(3, 6)]


def test_dynad_attention_is_absolute_and_never_silently_dropped() -> None:
    # At a 64-px latent (512-px image, f = 8) the same resolutions are levels 1-4.
    with torch.device("meta"):
        unet = build_unet("dynad", 4, 4, 64)
    assert attention_levels("dynad", 64) == (1, 2, 3, 4)
    assert _attention_px(unet, 64, 4)["down"] == [32, 32, 16, 16, 8, 8, 4, 4]
    # Inputs whose levels miss one of 32/16/8/4 px are refused, naming the sizes that fit.
    for size in (16, 128, 256):
        with pytest.raises(ConfigError, match=r"none at .* 32 or 64 px"):
            unet_levels("dynad", size)
    with pytest.raises(ConfigError, match="not divisible"):
        build_unet("dynad", 4, 4, 40)


def test_dynad_builds_and_runs_narrow() -> None:
    torch.manual_seed(0)
    unet = build_unet("dynad", 4, 4, 32, base_channels=32).eval()
    assert unet.config.block_out_channels == (32, 64, 64, 128, 128)
    out = unet(torch.randn(2, 4, 32, 32), torch.tensor([1, 999])).sample
    assert out.shape == (2, 4, 32, 32) and torch.isfinite(out).all()


def test_dynad_vae_preset_is_stable_diffusions_at_f8() -> None:
    with torch.device("meta"):
        vae = L.build_vae("dynad", 3, 256, 4, 3)
    assert tuple(vae.config.block_out_channels) == (128, 256, 512, 512)
    assert vae.config.layers_per_block == 2 and vae.config.latent_channels == 4
