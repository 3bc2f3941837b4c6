"""Run configuration: frozen dataclasses loaded from YAML.

Every section is a frozen dataclass; ``load_config`` rejects unknown keys, wrong types and
out-of-range values with a :class:`ConfigError` that names the key, the file and the valid
choices. YAML keys may use ``-`` where the field uses ``_`` (``static-gaussian``).

Two stable hashes name output folders:

- ``model_id(cfg)``: what determines the trained weights (dataset minus the category list,
  models, seed). Checkpoints live in ``OUT/models/<model_id>/<category>/<kind>/``.
- ``run_id(cfg)``: everything that determines any score (the above plus features and every
  variant's parameters). Scores live in ``OUT/<run_id>/``. The category list, the enabled
  variant list, the output root and Ray resources are left out, so a later run with more
  categories or variants extends the same folder instead of starting a new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from raydiff.errors import ConfigError

ModelKind = Literal["pixel", "pixel-simplex", "pixel-gmm", "latent"]
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
NoiseKind = Literal["gaussian", "simplex", "gmm"]
Smoothing = Literal["none", "mean", "gaussian"]
ImageScore = Literal["max", "avgpool-max", "topk-mean", "mean"]

VARIANT_IDS: tuple[str, ...] = (
    "static-gaussian",
    "static-simplex",
    "static-gmm",
    "no-diffusion",
    "dynamic",
    "dynamic-pixel",
    "kl",
    "trend",
    "trend-intensity",
    "trend-uncertainty",
)
VariantId = Literal[
    "static-gaussian",
    "static-simplex",
    "static-gmm",
    "no-diffusion",
    "dynamic",
    "dynamic-pixel",
    "kl",
    "trend",
    "trend-intensity",
    "trend-uncertainty",
]

#: The model kind each variant scores with.
VARIANT_MODEL_KIND: dict[str, str] = {
    "static-gaussian": "pixel",
    "static-simplex": "pixel-simplex",
    "static-gmm": "pixel-gmm",
    "no-diffusion": "pixel",
    "dynamic": "latent",
    "dynamic-pixel": "pixel",
    "kl": "pixel",
    "trend": "pixel",
    "trend-intensity": "pixel",
    "trend-uncertainty": "pixel",
}


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"range": (lo, hi)}


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetConfig:
    """Where the images are and how they are turned into tensors."""

    kind: Literal["mvtec", "visa", "btad", "generic"] = "mvtec"
    #: Folder of the dataset; ``${VAR}`` and ``~`` are expanded, relative paths are taken
    #: relative to the config file's folder.
    root: str = "data"
    #: Value of the ``dataset`` column; defaults to ``kind``.
    name: str | None = None
    #: Categories to use; empty = every category found under ``root``.
    categories: tuple[str, ...] = ()
    image_size: int = field(default=256, metadata=_range(8, 4096))
    #: ``auto`` keeps the dataset's channel count (1 for grayscale, 3 for RGB).
    channels: Literal["auto", "gray", "rgb"] = "auto"
    #: Non-square images: ``resize`` squashes to a square, ``center-crop`` crops first.
    fit: Literal["resize", "center-crop"] = "resize"
    #: Fraction of train/good held out of training, for normalisation statistics.
    holdout_fraction: float = field(default=0.1, metadata=_range(0.0, 0.5))
    #: At least this many held-out normal images per category (when there are enough).
    holdout_min: int = field(default=4, metadata=_range(0, 1000))

    @property
    def dataset_name(self) -> str:
        return self.name or self.kind


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation (Kashihara): random flips and 90-degree rotations."""

    hflip: bool = True
    vflip: bool = True
    rotate90: bool = True


@dataclass(frozen=True)
class SimplexConfig:
    """AnoDDPM simplex noise: octave o sampled at (x, y, z) / (frequency / 2**o), amplitude persistence**o."""

    octaves: int = field(default=6, metadata=_range(1, 12))
    persistence: float = field(default=0.8, metadata=_range(0.0, 1.0))
    #: Feature size of the first octave, in pixels at 256 px (scaled with the image size).
    frequency: float = field(default=64.0, metadata=_range(1.0, 4096.0))


