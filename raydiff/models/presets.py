"""UNet architecture presets (diffusers ``UNet2DModel``; no hand-written networks).

The lineage of the reference code (AnoDDPM → DDAD → DynAD, all from guided-diffusion): at
256 px six levels with channel multipliers (1, 1, 2, 2, 4, 4) on a base width, 2 res blocks per
level, attention at 32/16/8 px (``AttnDownBlock2D``/``AttnUpBlock2D``), scale-shift time
conditioning (guided-diffusion ``use_scale_shift_norm``), 64-channel attention heads.

Level i works at image_size / 2**i. Where attention goes is one of two things per preset:

- *level indices* (``tiny``, ``ddad``, ``anoddpm``): smaller images keep the first levels and
  drop the deepest ones so that the bottom level is at least 4 px; attention stays at the same
  level indices (3, 4, 5), i.e. at image_size/8, /16, /32 — the same *relative* resolutions as
  at 256 px (indices beyond the depth go with the dropped levels).
- *absolute resolutions in px* (``dynad``), as guided-diffusion's ``attention_resolutions``:
  the depth is fixed (no level is dropped) and every listed resolution must be a level of the
  UNet at its input size, else ``ConfigError`` (never a silently thinner network). DynAD's
  latent UNet (JustinTebbe/Dynamic-noise-AD config.yaml: ``unet_channel: 192``,
  ``channel_mults: [1, 2, 2, 4, 4]``, ``attn_reso: [32, 16, 8, 4]``, ``latent_size: 32``;
  unet.py: ``num_res_blocks=2``) works on the 32-px latents of a 256-px image (SD VAE, f = 8):
  levels at 32/16/8/4/2 px, attention at levels 0-3, none at the 2-px level (the middle block
  has its own). Inputs of 32 or 64 px fit it.

========  =====  ======================  ==========================  ======================
preset    base   multipliers             attention                   parameters
========  =====  ======================  ==========================  ======================
tiny      16     (1, 2, 4), 1 block      bottom level (size/4)       0.72 M (any size ≥ 16 px)
ddad      64     (1, 1, 2, 2, 4, 4)      levels 3-5 (32/16/8 @256)   31.4 M (20.2 M at 64 px)
anoddpm   128    (1, 1, 2, 2, 4, 4)      levels 3-5 (32/16/8 @256)   125.4 M
dynad     192    (1, 2, 2, 4, 4)         32/16/8/4 px (absolute)     267.2 M (at 32 or 64 px)
guided    256    (1, 1, 2, 2, 4, 4)      levels 3-5, fixed depth     552.8 M (+1.0 M per 1000 classes)
========  =====  ======================  ==========================  ======================

Counts for C = 3 in / 6 out (ε and v); checked in tests/test_models.py and (dynad)
tests/test_dynad_preset.py. ``dynad`` as the ``latent`` kind builds it, 4 latent channels in /
4 out (ε only, as DynAD): 267,178,564 parameters (DynAD's own unet.py: 281.1 M — it resamples
with res blocks, guided-diffusion's ``resblock_updown``, where diffusers uses a strided / nearest
+ conv resampler; its attention has 8 heads at every width, ours 64-channel heads:
``UNet2DModel`` takes one head width for all blocks, and the head count changes no parameter).
``tiny`` trains at ~25 images/s at 64 px on one CPU core (batch 16); see raydiff/bench/train.py.
The middle block always has self-attention (diffusers' default, as guided-diffusion).

``guided`` is OpenAI guided-diffusion's 256×256 ImageNet UNet (``256x256_diffusion.pt``: num_channels
256, 2 res blocks, attention at 32/16/8 px of 256 = levels 3-5, 64-channel heads, scale-shift
norm, ``resblock_updown``), the network RAN fine-tunes: it resamples with res blocks
(``ResnetDownsampleBlock2D`` / ``ResnetUpsampleBlock2D``, ``downsample_type="resnet"``), its middle
attention has its GroupNorm (diffusers drops it with scale-shift unless ``attn_norm_num_groups`` is
given; the other presets keep diffusers' behaviour, their ids depend on it), and its depth and
attention levels are fixed (a checkpoint's layout is by level, whatever the input size), so its
weights load into it at any input size divisible by 32 (``raydiff.models.guided``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn as nn
from diffusers import UNet2DModel

from raydiff.errors import ConfigError

Preset = Literal["tiny", "ddad", "anoddpm", "dynad", "guided"]


@dataclass(frozen=True)
class UNetPreset:
    """One row of :data:`PRESETS`: widths, depth and where self-attention goes."""

    #: Default base width (``models.base_channels`` overrides it).
    base: int
    #: Channel multipliers per level at full depth.
    mults: tuple[int, ...]
    #: Res blocks per level.
    layers: int
    #: Level indices with attention (None = only the bottom level); the deepest levels are
    #: dropped at small image sizes (bottom ≥ ``MIN_BOTTOM_PX``), indices beyond the depth too.
    attention_levels: tuple[int, ...] | None = None
    #: Or: absolute resolutions (px of the UNet's input) with attention; the depth is then fixed
    #: and each resolution must be a level at the input size (guided-diffusion
    #: ``attention_resolutions``).
    attention_px: tuple[int, ...] | None = None
    #: ``conv``: strided-conv / nearest+conv resamplers (diffusers' default); ``resnet``: res blocks
    #: that pool / upsample (guided-diffusion ``resblock_updown``).
    resample: Literal["conv", "resnet"] = "conv"
    #: Keep every level at any input size (a pretrained layout): no level is dropped.
    fixed_depth: bool = False
    #: GroupNorm before the middle block's attention (guided-diffusion has one).
    mid_attention_norm: bool = False
    #: GroupNorm groups (None: 32, fewer when the base is under 64 so that a group has ≥ 2
    #: channels); a pretrained layout fixes it (guided-diffusion's ``normalization``: 32).
    norm_groups: int | None = None


PRESETS: dict[str, UNetPreset] = {
    "tiny": UNetPreset(16, (1, 2, 4), 1),
    "ddad": UNetPreset(64, (1, 1, 2, 2, 4, 4), 2, attention_levels=(3, 4, 5)),
    "anoddpm": UNetPreset(128, (1, 1, 2, 2, 4, 4), 2, attention_levels=(3, 4, 5)),
    "dynad": UNetPreset(192, (1, 2, 2, 4, 4), 2, attention_px=(32, 16, 8, 4)),
    "guided": UNetPreset(256, (1, 1, 2, 2, 4, 4), 2, attention_levels=(3, 4, 5), resample="resnet",
                         fixed_depth=True, mid_attention_norm=True, norm_groups=32),
}
MIN_BOTTOM_PX = 4


def unet_levels(preset: str, image_size: int) -> int:
    """How many levels the preset has at ``image_size`` (the deepest ones are dropped first,
    except for a preset with absolute attention resolutions, whose depth is fixed).

    Raises ConfigError when the UNet cannot halve ``image_size`` that often, or when a preset's
    absolute attention resolution is not one of its levels at ``image_size``.
    """
    spec = PRESETS[preset]
    levels = len(spec.mults)
    while spec.attention_px is None and not spec.fixed_depth and levels > 1 and (image_size >> (levels - 1)) < MIN_BOTTOM_PX:
        levels -= 1
    if image_size % (1 << (levels - 1)) != 0:
        raise ConfigError(
            f"models.preset={preset}",
            f"image size {image_size} is not divisible by 2^{levels - 1} = {1 << (levels - 1)} "
            f"(the UNet halves it {levels - 1} times).",
            f"use an image size that is a multiple of {1 << (levels - 1)} (e.g. 64, 128, 256).",
        )
    if spec.attention_px is not None:
        have = [image_size >> i for i in range(levels)]
        missing = [px for px in spec.attention_px if px not in have]
        if missing:
            fits = [s for s in range(1 << (levels - 1), 4097, 1 << (levels - 1))
                    if set(spec.attention_px) <= {s >> i for i in range(levels)}]
            raise ConfigError(
                f"models.preset={preset}",
                f"the preset puts self-attention at {'/'.join(map(str, spec.attention_px))} px, but a "
                f"{image_size}-px input gives levels at {'/'.join(map(str, have))} px (none at "
                f"{'/'.join(map(str, missing))} px).",
                f"use a UNet input of {' or '.join(map(str, fits))} px (for the latent UNet: "
                f"dataset.image_size / 2^models.latent.vae_downsample), or another preset.",
            )
    return levels


def attention_levels(preset: str, image_size: int) -> tuple[int, ...]:
    """The level indices (ascending) whose down and up blocks have self-attention at ``image_size``."""
    spec = PRESETS[preset]
    levels = unet_levels(preset, image_size)
    if spec.attention_px is not None:
        return tuple(i for i in range(levels) if (image_size >> i) in spec.attention_px)
    if spec.attention_levels is None:
        return (levels - 1,)
    return tuple(i for i in range(levels) if i in spec.attention_levels)


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
    if mode not in ("zeros", "reflect"):
        raise ConfigError("models.padding", f"unknown padding mode {mode!r}.", "use zeros or reflect.")
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and not isinstance(m.padding, str) and any(p > 0 for p in m.padding):
            m.padding_mode = mode
    if hasattr(module, "register_to_config"):
        module.register_to_config(**{PADDING_KEY: mode})
    return module


def check_model_sizes(cfg: Any) -> None:
    """The models the config trains can be built at ``dataset.image_size``: each pixel UNet, and
    each VAE we train plus its latent UNet (a configured pretrained VAE is checked when it is
    loaded). Raises ConfigError naming the model's keys and the image sizes that work."""
    size = cfg.dataset.image_size
    for name in cfg.models_needed():
        spec = cfg.model_spec(name)
        if not spec.is_latent:
            unet_levels(spec.preset, size)
            continue
        if spec.vae.vae_path:
            continue
        down = spec.vae.vae_downsample
        if size % (1 << down):
            raise ConfigError(
                "dataset.image_size",
                f"{size} is not divisible by 2^{down} (models.{name}.vae.vae_downsample), so the VAE cannot encode it.",
                f"use an image size that is a multiple of {1 << down}, or lower models.{name}.vae.vae_downsample.",
            )
        try:
            unet_levels(spec.preset, size >> down)
        except ConfigError as err:
            raise ConfigError(
                "dataset.image_size",
                f"{size} gives {size >> down} px latents (models.{name}.vae.vae_downsample = {down}), and for the "
                f"latent UNet: {err.problem}",
                f"use an image size such that size / {1 << down} works (e.g. 64, 128, 256), or change vae_downsample.",
            ) from None


