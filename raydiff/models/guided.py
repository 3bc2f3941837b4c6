"""OpenAI guided-diffusion UNet checkpoints as diffusers ``UNet2DModel`` weights.

RAN (Lu et al., ICCV'23; VandyLu/anomaly_diff ``train.sh``) fine-tunes OpenAI's 256×256
class-conditional ImageNet model (``256x256_diffusion.pt``, openai/guided-diffusion). Its weights
are a state dict of ``guided_diffusion/unet.py`` ``UNetModel``; every module of that network has a
diffusers counterpart with the same arithmetic, so a checkpoint is *renamed* into a
``UNet2DModel`` (one tensor reshaped: the attention's qkv) and loaded strictly. The equality of
the two networks' outputs is checked against the reference code by ``raydiff parity --method
ran-init`` (docs/parity.md); tests/test_guided_init.py checks the key and tensor mapping.

=================================================  =============================================
guided-diffusion (``UNetModel``)                   diffusers ``UNet2DModel``
=================================================  =============================================
``timestep_embedding`` (cos first, 10000)          ``Timesteps(flip_sin_to_cos=True, freq_shift=0)``
``time_embed.0`` / ``time_embed.2``                ``time_embedding.linear_1`` / ``linear_2``
``label_emb`` (added to the time embedding)        ``class_embedding`` (``num_class_embeds``)
``input_blocks.0.0``                               ``conv_in``
``input_blocks.b.0`` ResBlock (level l, j-th)      ``down_blocks.l.resnets.j``
``input_blocks.b.1`` AttentionBlock                ``down_blocks.l.attentions.j`` (``AttnDownBlock2D``)
``input_blocks.b.0`` ResBlock(down=True)           ``down_blocks.l.downsamplers.0`` (``downsample_type="resnet"``)
``middle_block.0`` / ``.1`` / ``.2``               ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``
``output_blocks.o.0`` / ``.1``                     ``up_blocks.u.resnets.i`` / ``attentions.i``
``output_blocks.o.{1,2}`` ResBlock(up=True)        ``up_blocks.u.upsamplers.0`` (``upsample_type="resnet"``)
``out.0`` / ``out.2``                              ``conv_norm_out`` / ``conv_out``
ResBlock ``in_layers.0/.2``, ``emb_layers.1``,     ResnetBlock2D ``norm1``/``conv1``, ``time_emb_proj``,
``out_layers.0/.3``, ``skip_connection``           ``norm2``/``conv2``, ``conv_shortcut``
(``use_scale_shift_norm``: h·(1+scale)+shift)      (``resnet_time_scale_shift="scale_shift"``)
AttentionBlock ``norm``, ``qkv`` (conv1d 3C),      Attention ``group_norm``, ``to_q``/``to_k``/``to_v``,
``proj_out``                                       ``to_out.0`` (``attention_head_dim`` = head width)
=================================================  =============================================

The qkv projection of ``QKVAttentionLegacy`` (the checkpoints' attention order) is split per head
*first*: its 3C output rows are H blocks of [q_h; k_h; v_h], each of the head width c = C / H, so
to_q's rows for head h are qkv rows [3ch, 3ch + c), to_k's the next c, to_v's the next c. The
head count is not in the weights (qkv has 3C rows for any H): it comes from the UNet it is loaded
into (``attention_head_dim``; the 256×256 checkpoints use 64-channel heads, ``--num_head_channels
64``). The middle block's attention keeps its GroupNorm (``attn_norm_num_groups``): diffusers
leaves it out with ``scale_shift`` unless told.

Not representable, refused with the reason: a first channel multiplier other than 1 (the
timestep embedding is ``model_channels`` wide in guided-diffusion, ``block_out_channels[0]`` in
diffusers: the 512×512 model's 0.5), ``use_new_attention_order`` (a different qkv layout with the
same shapes: not detectable, so not offered), and resamplers without weights (``conv_resample``
off: then the levels cannot be read from the key list).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file
from torch import Tensor

from raydiff.errors import CheckpointError
from raydiff.io import file_sha256
from raydiff.models.presets import build_unet, describe_unet

#: File suffixes of an init checkpoint: safetensors, or a weights-only torch pickle of a state dict.
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
#: GroupNorm of guided-diffusion's ``normalization``: 32 groups, eps 1e-5 (torch's default).
GROUPS = 32
EPS = 1e-5
#: The label embedding's key in a class-conditional checkpoint.
LABEL_KEY = "label_emb.weight"

_FIX_FILE = ("point init.checkpoint at a guided-diffusion UNetModel state dict (e.g. OpenAI's 256x256_diffusion.pt) "
             "saved with torch.save(model.state_dict()) or safetensors.torch.save_file.")


@dataclass(frozen=True)
class GuidedArch:
    """A guided-diffusion ``UNetModel``'s hyper-parameters, as read from its key list and shapes."""

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    #: Level indices (0 = full resolution) whose res blocks have attention.
    attention_levels: tuple[int, ...]
    resblock_updown: bool
    use_scale_shift_norm: bool
    #: Rows of ``label_emb`` (None: unconditional).
    num_classes: int | None

    def describe(self) -> str:
        attn = ", ".join(f"{lv} (1/{1 << lv})" for lv in self.attention_levels) or "none"
        return (f"guided-diffusion UNet ({self.in_channels} in / {self.out_channels} out, model_channels "
                f"{self.model_channels}, channel_mult {list(self.channel_mult)}, {self.num_res_blocks} res blocks, "
                f"attention at levels {attn}, resblock_updown {self.resblock_updown}, "
                f"scale-shift {self.use_scale_shift_norm}, classes {self.num_classes})")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of an init checkpoint (CPU; floating ones as float32).

    ``.safetensors``: ``safetensors.torch.load_file``; ``.pt``/``.pth``/``.bin``:
    ``torch.load(weights_only=True)`` of a state dict (a ``{"state_dict": ...}`` or ``{"model":
    ...}`` wrapper is opened; ``module.`` prefixes are stripped). Whole pickled models are refused
    (no code runs on load). Raises :class:`CheckpointError` naming the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "init checkpoint not found.", _FIX_FILE + " Unset it to train from scratch.")
    if path.suffix not in SUFFIXES:
        raise CheckpointError(path, f"unknown weights format {path.suffix!r} (expected one of {', '.join(SUFFIXES)}).",
                              _FIX_FILE)
    if path.suffix == ".safetensors":
        try:
            raw: Any = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(path, f"not a readable safetensors file ({err}).", _FIX_FILE) from None
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for pickled modules, RuntimeError for corrupt zips
            first = (str(err).splitlines() or [""])[0]
            raise CheckpointError(path, f"torch.load(weights_only=True) cannot read it ({type(err).__name__}: {first}).",
                                  _FIX_FILE + " Whole pickled models are refused on purpose.") from None
        if isinstance(raw, Mapping):
            for wrapper in ("state_dict", "model"):
                if isinstance(raw.get(wrapper), Mapping):
                    raw = raw[wrapper]
                    break
    if not isinstance(raw, Mapping):
        raise CheckpointError(path, f"holds a {type(raw).__name__}, not a state dict.", _FIX_FILE)
    out: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(path, f"entry {key!r} is a {type(value).__name__}, not a tensor.", _FIX_FILE)
        out[str(key).removeprefix("module.")] = value.float() if value.is_floating_point() else value
    return out


