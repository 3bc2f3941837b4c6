"""Checkpoint folders: diffusers ``save_pretrained`` folders + safetensors + JSON. Never pickle.

One folder per (category, model kind), ``raydiff.paths.model_dir``::

    meta.json                   what the model is: config, versions, seed, noise, channels, schedule
    unet_ema/                   UNet2DModel with EMA weights (config.json + safetensors) — scoring uses it
    unet/                       the online UNet (resuming training)
    vae/                        AutoencoderKL (``latent`` kind with a VAE trained here)
    optimizer.safetensors       every tensor of the optimizer state, flattened ("state.<i>.<name>")
    train_state.json            step + the optimizer's non-tensor state (param groups, scalars)
    loss.csv, loss.png          the loss curve so far
    _SUCCESS                    written last, when training finished (raydiff.io)

A checkpoint is written whole into a temporary sibling and swapped in by renames, so the folder
always holds one complete checkpoint. ``load_model`` returns the EMA network for scoring;
``load_training_state`` what a resumed run needs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DModel
from safetensors.torch import load_file, save_file
from torch import Tensor

from raydiff import diffusion as D
from raydiff.config import model_id
from raydiff.models import latent as L
from raydiff.errors import CheckpointError, ConfigError
from raydiff.io import MARKER, folder_sha256, is_complete
from raydiff.models.presets import PADDING_KEY, apply_padding, build_unet
from raydiff.seeding import derive_seed

META = "meta.json"
UNET_EMA = "unet_ema"
UNET = "unet"
VAE = "vae"
OPTIMIZER = "optimizer.safetensors"
TRAIN_STATE = "train_state.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
#: Bumped when the folder layout changes.
FORMAT_VERSION = 1

_RETRAIN = "re-train it with `raydiff train` (a half-finished run resumes), or delete the folder to start over."


# --------------------------------------------------------------------------------------------
# The scoring view of a trained model
# --------------------------------------------------------------------------------------------


@dataclass
class DiffusionModel:
    """A trained model kind for one category, as scoring uses it (EMA weights, eval mode).

    ``model_output(x_t, t)`` works in the model's space: images (B, C, H, W) in [-1, 1] for
    the pixel kinds, scaled latents (B, latent_channels, h, w) for ``latent`` (``encode`` /
    ``decode`` convert). ``noise_kind`` is what every stochastic term must be drawn from.
    """

    unet: UNet2DModel
    kind: str
    #: Image channels (1 or 3) — not the latent channels.
    channels: int
    learned_variance: bool
    noise_kind: str
    schedule: D.Schedule
    vae: AutoencoderKL | None = None
    latent_scale: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def sample_channels(self) -> int:
        """Channels of x_t: image channels, or latent channels for the ``latent`` kind."""
        return int(self.unet.config.in_channels)

    def model_output(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        """(ε_θ(x_t, t), v or None): ε (B,C,H,W) and the variance interpolation v (iDDPM) when learned."""
        out = self.unet(x_t, t.to(x_t.device)).sample
        return D.split_model_output(out, x_t.shape[1], self.learned_variance)

    def encode(self, x: Tensor) -> Tensor:
        """Images (B,C,H,W) in [-1,1] → scaled latents (posterior mean; ``latent`` kind only)."""
        if self.vae is None or self.latent_scale is None:
            raise ValueError(f"model kind {self.kind!r} has no VAE")
        return L.encode(self.vae, x, self.latent_scale)

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents → images (B,C,H,W), nominally in [-1, 1] (not clamped)."""
        if self.vae is None or self.latent_scale is None:
            raise ValueError(f"model kind {self.kind!r} has no VAE")
        return L.decode(self.vae, z, self.latent_scale, self.channels)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def flatten_optimizer_state(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` → (tensors by flat name, JSON-able rest)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in state["state"].items():
        for name, value in pstate.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: Mapping[str, Tensor], rest: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in rest.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": dict(sorted(state.items())), "param_groups": rest["param_groups"]}


def save_checkpoint(
    folder: Path,
    unet: UNet2DModel,
    ema_unet: UNet2DModel,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    meta: Mapping[str, Any],
    vae: AutoencoderKL | None = None,
    files: Mapping[str, str] | None = None,
    copy_files: Mapping[str, Path] | None = None,
) -> Path:
    """Write one complete checkpoint into ``folder`` (replacing the previous one atomically).

    ``files``: extra text files (name → content, e.g. loss.csv); ``copy_files``: extra files to
    copy in (name → source). The success marker is NOT written (``raydiff.io.write_marker`` at
    the end of training). Returns ``folder``.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        ema_unet.save_pretrained(tmp / UNET_EMA, safe_serialization=True)
        unet.save_pretrained(tmp / UNET, safe_serialization=True)
        if vae is not None:
            vae.save_pretrained(tmp / VAE, safe_serialization=True)
        state: dict[str, Any] = {"step": int(step), "format": FORMAT_VERSION}
        if optimizer is not None:
            tensors, rest = flatten_optimizer_state(optimizer.state_dict())
            save_file(tensors, str(tmp / OPTIMIZER))
            state["optimizer"] = rest
        (tmp / TRAIN_STATE).write_text(json.dumps(state, indent=1))
        (tmp / META).write_text(json.dumps({**meta, "step": int(step)}, indent=2, default=str))
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        for name, src in (copy_files or {}).items():
            if Path(src).is_file():
                shutil.copy2(src, tmp / name)
    except OSError as err:  # disk full, read-only: nothing partial is visible, the last checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(folder, f"cannot write the checkpoint ({err.strerror or err}); the previous one is kept.",
                              "free space (or fix permissions) under the output root and re-run: training resumes.") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, folder)
    return folder


def _swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by ``tmp`` with renames only (``recover`` undoes a crash in between)."""
    old = folder.parent / f".old-{folder.name}-{uuid.uuid4().hex[:8]}"
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def recover(folder: Path) -> None:
    """After a crash between the two renames of ``_swap_in``: put the previous checkpoint back;
    remove temporaries of killed writers."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return
    olds = sorted(folder.parent.glob(f".old-{folder.name}-*"), key=lambda p: p.stat().st_mtime)
    if not folder.exists() and olds:
        os.replace(olds[-1], folder)
        olds = olds[:-1]
    for p in [*olds, *folder.parent.glob(f".tmp-{folder.name}-*")]:
        shutil.rmtree(p, ignore_errors=True)


def has_checkpoint(folder: Path) -> bool:
    return (Path(folder) / TRAIN_STATE).is_file() and (Path(folder) / UNET / WEIGHTS).is_file()


def checkpoint_step(folder: Path) -> int | None:
    """The step of the checkpoint in ``folder`` (None when there is none or it is unreadable)."""
    try:
        return int(json.loads((Path(folder) / TRAIN_STATE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.exists():
        raise CheckpointError(folder, f"'{name}' is missing from the checkpoint folder.", _RETRAIN)
    return path


def read_meta(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    path = _require(folder, META)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(path, f"unreadable JSON ({err}).", _RETRAIN) from None


def load_unet(folder: Path, name: str = UNET_EMA, device: torch.device | str = "cpu") -> UNet2DModel:
    """A ``UNet2DModel`` from a ``save_pretrained`` sub-folder: strict shapes, finite weights."""
    folder = Path(folder)
    sub = _require(folder, name)
    cfg_path, weights = _require(sub, "config.json"), _require(sub, WEIGHTS)
    try:
        config = json.loads(cfg_path.read_text())
        padding = config.pop(PADDING_KEY, "zeros")  # checkpoints from before the setting: zeros
        unet = apply_padding(UNet2DModel.from_config(config), padding)
    except (OSError, json.JSONDecodeError, TypeError, ValueError, ConfigError) as err:
        raise CheckpointError(cfg_path, f"not a valid UNet2DModel config ({err}).", _RETRAIN) from None
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise CheckpointError(weights, f"unreadable safetensors file ({err}).", _RETRAIN) from None
    check_finite(state, weights)
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as err:
        problem = str(err).replace("\n", " ").replace("\t", " ")[:600]
        raise CheckpointError(weights, f"weights do not fit the network in config.json: {problem}", _RETRAIN) from None
    return unet.to(device)


def fold_class_label(unet: UNet2DModel, label: int) -> UNet2DModel:
    """A class-conditional UNet that always gets ``label``, as an unconditional one (in place).

    UNet2DModel adds ``class_embedding(label)`` to the time embedding ``linear_2(...)``'s output;
    with one label per model that is a constant added to ``linear_2``'s bias, so the row is
    folded into it and the embedding removed: every scoring path then calls ``unet(x, t)``
    (compiled or not) and gets the conditional output (equal up to float rounding).
    """
    emb = unet.class_embedding
    if emb is None:
        return unet
    if not isinstance(emb, torch.nn.Embedding) or not 0 <= label < emb.num_embeddings:
        raise ValueError(f"cannot fold label {label} into a class embedding {emb}")
    with torch.no_grad():
        unet.time_embedding.linear_2.bias.add_(emb.weight[label].to(unet.time_embedding.linear_2.bias.dtype))
    unet.class_embedding = None
    unet.register_to_config(num_class_embeds=None)
    return unet


def check_finite(state: Mapping[str, Tensor], path: Path) -> None:
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                path, f"tensor '{key}' has {bad} NaN/inf values (training diverged or the file is damaged).",
                "lower models.lr or raise models.grad_clip and re-train with `raydiff train`, or delete the folder.",
            )


def random_models(cfg: Any, channels: int, device: torch.device, kinds: Sequence[str]) -> dict[str, Any]:
    """One freshly initialised (untrained) DiffusionModel per model name of ``cfg``, shaped as
    training would build it: for benchmarks, and for counting passes (``raydiff.plan``)."""

    size = cfg.dataset.image_size
    out: dict[str, Any] = {}
    for i, kind in enumerate(kinds):
        torch.manual_seed(cfg.seed + i)
        vae, scale, sample_channels, sample_size = None, None, channels, size
        mc = spec = cfg.model_spec(kind)
        schedule = D.Schedule.from_config(mc).to(device)
        if spec.is_latent:
            lat = mc.vae
            vae = L.build_vae(mc.preset, channels, size, lat.latent_channels, lat.vae_downsample).to(device).eval()
            scale, sample_channels, sample_size = 1.0, lat.latent_channels, size >> lat.vae_downsample
        learned = spec.learned_variance
        unet = build_unet(mc.preset, sample_channels, sample_channels * (2 if learned else 1), sample_size, mc.base_channels)
        out[kind] = DiffusionModel(
            unet=unet.to(device).eval().requires_grad_(False), kind=kind, channels=channels, learned_variance=learned,
            noise_kind=spec.noise, schedule=schedule, vae=vae, latent_scale=scale,
        )
    return out


def expected_meta(cfg: Any, name: str, category: str) -> dict[str, Any]:
    """What ``meta.json`` of model ``name`` trained for ``category`` under ``cfg`` must record
    (the keys ``raydiff.train.loop.train_one`` writes from the config, not from the data)."""
    spec = cfg.models.spec(name)
    return {
        "kind": name, "model_id": model_id(cfg, name, category), "preset": spec.preset,
        "noise_kind": spec.noise, "learned_variance": spec.learned_variance, "image_size": cfg.dataset.image_size,
        "schedule": D.Schedule.from_config(spec).describe(),
        "seed": derive_seed(cfg.seed, "train", cfg.dataset.dataset_name, category, name),
    }


def check_meta(folder: Path, meta: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    """CheckpointError naming the first key of ``expect`` that ``meta`` records differently (an
    edited or foreign ``meta.json``: its numbers would not be this config's)."""
    for key, value in expect.items():
        if json.loads(json.dumps(meta.get(key), default=str)) != json.loads(json.dumps(value, default=str)):
            raise CheckpointError(
                Path(folder) / META,
                f"records {key} = {meta.get(key)!r}, but the config gives {value!r}: this is not the config's model.",
                f"delete {folder} and re-train it with `raydiff train` (or `raydiff sweep`).",
            )


def load_model(folder: Path, device: torch.device | str = "cpu", require_complete: bool = True,
               expect: Mapping[str, Any] | None = None, vae_path: str | None = None) -> DiffusionModel:
    """The EMA model of a checkpoint folder, in eval mode on ``device``.

    Raises :class:`CheckpointError` (folder + file + fix) for a missing folder, an unfinished
    run (no success marker, unless ``require_complete=False``), missing files, NaN/inf weights
    or weights that do not match the saved architecture. ``expect`` (``expected_meta``): what
    meta.json must record for the config at hand. ``vae_path``: where the pretrained VAE of a
    latent model is now (the config's ``vae_path``; default: where meta.json says it was).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "checkpoint folder does not exist.", "train the model first with `raydiff train`.")
    if require_complete and not is_complete(folder):
        raise CheckpointError(
            folder, f"training has not finished (no {MARKER} marker).",
            "run `raydiff train` again: it resumes from the last checkpoint.",
        )
    meta = read_meta(folder)
    for key in ("kind", "channels", "learned_variance", "noise_kind", "schedule"):
        if key not in meta:
            raise CheckpointError(folder / META, f"key '{key}' is missing.", _RETRAIN)
    if expect is not None:
        check_meta(folder, meta, expect)
    unet = load_unet(folder, UNET_EMA, device).eval().requires_grad_(False)
    if unet.class_embedding is not None:  # a class-conditional pretrained init: trained on one label
        label = (meta.get("init") or {}).get("class_label")
        if not isinstance(label, int):
            raise CheckpointError(folder / META, "the UNet is class-conditional, but init.class_label is not recorded.",
                                  _RETRAIN)
        fold_class_label(unet, label)
    sample_channels = int(meta.get("latent_channels") or meta["channels"])
    expect_out = sample_channels * (2 if meta["learned_variance"] else 1)
    if unet.config.in_channels != sample_channels or unet.config.out_channels != expect_out:
        raise CheckpointError(
            folder / UNET_EMA / "config.json",
            f"UNet has {unet.config.in_channels} in / {unet.config.out_channels} out channels; meta.json "
            f"says {sample_channels} / {expect_out}.",
            _RETRAIN,
        )
    sch = meta["schedule"]
    schedule = D.Schedule.build(sch["kind"], sch["timesteps"], sch["beta_start"], sch["beta_end"]).to(device)
    vae = None
    # "arch" is recorded since models are named; earlier checkpoints were named by kind.
    latent = meta.get("arch", "latent" if meta["kind"] == "latent" else "pixel") == "latent"
    if latent:
        vae = load_vae_for_checkpoint(folder, meta, device, vae_path)
    scale = meta.get("latent_scale")
    if latent and (scale is None or not math.isfinite(scale) or scale <= 0):
        raise CheckpointError(folder / META, f"latent_scale is {scale!r}; expected a positive number.", _RETRAIN)
    return DiffusionModel(
        unet=unet, kind=meta["kind"], channels=int(meta["channels"]), learned_variance=bool(meta["learned_variance"]),
        noise_kind=meta["noise_kind"], schedule=schedule, vae=vae, latent_scale=scale, meta=meta,
    )


@dataclass
class TrainingState:
    """What a resumed run needs (online + EMA weights, optimizer state, step)."""

    step: int
    unet: UNet2DModel
    ema_unet: UNet2DModel
    optimizer_state: dict[str, Any] | None
    meta: dict[str, Any]


def load_training_state(folder: Path, device: torch.device | str = "cpu") -> TrainingState:
    folder = Path(folder)
    path = _require(folder, TRAIN_STATE)
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(path, f"unreadable JSON ({err}).", _RETRAIN) from None
    unet = load_unet(folder, UNET, device)
    ema = load_unet(folder, UNET_EMA, device)
    opt_state = None
    if "optimizer" in state:
        opt_path = _require(folder, OPTIMIZER)
        tensors = load_file(str(opt_path), device=str(device))
        check_finite(tensors, opt_path)
        opt_state = unflatten_optimizer_state(tensors, state["optimizer"])
    return TrainingState(step=int(state["step"]), unet=unet, ema_unet=ema, optimizer_state=opt_state, meta=read_meta(folder))


def load_vae_for_checkpoint(folder: Path, meta: dict[str, Any], device: torch.device | str,
                            vae_path: str | None = None) -> AutoencoderKL:
    """The VAE a ``latent`` checkpoint was trained with: its own ``vae/`` folder, or the pretrained
    folder (at ``vae_path`` when given, else where meta.json says it was), which must have the
    content meta.json records (``vae.sha256``: a moved folder is found, an edited one refused)."""
    folder = Path(folder)
    source = (meta.get("vae") or {}).get("source", "trained")
    if source == "pretrained":
        path = Path(vae_path or meta["vae"]["path"])
        if not (path / "config.json").is_file():
            raise CheckpointError(
                folder / "meta.json", f"the pretrained VAE it was trained with ({path}) is not there any more.",
                "restore that folder, or point the model's vae.vae_path at where it is now.",
            )
        recorded = meta["vae"].get("sha256")
        if recorded is not None and (actual := folder_sha256(path)) != recorded:
            raise CheckpointError(
                folder / "meta.json", f"was trained with the VAE folder of sha256 {recorded}, but {path} has {actual}.",
                "restore the VAE it was trained with, or delete this checkpoint folder and re-train with "
                "`raydiff train`.",
            )
        return L.load_pretrained_vae(path, device)
    sub = folder / VAE
    if not (sub / "config.json").is_file() or not (sub / WEIGHTS).is_file():
        raise CheckpointError(folder, f"'{VAE}/' (config.json + {WEIGHTS}) is missing.",
                              "re-train with `raydiff train`, or delete the folder.")
    try:
        vae_config = json.loads((sub / "config.json").read_text())
        vae_padding = vae_config.pop(PADDING_KEY, "zeros")
        vae = apply_padding(AutoencoderKL.from_config(vae_config), vae_padding)
        state = load_file(str(sub / WEIGHTS))
    except Exception as err:
        raise CheckpointError(sub, f"cannot read the VAE ({err}).".replace("\n", " "),
                              "re-train with `raydiff train`, or delete the folder.") from None
    check_finite(state, sub / WEIGHTS)
    try:
        vae.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(sub / WEIGHTS, f"weights do not fit config.json: {str(err)[:400]}".replace("\n", " "),
                              "re-train with `raydiff train`, or delete the folder.") from None
    return vae.to(device).eval().requires_grad_(False)