def build_unet(
    preset: Preset, in_channels: int, out_channels: int, image_size: int, base_channels: int | None = None,
    padding: Padding = "zeros", num_class_embeds: int | None = None,
) -> UNet2DModel:
    """A freshly initialised ``UNet2DModel`` of the preset for (B, in_channels, size, size) inputs.

    Output: (B, out_channels, size, size) — ε (and v when out_channels = 2·in_channels).
    Deterministic given the global torch seed (call under ``torch.manual_seed``). ``padding``:
    the convolutions' padding mode (``apply_padding``; the config's ``models.padding``).
    ``num_class_embeds``: a class-label embedding of that many rows added to the time embedding
    (a class-conditional pretrained init; the forward pass then needs ``class_labels``).
    """
    if preset not in PRESETS:
        raise ConfigError("models.preset", f"unknown preset {preset!r}.", f"use one of {', '.join(PRESETS)}.")
    spec = PRESETS[preset]
    base = int(base_channels or spec.base)
    levels = unet_levels(preset, image_size)
    channels = tuple(base * m for m in spec.mults[:levels])
    attn = set(attention_levels(preset, image_size))
    plain_down, plain_up = (("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if spec.resample == "resnet"
                            else ("DownBlock2D", "UpBlock2D"))
    down = tuple("AttnDownBlock2D" if i in attn else plain_down for i in range(levels))
    up = tuple("AttnUpBlock2D" if i in attn else plain_up for i in reversed(range(levels)))
    groups = spec.norm_groups or math.gcd(32, max(1, base // 2))  # 32 groups as guided-diffusion; ≥ 2 channels per group
    if base % groups:
        raise ConfigError("models.base_channels", f"{base} channels do not split into the {preset} preset's {groups} "
                          "GroupNorm groups.", f"use a multiple of {groups}.")
    # Only what differs from diffusers' defaults is passed: the earlier presets' configs stay as they were.
    extra: dict[str, Any] = {}
    if spec.resample != "conv":
        extra.update(downsample_type=spec.resample, upsample_type=spec.resample)
    if spec.mid_attention_norm:
        extra["attn_norm_num_groups"] = groups
    if num_class_embeds is not None:
        extra["num_class_embeds"] = num_class_embeds
    attn_channels = [channels[i] for i in attn] or [channels[-1]]
    head_dim = math.gcd(64, *attn_channels, channels[-1])
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=spec.layers,
        norm_num_groups=groups,
        attention_head_dim=head_dim,
        resnet_time_scale_shift="scale_shift",
        add_attention=True,
        **extra,
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
        # Resolutions (px) of the levels with self-attention in their down and up blocks.
        "attention_px": [c.sample_size >> i for i, b in enumerate(c.down_block_types) if b.startswith("Attn")],
    }