def _blocks(state: Mapping[str, Tensor], prefix: str) -> dict[int, set[str]]:
    """{block index: the key tails under ``prefix.<index>.``}."""
    out: dict[int, set[str]] = {}
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.(.+)$")
    for key in state:
        m = pat.match(key)
        if m:
            out.setdefault(int(m.group(1)), set()).add(m.group(2))
    return out


def _layers(tails: set[str]) -> dict[int, set[str]]:
    """{layer index within a TimestepEmbedSequential: its key tails}."""
    out: dict[int, set[str]] = {}
    for tail in tails:
        idx, _, rest = tail.partition(".")
        out.setdefault(int(idx), set()).add(rest)
    return out


def _is_res(keys: set[str]) -> bool:
    return "in_layers.0.weight" in keys


def _is_attn(keys: set[str]) -> bool:
    return "qkv.weight" in keys


def infer_arch(state: Mapping[str, Tensor], where: str | Path = "<state dict>") -> GuidedArch:
    """The ``UNetModel`` hyper-parameters that ``state``'s keys and shapes imply.

    The number of levels is read from the output blocks' upsamplers (one per level but the
    first), the res blocks per level from the number of output blocks (levels × (res blocks + 1)),
    widths from the res blocks' output convolutions. Raises :class:`CheckpointError` when the
    key list is not a guided-diffusion UNet (naming the first thing that does not fit).
    """

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(where, f"not a guided-diffusion UNetModel state dict: {problem}.", _FIX_FILE)

    def dim(key: str, axis: int) -> int:
        if key not in state or state[key].dim() <= axis:
            raise bad(f"key {key!r} is missing" if key not in state else f"{key!r} has shape {tuple(state[key].shape)}")
        return int(state[key].shape[axis])

    model_channels = dim("time_embed.0.weight", 1)
    dim("time_embed.2.weight", 0)
    ch0 = dim("input_blocks.0.0.weight", 0)
    if ch0 != model_channels:
        raise bad(f"the first level is {ch0} channels wide, model_channels is {model_channels} (a channel_mult[0] "
                  "other than 1: diffusers' timestep embedding is as wide as the first level)")
    try:
        inputs, outputs = _blocks(state, "input_blocks"), _blocks(state, "output_blocks")
        layered = {o: _layers(tails) for o, tails in outputs.items()} | {
            -1 - i: _layers(tails) for i, tails in inputs.items()}  # input block i at key -1 - i
    except ValueError:
        raise bad("a block's layers are not numbered") from None
    n_out = len(outputs)
    if sorted(outputs) != list(range(n_out)) or sorted(inputs) != list(range(len(inputs))) or not n_out:
        raise bad("input_blocks / output_blocks are not numbered 0..n-1")
    ups = []
    for o in range(n_out):
        layers = layered[o]
        last = layers[max(layers)]
        if max(layers) > 0 and (_is_res(last) or last == {"conv.weight", "conv.bias"}):
            ups.append(o)
    levels = len(ups) + 1
    if n_out % levels:
        raise bad(f"{n_out} output blocks do not split into {levels} levels")
    nrb = n_out // levels - 1
    if nrb < 1 or ups != [(nrb + 1) * u + nrb for u in range(levels - 1)] or len(inputs) != levels * (nrb + 1):
        raise bad(f"{len(inputs)} input and {n_out} output blocks with upsamplers at {ups} are not a UNet of "
                  f"{levels} levels")
    mult, attn, updown = [], [], None
    for lv in range(levels):
        first = 1 + lv * (nrb + 1)
        width = dim(f"input_blocks.{first}.0.out_layers.3.weight", 0)
        if width % model_channels:
            raise bad(f"level {lv} is {width} channels wide, not a multiple of {model_channels}")
        mult.append(width // model_channels)
        has = [_is_attn(layered[-1 - first - j].get(1, set())) for j in range(nrb)]
        if any(has) != all(has):
            raise bad(f"level {lv} has attention in some res blocks only")
        if all(has):
            attn.append(lv)
        if lv < levels - 1:
            down = layered[-1 - first - nrb].get(0, set())
            is_res = _is_res(down)
            if not is_res and "op.weight" not in down:
                raise bad(f"input block {first + nrb} is neither a ResBlock nor a conv downsampler")
            if updown is not None and updown != is_res:
                raise bad("some levels resample with res blocks, others with convolutions")
            updown = is_res
    emb_rows = dim("input_blocks.1.0.emb_layers.1.weight", 0)
    width0 = dim("input_blocks.1.0.out_layers.3.weight", 0)
    return GuidedArch(
        in_channels=dim("input_blocks.0.0.weight", 1), out_channels=dim("out.2.weight", 0),
        model_channels=model_channels, channel_mult=tuple(mult), num_res_blocks=nrb, attention_levels=tuple(attn),
        resblock_updown=bool(updown), use_scale_shift_norm=emb_rows == 2 * width0,
        num_classes=int(state[LABEL_KEY].shape[0]) if LABEL_KEY in state else None,
    )


# --------------------------------------------------------------------------------------------
# The diffusers network and the renaming
# --------------------------------------------------------------------------------------------


def unet_kwargs(arch: GuidedArch, image_size: int, head_channels: int = 64) -> dict[str, Any]:
    """``UNet2DModel(**kwargs)`` computing what ``arch`` computes (see the module's table)."""
    resample = "resnet" if arch.resblock_updown else "conv"
    plain_down = "ResnetDownsampleBlock2D" if arch.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if arch.resblock_updown else "UpBlock2D"
    levels = range(len(arch.channel_mult))
    return {
        "sample_size": image_size, "in_channels": arch.in_channels, "out_channels": arch.out_channels,
        "block_out_channels": tuple(arch.model_channels * m for m in arch.channel_mult),
        "down_block_types": tuple("AttnDownBlock2D" if lv in arch.attention_levels else plain_down for lv in levels),
        "up_block_types": tuple("AttnUpBlock2D" if lv in arch.attention_levels else plain_up for lv in reversed(levels)),
        "layers_per_block": arch.num_res_blocks, "downsample_type": resample, "upsample_type": resample,
        "attention_head_dim": head_channels, "norm_num_groups": GROUPS, "attn_norm_num_groups": GROUPS,
        "norm_eps": EPS, "resnet_time_scale_shift": "scale_shift" if arch.use_scale_shift_norm else "default",
        "flip_sin_to_cos": True, "freq_shift": 0, "num_class_embeds": arch.num_classes, "add_attention": True,
    }


_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "proj_out": "to_out.0"}