@dataclass(frozen=True)
class GMMConfig:
    """Fučka eq. 7-8: a sum of K random 2-D Gaussian bumps per map, standardised."""

    min_components: int = field(default=8, metadata=_range(1, 10000))
    max_components: int = field(default=64, metadata=_range(1, 10000))
    #: Bump standard deviations, as fractions of the image side.
    min_sigma: float = field(default=0.01, metadata=_range(1e-4, 1.0))
    max_sigma: float = field(default=0.1, metadata=_range(1e-4, 1.0))


@dataclass(frozen=True)
class LatentConfig:
    """The ``latent`` model kind: an AutoencoderKL plus a UNet on its latents."""

    #: A local diffusers AutoencoderKL folder (e.g. a Stable Diffusion VAE); none = train one.
    vae_path: str | None = None
    vae_train_steps: int = field(default=2000, metadata=_range(0, 10_000_000))
    vae_lr: float = field(default=1e-4, metadata=_range(0.0, 1.0))
    vae_kl_weight: float = field(default=1e-6, metadata=_range(0.0, 1.0))
    latent_channels: int = field(default=4, metadata=_range(1, 64))
    #: Number of 2x downsamplings of the VAE we train (SD's VAE: 3, i.e. 8x).
    vae_downsample: int = field(default=2, metadata=_range(0, 5))
    #: Latent scale factor; none = 1/std of the training latents (SD's VAE uses 0.18215).
    scale: float | None = None


@dataclass(frozen=True)
class ModelsConfig:
    """What is trained per category (one model per kind) and how."""

    kinds: tuple[ModelKind, ...] = ("pixel", "pixel-simplex", "pixel-gmm", "latent")
    preset: Literal["tiny", "ddad", "anoddpm"] = "ddad"
    #: Overrides the preset's base width.
    base_channels: int | None = field(default=None, metadata=_range(4, 1024))
    schedule: Literal["linear", "cosine", "dynad"] = "linear"
    #: Linear schedule ends (ignored by cosine; ``dynad`` is 0.0015 -> 0.0195).
    beta_start: float = field(default=1e-4, metadata=_range(0.0, 1.0))
    beta_end: float = field(default=0.02, metadata=_range(0.0, 1.0))
    timesteps: int = field(default=1000, metadata=_range(10, 100_000))
    train_steps: int = field(default=10_000, metadata=_range(1, 100_000_000))
    batch_size: int = field(default=16, metadata=_range(1, 65536))
    lr: float = field(default=1e-4, metadata=_range(0.0, 1.0))
    weight_decay: float = field(default=0.0, metadata=_range(0.0, 1.0))
    ema_decay: float = field(default=0.999, metadata=_range(0.0, 1.0))
    grad_clip: float = field(default=1.0, metadata=_range(0.0, None))
    #: Weight of L_vlb in the improved-DDPM hybrid loss (``pixel`` kind).
    vlb_weight: float = field(default=0.001, metadata=_range(0.0, 1.0))
    #: Save a checkpoint (and report to Ray) every this many steps.
    checkpoint_every: int = field(default=500, metadata=_range(1, 100_000_000))
    augment: AugmentConfig = AugmentConfig()
    #: Per-category augmentation, e.g. ``{transistor: {hflip: false, vflip: false, rotate90: false}}``.
    augment_per_category: Mapping[str, AugmentConfig] = field(default_factory=dict)
    simplex: SimplexConfig = SimplexConfig()
    gmm: GMMConfig = GMMConfig()
    latent: LatentConfig = LatentConfig()

    def augment_for(self, category: str) -> AugmentConfig:
        return self.augment_per_category.get(category, self.augment)


