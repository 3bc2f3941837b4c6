"""UNet architecture presets (diffusers ``UNet2DModel``; no hand-written networks).

The lineage of the reference code (AnoDDPM → DDAD → DynAD, all from guided-diffusion): at
256 px six levels with channel multipliers (1, 1, 2, 2, 4, 4) on a base width, 2 res blocks per
level, attention at 32/16/8 px (``AttnDownBlock2D``/``AttnUpBlock2D``), scale-shift time
conditioning (guided-diffusion ``use_scale_shift_norm``), 64-channel attention heads.

Level i works at image_size / 2**i. Smaller images keep the first levels and drop the deepest
ones so that the bottom level is at least 4 px; attention stays at the same level indices
(3, 4, 5), i.e. at image_size/8, /16, /32 — the same *relative* resolutions as at 256 px.

========  =====  ======================  ==========================  ======================
preset    base   multipliers             attention                   parameters
========  =====  ======================  ==========================  ======================
tiny      16     (1, 2, 4), 1 block      bottom level (size/4)       0.72 M (any size ≥ 16 px)
ddad      64     (1, 1, 2, 2, 4, 4)      levels 3-5 (32/16/8 @256)   31.4 M (20.2 M at 64 px)
anoddpm   128    (1, 1, 2, 2, 4, 4)      levels 3-5 (32/16/8 @256)   125.4 M
========  =====  ======================  ==========================  ======================

Counts for C = 3 in / 6 out (ε and v); checked in tests/test_models.py. ``tiny`` trains at
~25 images/s at 64 px on one CPU core (batch 16); see raydiff/bench/train.py.
The middle block always has self-attention (diffusers' default, as guided-diffusion).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from diffusers import UNet2DModel

from raydiff.errors import ConfigError

Preset = Literal["tiny", "ddad", "anoddpm"]

#: preset → (default base width, channel multipliers at full depth, res blocks per level,
#: level indices with attention (None = only the bottom level)).
PRESETS: dict[str, tuple[int, tuple[int, ...], int, tuple[int, ...] | None]] = {
    "tiny": (16, (1, 2, 4), 1, None),
    "ddad": (64, (1, 1, 2, 2, 4, 4), 2, (3, 4, 5)),
    "anoddpm": (128, (1, 1, 2, 2, 4, 4), 2, (3, 4, 5)),
}
MIN_BOTTOM_PX = 4


def unet_levels(preset: str, image_size: int) -> int:
    """How many levels the preset has at ``image_size`` (the deepest ones are dropped first)."""
    _, mults, _, _ = PRESETS[preset]
    levels = len(mults)
    while levels > 1 and (image_size >> (levels - 1)) < MIN_BOTTOM_PX:
        levels -= 1
    if image_size % (1 << (levels - 1)) != 0:
        raise ConfigError(
            f"models.preset={preset}",
            f"image size {image_size} is not divisible by 2^{levels - 1} = {1 << (levels - 1)} "
            f"(the UNet halves it {levels - 1} times).",
            f"use an image size that is a multiple of {1 << (levels - 1)} (e.g. 64, 128, 256).",
        )
    return levels


Padding = Literal["zeros", "reflect"]
#: Config key the padding mode is stored under in a saved network's config.json (diffusers ignores
#: unknown keys on load, so ``apply_padding`` must be called after ``from_config``).
PADDING_KEY = "raydiff_padding_mode"


def apply_padding(module: Any, mode: Padding) -> Any:
    """Set every padded ``Conv2d`` of ``module`` to ``mode`` and record it in the model's config.

    ``zeros`` is what diffusers builds: the network sees a black (mid-grey in [-1, 1]) frame around
    the image, and its predictions next to the edge are worse than inside, which makes normal
    images' anomaly maps peak on the border (issue 17: 49-67 % of the maxima on a 1-px border that
    holds 12 % of the pixels). ``reflect`` pads with the mirrored image, so the network sees image
    statistics up to the edge. The weights are the same shapes in both modes.
    """
    import torch.nn as nn

    if mode not in ("zeros", "reflect"):
        raise ConfigError("models.padding", f"unknown padding mode {mode!r}.", "use zeros or reflect.")
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and not isinstance(m.padding, str) and any(p > 0 for p in m.padding):
            m.padding_mode = mode
    if hasattr(module, "register_to_config"):
        module.register_to_config(**{PADDING_KEY: mode})
    return module


def check_model_sizes(cfg: Any) -> None:
    """The models the config trains can be built at ``dataset.image_size``: the pixel UNet, and the
    VAE we train plus its latent UNet (a configured pretrained VAE is checked when it is loaded).
    Raises ConfigError naming the key and the image sizes that work."""
    from raydiff.config import MODEL_KIND_TABLE

    size, preset = cfg.dataset.image_size, cfg.models.preset
    kinds = cfg.model_kinds_needed()
    if any(not MODEL_KIND_TABLE[k].latent for k in kinds):
        unet_levels(preset, size)
    if any(MODEL_KIND_TABLE[k].latent for k in kinds) and not cfg.models.latent.vae_path:
        down = cfg.models.latent.vae_downsample
        if size % (1 << down):
            raise ConfigError(
                "dataset.image_size",
                f"{size} is not divisible by 2^{down} (models.latent.vae_downsample), so the VAE cannot encode it.",
                f"use an image size that is a multiple of {1 << down}, or lower models.latent.vae_downsample.",
            )
        try:
            unet_levels(preset, size >> down)
        except ConfigError as err:
            raise ConfigError(
                "dataset.image_size",
                f"{size} gives {size >> down} px latents (models.latent.vae_downsample = {down}), and for the "
                f"latent UNet: {err.problem}",
                f"use an image size such that size / {1 << down} works (e.g. 64, 128, 256), or change vae_downsample.",
            ) from None


def build_unet(
    preset: Preset, in_channels: int, out_channels: int, image_size: int, base_channels: int | None = None,
    padding: Padding = "zeros",
) -> UNet2DModel:
    """A freshly initialised ``UNet2DModel`` of the preset for (B, in_channels, size, size) inputs.

    Output: (B, out_channels, size, size) — ε (and v when out_channels = 2·in_channels).
    Deterministic given the global torch seed (call under ``torch.manual_seed``). ``padding``:
    the convolutions' padding mode (``apply_padding``; the config's ``models.padding``).
    """
    if preset not in PRESETS:
        raise ConfigError("models.preset", f"unknown preset {preset!r}.", f"use one of {', '.join(PRESETS)}.")
    default_base, mults, layers, attn_levels = PRESETS[preset]
    base = int(base_channels or default_base)
    levels = unet_levels(preset, image_size)
    mults = mults[:levels]
    channels = tuple(base * m for m in mults)
    attn = set(attn_levels) if attn_levels is not None else {levels - 1}
    attn &= set(range(levels))
    down = tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(levels)))
    groups = math.gcd(32, max(1, base // 2))  # 32 groups as guided-diffusion; ≥ 2 channels per group
    attn_channels = [channels[i] for i in attn] or [channels[-1]]
    head_dim = math.gcd(64, *attn_channels, channels[-1])
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=layers,
        norm_num_groups=groups,
        attention_head_dim=head_dim,
        resnet_time_scale_shift="scale_shift",
        add_attention=True,
    )
    return apply_padding(unet, padding)


def count_parameters(module: object) -> int:
    return sum(p.numel() for p in module.parameters())  # type: ignore[attr-defined]


def describe_unet(unet: UNet2DModel) -> dict[str, object]:
    """JSON-able summary: parameters, widths, block types (for meta.json and the docs)."""
    c = unet.config
    return {
        "parameters": count_parameters(unet),
        "sample_size": c.sample_size,
        "block_out_channels": list(c.block_out_channels),
        "down_block_types": list(c.down_block_types),
        "layers_per_block": c.layers_per_block,
        "attention_head_dim": c.attention_head_dim,
    }