def module_names(arch: GuidedArch) -> dict[str, str]:
    """guided-diffusion module prefix → diffusers module prefix, with the module's kind
    appended after a ``|`` (``res``, ``attn``, ``conv``, ``linear``, ``norm``, ``embedding``)."""
    out = {"time_embed.0": "time_embedding.linear_1|linear", "time_embed.2": "time_embedding.linear_2|linear",
           "label_emb": "class_embedding|embedding", "input_blocks.0.0": "conv_in|conv",
           "middle_block.0": "mid_block.resnets.0|res", "middle_block.1": "mid_block.attentions.0|attn",
           "middle_block.2": "mid_block.resnets.1|res", "out.0": "conv_norm_out|norm", "out.2": "conv_out|conv"}
    n, levels = arch.num_res_blocks, len(arch.channel_mult)
    for lv in range(levels):
        for j in range(n):
            b = 1 + lv * (n + 1) + j
            out[f"input_blocks.{b}.0"] = f"down_blocks.{lv}.resnets.{j}|res"
            if lv in arch.attention_levels:
                out[f"input_blocks.{b}.1"] = f"down_blocks.{lv}.attentions.{j}|attn"
        if lv < levels - 1:
            b = 1 + lv * (n + 1) + n
            out[f"input_blocks.{b}.0" + ("" if arch.resblock_updown else ".op")] = (
                f"down_blocks.{lv}.downsamplers.0" + ("|res" if arch.resblock_updown else ".conv|conv"))
    for u in range(levels):
        lv = levels - 1 - u
        for i in range(n + 1):
            o = u * (n + 1) + i
            out[f"output_blocks.{o}.0"] = f"up_blocks.{u}.resnets.{i}|res"
            k = 1
            if lv in arch.attention_levels:
                out[f"output_blocks.{o}.1"] = f"up_blocks.{u}.attentions.{i}|attn"
                k = 2
            if lv > 0 and i == n:
                out[f"output_blocks.{o}.{k}" + ("" if arch.resblock_updown else ".conv")] = (
                    f"up_blocks.{u}.upsamplers.0" + ("|res" if arch.resblock_updown else ".conv|conv"))
    return out