# --------------------------------------------------------------------------------------------
# Scoring variants
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaticConfig:
    """Kashihara "diffusion" / Fučka: noise to t0 with the model's noise kind, reverse to 0."""

    t0: int = field(default=200, metadata=_range(1, 100_000))
    #: Reverse steps from t0 to 0 (DDPM ancestral uses t0 steps when ``steps == t0``).
    steps: int = field(default=200, metadata=_range(1, 100_000))
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    smoothing: Smoothing = "mean"
    smoothing_size: int = field(default=11, metadata=_range(1, 255))
    sigma: float = field(default=4.0, metadata=_range(0.0, 100.0))
    image_score: ImageScore = "max"
    #: avgpool-max kernel; 0 = round(image_size / 25) (Kashihara).
    pool_size: int = field(default=0, metadata=_range(0, 255))
    top_k: int = field(default=64, metadata=_range(1, 1_000_000))


@dataclass(frozen=True)
class NoDiffusionConfig:
    """Kashihara no-diffusion: the input itself is taken as x_t0 and reversed to 0."""

    t0: int = field(default=50, metadata=_range(1, 100_000))
    steps: int = field(default=5, metadata=_range(1, 100_000))
    sampler: Literal["ddpm", "ddim"] = "ddim"
    smoothing: Smoothing = "none"
    smoothing_size: int = field(default=11, metadata=_range(1, 255))
    sigma: float = field(default=4.0, metadata=_range(0.0, 100.0))
    image_score: ImageScore = "avgpool-max"
    pool_size: int = field(default=0, metadata=_range(0, 255))
    top_k: int = field(default=64, metadata=_range(1, 1_000_000))


@dataclass(frozen=True)
class DynamicConfig:
    """DynAD: KNN-prior noise level, noiseless start, guided DDIM (DDAD), pixel+feature map."""

    t_max: int = field(default=80, metadata=_range(1, 100_000))
    ddim_steps: int = field(default=10, metadata=_range(1, 10_000))
    guidance_w: float = field(default=4.0, metadata=_range(0.0, 100.0))
    #: map = lam * l_map + (1 - lam) * f_map.
    lam: float = field(default=0.85, metadata=_range(0.0, 1.0))
    knn_k: int = field(default=20, metadata=_range(1, 10_000))
    bins: int = field(default=10, metadata=_range(1, 1000))
    smoothing: Smoothing = "gaussian"
    smoothing_size: int = field(default=11, metadata=_range(1, 255))
    sigma: float = field(default=4.0, metadata=_range(0.0, 100.0))
    image_score: ImageScore = "max"
    pool_size: int = field(default=0, metadata=_range(0, 255))
    top_k: int = field(default=64, metadata=_range(1, 1_000_000))


@dataclass(frozen=True)
class KLConfig:
    """RAN: per-pixel KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) at several t, plus a feature term."""

    timesteps: tuple[int, ...] = (20, 200, 400)
    #: map = (1 - feature_weight) * kl_map + feature_weight * feature_map (RAN: 1:1).
    feature_weight: float = field(default=0.5, metadata=_range(0.0, 1.0))
    smoothing: Smoothing = "none"
    smoothing_size: int = field(default=11, metadata=_range(1, 255))
    sigma: float = field(default=4.0, metadata=_range(0.0, 100.0))
    image_score: ImageScore = "topk-mean"
    pool_size: int = field(default=0, metadata=_range(0, 255))
    top_k: int = field(default=64, metadata=_range(1, 1_000_000))


@dataclass(frozen=True)
class TrendConfig:
    """Kim et al.: DFT trend of reconstruction error and of model uncertainty over noise levels."""

    levels: tuple[int, ...] = (25, 50, 75, 100, 150, 200, 300, 400)
    reconstruction: Literal["one-step", "ddim"] = "one-step"
    ddim_steps: int = field(default=5, metadata=_range(1, 10_000))
    smoothing: Smoothing = "gaussian"
    smoothing_size: int = field(default=11, metadata=_range(1, 255))
    sigma: float = field(default=4.0, metadata=_range(0.0, 100.0))
    image_score: ImageScore = "max"
    pool_size: int = field(default=0, metadata=_range(0, 255))
    top_k: int = field(default=64, metadata=_range(1, 1_000_000))


