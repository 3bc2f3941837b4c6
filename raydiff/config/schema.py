"""The config schema: frozen dataclasses per section, and the two tables every other module
derives its facts from.

- ``MODEL_KIND_TABLE``: per model kind, its training noise, whether the UNet also predicts the
  variance, and whether it works on VAE latents.
- ``VARIANT_TABLE``: per scoring variant, the scoring module that computes it
  (``raydiff.scoring.METHODS``), its params class and the ``VariantsConfig`` field holding its
  parameters, the model kind it scores with, its family (variants of one family share one
  computation) and the timesteps it uses. Config parsing, the timestep check, fitting, scoring
  and the report's colours all read it; ``tests/test_variant_table.py`` walks it.

Loading, validation and the stable ids are in ``raydiff.config.loader``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

NoiseKind = Literal["gaussian", "simplex", "gmm"]
#: Dataset folder layouts (``raydiff.data.manifest.SCANNERS`` has one scanner each).
DatasetLayout = Literal["mvtec", "visa", "btad", "generic"]
DATASET_LAYOUTS: tuple[str, ...] = get_args(DatasetLayout)
Smoothing = Literal["none", "mean", "gaussian"]
ImageScore = Literal["max", "avgpool-max", "topk-mean", "mean"]
#: σ² of a ddpm reverse step (``raydiff.diffusion.p_mean_variance``).
ReverseVariance = Literal["model", "fixed-large"]


@dataclass(frozen=True)
class ModelKindSpec:
    """What a model kind is (one row of ``MODEL_KIND_TABLE``)."""

    #: Noise of the forward process it is trained with.
    noise: NoiseKind
    #: The UNet also outputs v for the learned reverse variance (improved DDPM): 2C channels.
    learned_variance: bool
    #: It diffuses VAE latents instead of pixels.
    latent: bool


MODEL_KIND_TABLE: dict[str, ModelKindSpec] = {
    "pixel": ModelKindSpec(noise="gaussian", learned_variance=True, latent=False),
    "pixel-simplex": ModelKindSpec(noise="simplex", learned_variance=False, latent=False),
    "pixel-gmm": ModelKindSpec(noise="gmm", learned_variance=False, latent=False),
    "latent": ModelKindSpec(noise="gaussian", learned_variance=False, latent=True),
}
MODEL_KINDS: tuple[str, ...] = tuple(MODEL_KIND_TABLE)
#: The model kinds as a Literal (built from the table; the loader checks values against it).
ModelKind = Literal.__getitem__(MODEL_KINDS)  # type: ignore[attr-defined]


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"range": (lo, hi)}


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetConfig:
    """Where the images are and how they are turned into tensors."""

    layout: DatasetLayout = "mvtec"
    #: Folder of the dataset; ``${VAR}`` and ``~`` are expanded, relative paths are taken
    #: relative to the config file's folder.
    root: str = "data"
    #: Value of the ``dataset`` column; defaults to ``layout``.
    name: str | None = None
    #: Categories to use; empty = every category found under ``root``.
    categories: tuple[str, ...] = ()
    image_size: int = field(default=256, metadata=_range(8, 4096))
    #: ``auto`` keeps the dataset's channel count (1 for grayscale, 3 for RGB).
    channels: Literal["auto", "gray", "rgb"] = "auto"
    #: Non-square images: ``resize`` squashes to a square, ``center-crop`` crops first.
    resize: Literal["resize", "center-crop"] = "resize"
    #: Fraction of train/good held out of training, for normalisation statistics.
    holdout_fraction: float = field(default=0.1, metadata=_range(0.0, 0.5))
    #: At least this many held-out normal images per category (when there are enough).
    holdout_min: int = field(default=4, metadata=_range(0, 1000))

    @property
    def dataset_name(self) -> str:
        return self.name or self.layout


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
    #: Padding of the UNet's (and the trained VAE's) convolutions: ``zeros`` (diffusers' default,
    #: as the papers' code) or ``reflect``. Measured on the demo: reflect does not remove the
    #: border artefact (normal images' maxima on the 1-px border: 49 % → 62 % for no-diffusion);
    #: the per-ring normalisation does (``raydiff.scoring.postprocess``).
    padding: Literal["zeros", "reflect"] = "zeros"
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
    #: σ² of the ddpm steps: ``model`` (the model's learned variance, β̃ for an ε-only model) or
    #: ``fixed-large`` (β_t: Fučka eq. 5, Kashihara). Unused by ddim.
    variance: ReverseVariance = "model"
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
    variance: ReverseVariance = "model"
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
class VariantSpec:
    """One scoring variant (one row of ``VARIANT_TABLE``)."""

    id: str
    #: Module of ``raydiff.scoring`` (a key of ``raydiff.scoring.METHODS``) with its maths.
    method: str
    #: Its parameter dataclass, and the ``VariantsConfig`` field (YAML key) holding it.
    params: type
    field: str
    #: The model kind (``MODEL_KIND_TABLE``) it scores with.
    model_kind: str
    #: Variants of one family share a single ``components`` call per batch.
    family: str
    #: The diffusion timesteps its parameters use (each must be < models.timesteps).
    timesteps: Callable[[Any], list[int]]
    #: It uses the feature extractor φ (ResNet-34): its scores depend on ``features.resnet34_weights``
    #: (the ``feature_weights`` column of the metrics says imagenet or random).
    uses_features: bool = False


def _t0(p: Any) -> list[int]:
    return [p.t0]


VARIANT_TABLE: dict[str, VariantSpec] = {
    v.id: v
    for v in (
        VariantSpec("static-gaussian", "kashihara_static", StaticConfig, "static_gaussian", "pixel", "static-gaussian", _t0),
        VariantSpec("static-simplex", "kashihara_static", StaticConfig, "static_simplex", "pixel-simplex", "static-simplex", _t0),
        VariantSpec("static-gmm", "kashihara_static", StaticConfig, "static_gmm", "pixel-gmm", "static-gmm", _t0),
        VariantSpec("no-diffusion", "kashihara_no_diffusion", NoDiffusionConfig, "no_diffusion", "pixel", "no-diffusion", _t0),
        VariantSpec("dynamic", "dynad", DynamicConfig, "dynamic", "latent", "dynamic", lambda p: [p.t_max], True),
        VariantSpec("dynamic-pixel", "dynad", DynamicConfig, "dynamic_pixel", "pixel", "dynamic-pixel",
                    lambda p: [p.t_max], True),
        VariantSpec("kl", "ran_kl", KLConfig, "kl", "pixel", "kl", lambda p: list(p.timesteps), True),
        VariantSpec("trend", "kim_trend", TrendConfig, "trend", "pixel", "trend", lambda p: list(p.levels)),
        VariantSpec("trend-intensity", "kim_trend", TrendConfig, "trend", "pixel", "trend", lambda p: list(p.levels)),
        VariantSpec("trend-uncertainty", "kim_trend", TrendConfig, "trend", "pixel", "trend", lambda p: list(p.levels)),
    )
}
VARIANT_IDS: tuple[str, ...] = tuple(VARIANT_TABLE)
#: The variant ids as a Literal (built from the table; the loader checks values against it).
VariantId = Literal.__getitem__(VARIANT_IDS)  # type: ignore[attr-defined]
#: The model kind each variant scores with.
VARIANT_MODEL_KIND: dict[str, str] = {v.id: v.model_kind for v in VARIANT_TABLE.values()}


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
        """The parameter dataclass of a variant id (its ``VARIANT_TABLE`` field)."""
        return getattr(self, VARIANT_TABLE[variant].field)

    def model(self, variant: str) -> str:
        """The model a variant scores with."""
        return VARIANT_MODEL_KIND[variant]


@dataclass(frozen=True)
class FeaturesConfig:
    """The ResNet-34 feature extractor φ (DynAD's KNN prior and feature maps, RAN's feature term)."""

    #: A local torchvision/timm ResNet-34 state dict (.pth/.safetensors); none = random init.
    resnet34_weights: str | None = None
    #: Epochs of DynAD domain adaptation of φ on normal images (0 = off).
    domain_adaptation_epochs: int = field(default=0, metadata=_range(0, 100))
    domain_adaptation_lr: float = field(default=1e-4, metadata=_range(0.0, 1.0))


# --------------------------------------------------------------------------------------------
# Engine settings: how the maths runs (not hashed into model or run ids)
# --------------------------------------------------------------------------------------------

Precision = Literal["auto", "bf16", "fp32"]


@dataclass(frozen=True)
class ScoringConfig:
    """How fit and score run the UNet (raydiff.scoring.context). Not part of ``run_id``: the
    maths is the same, only float rounding differs (bf16 vs fp32 maps: tested to agree)."""

    #: UNet calls under bf16 autocast, or fp32. ``auto``: bf16 on CUDA, fp32 on the CPU (CPU
    #: bf16 autocast is slower than fp32). Trend's input gradient and φ always run in fp32.
    precision: Precision = "auto"
    #: UNet weights and inputs in channels_last memory format (faster convolutions on GPUs).
    channels_last: bool = False
    #: ``torch.compile`` each UNet once per actor (static shapes; the first batch pays for it).
    compile: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """How the training loop runs (raydiff.train.loop); not part of ``model_id``."""

    #: Fused AdamW kernel on CUDA (the CPU falls back to the foreach implementation).
    fused_adamw: bool = True
    #: EMA update of all parameters in one batched call (``torch._foreach_lerp_``).
    foreach_ema: bool = True
    #: Loss values are fetched from the device (one host sync) every this many steps and at
    #: each checkpoint; a non-finite loss is detected then (the last good checkpoint is kept).
    log_every: int = field(default=50, metadata=_range(1, 1_000_000))
    #: UNet weights and inputs in channels_last memory format.
    channels_last: bool = False


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
    scoring: ScoringConfig = ScoringConfig()
    train: TrainConfig = TrainConfig()
    seed: int = 0
    #: The file this config was loaded from (not hashed; for messages and relative paths).
    source: str | None = field(default=None, metadata={"internal": True})

    def model_kinds_needed(self) -> tuple[str, ...]:
        """Model kinds the enabled variants need, in MODEL_KINDS order."""
        needed = {VARIANT_MODEL_KIND[v] for v in self.variants.enabled}
        return tuple(k for k in MODEL_KINDS if k in needed)


def _config_dir() -> Path:
    """The shipped configs: the checkout's ``configs/``, else where a non-editable install put
    them (``<prefix>/share/raydiff/configs``, see pyproject.toml's data-files)."""
    import site
    import sys

    checkout = Path(__file__).resolve().parents[2] / "configs"
    candidates = [checkout, Path(sys.prefix) / "share" / "raydiff" / "configs",
                  Path(site.getuserbase()) / "share" / "raydiff" / "configs"]
    return next((c for c in candidates if (c / "textures.yaml").is_file()), checkout)


#: The folder of the configs that ship with raydiff (``configs/`` of the repository).
CONFIG_DIR = _config_dir()
#: The embedded default benchmark's config (what ``make demo`` runs).
DEFAULT_CONFIG = CONFIG_DIR / "textures.yaml"
#: Environment variable that moves the default config's texture data (else OUTPUT_ROOT/data/textures).
TEXTURES_ENV = "RAYDIFF_TEXTURES"