def convert_state_dict(state: Mapping[str, Tensor], arch: GuidedArch, head_channels: int = 64,
                       where: str | Path = "<state dict>") -> tuple[dict[str, Tensor], dict[str, str]]:
    """(diffusers state dict, {diffusers key: the guided-diffusion key it came from}).

    Every key of ``state`` is used once (else :class:`CheckpointError` naming the keys no module
    of ``arch`` has); the qkv weights are split per head (module docstring).
    """
    out: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    used: set[str] = set()

    def put(new: str, old: str, value: Tensor) -> None:
        out[new], source[new] = value, old
        used.add(old)

    for old_prefix, target in module_names(arch).items():
        new_prefix, kind = target.split("|")
        if kind in ("res", "attn"):
            keys = [k for k in state if k.startswith(old_prefix + ".")]
        else:
            keys = [k for k in (f"{old_prefix}.weight", f"{old_prefix}.bias") if k in state]
        for key in keys:
            tail = key[len(old_prefix) + 1:]
            if kind == "res":
                mod, _, param = tail.rpartition(".")
                if mod not in _RES:
                    continue  # reported below as unused
                put(f"{new_prefix}.{_RES[mod]}.{param}", key, state[key])
            elif kind == "attn":
                mod, _, param = tail.rpartition(".")
                if mod not in _ATTN:
                    continue  # qkv: split below; anything else is reported as unused
                value = state[key]
                put(f"{new_prefix}.{_ATTN[mod]}.{param}", key, value.squeeze(-1) if param == "weight" and mod == "proj_out" else value)
            else:
                put(f"{new_prefix}.{tail}", key, state[key])
        if kind == "attn":
            w, b = state.get(f"{old_prefix}.qkv.weight"), state.get(f"{old_prefix}.qkv.bias")
            if w is None or b is None:
                continue  # the strict load names the missing to_q/to_k/to_v
            channels = w.shape[1]
            if channels % head_channels or w.shape[0] != 3 * channels:
                raise CheckpointError(where, f"{old_prefix}.qkv.weight has shape {tuple(w.shape)}: not 3C x C x 1 "
                                      f"with C a multiple of the head width {head_channels}.", _FIX_FILE)
            heads = channels // head_channels
            wq = w.reshape(heads, 3, head_channels, channels)  # legacy order: per head [q; k; v]
            bq = b.reshape(heads, 3, head_channels)
            for i, name in enumerate(("to_q", "to_k", "to_v")):
                put(f"{new_prefix}.{name}.weight", f"{old_prefix}.qkv.weight", wq[:, i].reshape(channels, channels).contiguous())
                put(f"{new_prefix}.{name}.bias", f"{old_prefix}.qkv.bias", bq[:, i].reshape(channels).contiguous())
    unused = sorted(set(state) - used)
    if unused:
        raise CheckpointError(where, f"{len(unused)} tensors fit no module of the {arch.describe()}: "
                              f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}.", _FIX_FILE)
    return out, source