@dataclass(frozen=True)
class VariantsConfig:
    """Which variants to score and each one's parameters (YAML keys are the variant ids)."""

    enabled: tuple[VariantId, ...] = VARIANT_IDS  # type: ignore[assignment]
    static_gaussian: StaticConfig = StaticConfig()
    static_simplex: StaticConfig = StaticConfig()
    static_gmm: StaticConfig = StaticConfig(smoothing_size=5)
    no_diffusion: NoDiffusionConfig = NoDiffusionConfig()
    dynamic: DynamicConfig = DynamicConfig()
    dynamic_pixel: DynamicConfig = DynamicConfig()
    kl: KLConfig = KLConfig()
    #: Shared by ``trend``, ``trend-intensity`` and ``trend-uncertainty`` (one pass computes all three).
    trend: TrendConfig = TrendConfig()

    def params(self, variant: str) -> Any:
        """The parameter dataclass of a variant id."""
        if variant.startswith("trend"):
            return self.trend
        return getattr(self, variant.replace("-", "_"))


@dataclass(frozen=True)
class FeaturesConfig:
    """The ResNet-34 feature extractor φ (DynAD's KNN prior and feature maps, RAN's feature term)."""

    #: A local torchvision/timm ResNet-34 state dict (.pth/.safetensors); none = random init.
    resnet34_weights: str | None = None
    #: Epochs of DynAD domain adaptation of φ on normal images (0 = off).
    domain_adaptation_epochs: int = field(default=0, metadata=_range(0, 100))
    domain_adaptation_lr: float = field(default=1e-4, metadata=_range(0.0, 1.0))


# --------------------------------------------------------------------------------------------
# Output and Ray
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputConfig:
    #: Root of all outputs; relative paths are taken relative to the current directory.
    root: str = "raydiff-out"


@dataclass(frozen=True)
class RayConfig:
    """Resources. Only used where work is distributed (training launch, fitting, scoring pipeline).

    Every request comes from here, never from a snapshot of the cluster: on an autoscaling
    cluster the GPU nodes exist only once something asks for GPUs.
    """

    #: ``null`` = start a local Ray; ``auto`` = the cluster this job was submitted to; or an address.
    address: str | None = None
    #: What trainings, fits and scoring actors ask Ray for: ``gpu`` = GPUs (an autoscaler adds
    #: GPU nodes for them), ``cpu`` = CPUs only.
    accelerator: Literal["gpu", "cpu"] = "cpu"
    #: What torch computes on in those workers. ``auto``: cuda when ``accelerator`` is gpu, else
    #: cpu. ``cpu`` with ``accelerator: gpu`` asks for GPU resources but computes on the CPU
    #: (simulating a GPU cluster on machines without one, as the tests do).
    device: Literal["auto", "cuda", "cpu"] = "auto"
    #: Per training run (one category x model kind); GPUs only with ``accelerator: gpu``.
    cpus_per_training: float = field(default=1.0, metadata=_range(0.0, 1024.0))
    gpus_per_training: float = field(default=1.0, metadata=_range(0.0, 64.0))
    #: 0 = no limit beyond what the requested resources allow (an autoscaler sees all the demand).
    max_concurrent_trainings: int = field(default=0, metadata=_range(0, 100_000))
    #: 0 = one Train run per (category, kind). N > 0 = pack the pending trainings into at most N
    #: runs that train their models one after another: each run costs a few processes' start-up
    #: (~25 CPU-seconds), which dominates many tiny CPU trainings (the demo) but not GPU ones.
    training_runs: int = field(default=0, metadata=_range(0, 100_000))
    #: Training worker restarts after a failure (resumes from the last checkpoint).
    max_failures: int = field(default=2, metadata=_range(-1, 1000))
    scoring_batch_size: int = field(default=8, metadata=_range(1, 65536))
    #: Images per backward pass of trend's uncertainty gradient (0 = the whole batch). A backward
    #: pass keeps the forward's activations: bound it on small GPUs (see cluster.yaml).
    gradient_chunk: int = field(default=0, metadata=_range(0, 65536))
    #: Most scoring actors per category (each category's pool grows from 1 while it has queued
    #: batches and free resources); 0 = as many as the category has batches.
    scoring_actors: int = field(default=0, metadata=_range(0, 100_000))
    cpus_per_scoring_actor: float = field(default=1.0, metadata=_range(0.0, 1024.0))
    #: Per scoring actor and per fit task, with ``accelerator: gpu`` (0.5 = two actors per GPU).
    gpus_per_scoring_actor: float = field(default=1.0, metadata=_range(0.0, 64.0))
    #: Interface the dashboard of a Ray started by raydiff listens on.
    dashboard_host: str = "127.0.0.1"

    @property
    def torch_device(self) -> str:
        """``cuda`` or ``cpu``: what the workers compute on (``device`` with ``auto`` resolved)."""
        if self.device == "auto":
            return "cuda" if self.accelerator == "gpu" else "cpu"
        return self.device