# --------------------------------------------------------------------------------------------
# A model's pretrained init (``models.NAME.init``)
# --------------------------------------------------------------------------------------------


def _first(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def init_unet(spec: Any, in_channels: int, out_channels: int, image_size: int, name: str = "model"
              ) -> tuple[UNet2DModel, dict[str, Any]]:
    """The UNet of pixel model ``spec`` (a ``ModelSpec`` whose ``init.checkpoint`` is set) with the
    checkpoint's weights, and what meta.json records about them.

    Built as ``spec.preset`` builds it (plus a label embedding when the file has one), the file's
    tensors renamed (:func:`convert_state_dict`) and loaded strictly: every parameter of the UNet
    comes from the file and every tensor of the file goes into the UNet, shapes equal; the one
    exception is a class-conditional file's ``label_emb`` with ``class_embedding: reset``, replaced
    by a fresh embedding drawn from the global torch seed (call under ``torch.manual_seed``).
    Raises :class:`CheckpointError` naming the file, the first mismatching keys and the fix.
    """
    init = spec.init
    path = Path(init.checkpoint)
    key = f"models.{name}.init.checkpoint"
    state = read_state_dict(path)
    sha = file_sha256(path)
    if init.sha256 is not None and sha != init.sha256:
        raise CheckpointError(path, f"its sha256 is {sha}, but models.{name}.init.sha256 says {init.sha256} (the "
                              "model id was computed from that one): the file changed or is another file.",
                              f"restore the file, or remove models.{name}.init.sha256 to use this one (a new model id).")
    arch = infer_arch(state, path)
    if (arch.in_channels, arch.out_channels) != (in_channels, out_channels):
        raise CheckpointError(
            path, f"the checkpoint maps {arch.in_channels} to {arch.out_channels} channels; models.{name} needs "
            f"{in_channels} to {out_channels} (image channels, x2 with variance: learned).",
            "use RGB images for a 3-channel checkpoint (dataset.channels: rgb, as the reference converts every "
            "image to RGB) and variance: learned for a learn_sigma checkpoint (6 outputs).")
    rows = None
    if arch.num_classes is not None:
        rows = init.classes if init.class_embedding == "reset" else arch.num_classes
        if init.class_label >= rows:
            raise CheckpointError(path, f"models.{name}.init.class_label = {init.class_label}, but the label "
                                  f"embedding has {rows} rows.", "use a label in 0 .. rows - 1.")
    unet = build_unet(spec.preset, in_channels, out_channels, image_size, spec.base_channels, spec.padding,
                      num_class_embeds=rows)
    converted, source = convert_state_dict(state, arch, int(unet.config.attention_head_dim), path)
    fresh = {"class_embedding.weight"} if rows is not None and init.class_embedding == "reset" else set()
    for k in fresh:
        converted.pop(k, None)
    expected = unet.state_dict()
    missing = [k for k in expected if k not in converted and k not in fresh]
    unexpected = [source[k] for k in converted if k not in expected]
    wrong = [f"{source[k]} {tuple(v.shape)} (the UNet's {k}: {tuple(expected[k].shape)})"
             for k, v in converted.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label}: {_first(keys)}" for label, keys in (
            ("the UNet's parameters the file lacks", missing), ("tensors of the file the UNet lacks", sorted(set(unexpected))),
            ("wrong shapes", wrong)) if keys]
        raise CheckpointError(
            path, f"does not fit models.{name} (preset {spec.preset}, base {unet.config.block_out_channels[0]}, "
            f"{image_size} px): {'; '.join(parts)}. The file is a {arch.describe()}.",
            f"use the preset that builds this network (guided, base_channels 256, for OpenAI's 256x256 checkpoints) "
            f"or set {key} to a checkpoint of the preset's architecture.")
    unet.load_state_dict(converted, strict=not fresh)
    info = {
        "source": "checkpoint", "path": str(path.resolve()), "sha256": sha, "layout": init.layout,
        "file_network": arch.describe(), "tensors": len(state),
        "class_conditional": rows is not None, "class_embedding": init.class_embedding if rows is not None else None,
        "class_rows": rows, "class_label": init.class_label if rows is not None else None,
        "unet": describe_unet(unet),
    }
    return unet, info