@dataclass(frozen=True)
class Config:
    dataset: DatasetConfig = DatasetConfig()
    models: ModelsConfig = ModelsConfig()
    variants: VariantsConfig = VariantsConfig()
    features: FeaturesConfig = FeaturesConfig()
    output: OutputConfig = OutputConfig()
    ray: RayConfig = RayConfig()
    seed: int = 0
    #: The file this config was loaded from (not hashed; for messages and relative paths).
    source: str | None = field(default=None, metadata={"internal": True})

    def model_kinds_needed(self) -> tuple[str, ...]:
        """Model kinds the enabled variants need, in MODEL_KINDS order."""
        needed = {VARIANT_MODEL_KIND[v] for v in self.variants.enabled}
        return tuple(k for k in MODEL_KINDS if k in needed)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

#: The embedded default benchmark's config (what ``make demo`` runs).
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "textures.yaml"

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(value: str) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset ``${VAR}`` without default is an error."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"path {value!r}",
            f"environment variable {name} is not set.",
            f"export {name}=/path/to/it, or override the key on the command line.",
        )

    return _ENV.sub(sub, value)


def expand_path(value: str, base: Path | None = None) -> Path:
    """``${VAR}`` substitution and ``~``; relative paths are taken from ``base`` when given."""
    path = Path(substitute_env(value)).expanduser()
    if not path.is_absolute() and base is not None:
        path = (base / path).resolve()
    return path


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (tuple, list):
        return "a list"
    if origin in (Mapping, dict):
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the dataclass's form."""
    origin = get_origin(tp)
    bad = ConfigError(
        where, f"key '{key}' must be {_type_name(tp)}, got {value!r}.", f"correct '{key}' in the file."
    )
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except ConfigError as err:
                errors.append(err)
        raise bad
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                where,
                f"key '{key}' is {value!r}; valid choices: {', '.join(map(str, choices))}.",
                f"set '{key}' to one of them.",
            )
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise bad
        return _build(tp, value, key, where)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad
        (item_tp, *_rest) = get_args(tp)
        return tuple(_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise bad
        _k_tp, v_tp = get_args(tp)
        return {str(k): _convert(v, v_tp, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module


def _build(cls: type, data: Mapping[str, Any], prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        name = str(raw_key).replace("-", "_")
        key = f"{prefix}.{raw_key}" if prefix else str(raw_key)
        if name not in fields:
            valid = ", ".join(sorted(f.replace("_", "-") if cls is VariantsConfig else f for f in fields))
            raise ConfigError(
                where,
                f"unknown key '{key}'.",
                f"use one of: {valid}.",
            )
        converted = _convert(value, hints[name], key, where)
        lo, hi = fields[name].metadata.get("range", (None, None))
        if isinstance(converted, (int, float)) and not isinstance(converted, bool):
            if (lo is not None and converted < lo) or (hi is not None and converted > hi):
                span = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                raise ConfigError(
                    where, f"key '{key}' = {converted} is out of range {span}.", f"pick a value in {span}."
                )
        kwargs[name] = converted
    obj = cls(**kwargs)
    _check_consistency(obj, prefix, where)
    return obj


def _check_consistency(obj: Any, prefix: str, where: str) -> None:
    """Cross-field rules that a single field's type and range cannot express."""
    if isinstance(obj, GMMConfig):
        if obj.min_components > obj.max_components:
            raise ConfigError(where, f"'{prefix}.min_components' > 'max_components'.", "swap them.")
        if obj.min_sigma > obj.max_sigma:
            raise ConfigError(where, f"'{prefix}.min_sigma' > 'max_sigma'.", "swap them.")
    if isinstance(obj, (StaticConfig, NoDiffusionConfig)) and obj.steps > obj.t0:
        raise ConfigError(
            where, f"'{prefix}.steps' = {obj.steps} exceeds t0 = {obj.t0}.", "use steps <= t0."
        )
    if isinstance(obj, TrendConfig):
        if len(obj.levels) < 3 or list(obj.levels) != sorted(set(obj.levels)):
            raise ConfigError(
                where,
                f"'{prefix}.levels' must be at least 3 strictly increasing timesteps, got {list(obj.levels)}.",
                "list levels such as [25, 50, 100, 200, 400].",
            )
    if isinstance(obj, KLConfig) and (not obj.timesteps or min(obj.timesteps) < 1):
        raise ConfigError(where, f"'{prefix}.timesteps' must be non-empty and >= 1.", "e.g. [20, 200, 400].")
    if isinstance(obj, ModelsConfig):
        if not obj.kinds:
            raise ConfigError(where, "'models.kinds' is empty.", f"list some of: {', '.join(MODEL_KINDS)}.")
        if obj.beta_start >= obj.beta_end:
            raise ConfigError(where, "'models.beta_start' must be < 'models.beta_end'.", "swap them.")
    if isinstance(obj, Config):
        _check_config(obj, where)


def _check_config(cfg: Config, where: str) -> None:
    if "://" in cfg.output.root:
        raise ConfigError(
            where,
            f"'output.root' is a URI ({cfg.output.root}); raydiff commits results with atomic renames, "
            "which object stores do not have.",
            "use a POSIX path that every node mounts at the same place (NFS, EFS, FSx for Lustre).",
        )
    if cfg.ray.device == "cuda" and cfg.ray.accelerator != "gpu":
        raise ConfigError(
            where,
            "'ray.device' is cuda but 'ray.accelerator' is cpu: the workers would get no GPU from Ray.",
            "set ray.accelerator: gpu (or ray.device: auto / cpu).",
        )
    missing = sorted({VARIANT_MODEL_KIND[v] for v in cfg.variants.enabled} - set(cfg.models.kinds))
    if missing:
        needing = [v for v in cfg.variants.enabled if VARIANT_MODEL_KIND[v] in missing]
        raise ConfigError(
            where,
            f"variants {', '.join(needing)} need model kind(s) {', '.join(missing)}, "
            f"which 'models.kinds' does not train.",
            f"add {', '.join(missing)} to 'models.kinds' or remove those variants from 'variants.enabled'.",
        )
    T = cfg.models.timesteps
    for v in cfg.variants.enabled:
        p = cfg.variants.params(v)
        levels = (
            [p.t0] if hasattr(p, "t0") else list(getattr(p, "timesteps", ())) + list(getattr(p, "levels", ()))
        )
        if hasattr(p, "t_max"):
            levels.append(p.t_max)
        if any(t >= T for t in levels):
            raise ConfigError(
                where,
                f"variant '{v}' uses timestep {max(levels)} >= models.timesteps = {T}.",
                f"keep every timestep below {T}.",
            )


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` in a nested dict (CLI overrides of config keys)."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError("command line", f"'{dotted}': '{part}' is not a section.", "check the key.")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(items: typing.Iterable[str], where: str = "--set") -> dict[str, Any]:
    """``["models.lr=3e-4"]`` → ``{"models.lr": 0.0003}`` (values parsed as YAML scalars/lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(where, f"'{item}' is not KEY=VALUE.", "write it like models.train_steps=200.")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(where, f"'{item}': the value is not valid YAML ({err}).".replace("\n", " "),
                              "quote it, e.g. --set 'dataset.root=\"/data/x\"'.") from None
    return out


def config_from_dict(
    data: Mapping[str, Any] | None, where: str = "<config>", source: str | None = None
) -> Config:
    """Build a :class:`Config` from plain data (as parsed from YAML)."""
    data = dict(data or {})
    cfg = _build(Config, data, "", where)
    return dataclasses.replace(cfg, source=source)


#: Path-valued keys: ``${VAR}`` expanded; the flag says whether a relative path is taken from the
#: config file's folder (inputs) or left relative to the working directory (the output root).
_PATH_KEYS: tuple[tuple[str, bool], ...] = (
    ("dataset.root", True),
    ("features.resnet34_weights", True),
    ("models.latent.vae_path", True),
    ("output.root", False),
)


def _expand_paths(data: dict[str, Any], base: Path) -> None:
    for dotted, from_config in _PATH_KEYS:
        *parents, leaf = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(leaf), str):
            continue
        text = substitute_env(node[leaf])
        if not text.strip():
            node[leaf] = None  # "${OPTIONAL:-}" left empty: the optional path is not configured
            continue
        node[leaf] = str(expand_path(text, base if from_config else None))


def load_config(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a YAML config; ``overrides`` maps dotted keys (``models.train_steps``) to values.

    ``dataset.root`` is resolved against the config file's folder when relative. Raises
    :class:`ConfigError` naming the key, the file and the fix.
    """
    data: dict[str, Any] = {}
    where = "<defaults>"
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise ConfigError(where, "config file not found.", "check the path (e.g. configs/textures.yaml).")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(where, f"not valid YAML ({err}).".replace("\n", " "), "fix the syntax.") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(where, "the top level must be a mapping of sections.", "see configs/textures.yaml.")
        data = loaded
        base = p.resolve().parent
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    _expand_paths(data, base)
    return config_from_dict(data, where=where, source=str(Path(path).resolve()) if path else None)


# --------------------------------------------------------------------------------------------
# Serialisation and stable ids
# --------------------------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain data (lists, dicts, scalars) with YAML key spelling; round-trips through load."""

    def conv(obj: Any, in_variants: bool = False) -> Any:
        if dataclasses.is_dataclass(obj):
            out = {}
            for f in dataclasses.fields(obj):
                if f.metadata.get("internal"):
                    continue
                key = f.name.replace("_", "-") if isinstance(obj, VariantsConfig) and f.name != "enabled" else f.name
                out[key] = conv(getattr(obj, f.name))
            return out
        if isinstance(obj, Mapping):
            return {k: conv(v) for k, v in obj.items()}
        if isinstance(obj, (tuple, list)):
            return [conv(v) for v in obj]
        return obj

    return conv(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def _digest(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _dataset_identity(cfg: Config) -> dict[str, Any]:
    # The root is left out: a job submitted with --working-dir unpacks to a new path each time,
    # and the same data under another path must not retrain everything.
    ds = config_to_dict(cfg.dataset)
    ds.pop("categories")
    ds.pop("root")
    return ds


def model_id(cfg: Config) -> str:
    """Stable id of what determines the trained weights."""
    return _digest({"dataset": _dataset_identity(cfg), "models": config_to_dict(cfg.models), "seed": cfg.seed})


def run_id(cfg: Config) -> str:
    """Stable id of what determines every score (see the module docstring)."""
    variants = config_to_dict(cfg.variants)
    variants.pop("enabled")
    return _digest(
        {
            "model": model_id(cfg),
            "features": config_to_dict(cfg.features),
            "variants": variants,
        }
    )
