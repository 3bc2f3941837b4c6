"""The config schema: frozen dataclasses per section, and the tables every other module
derives its facts from.

A config names its models and its variants:

- ``models``: named ``ModelSpec``s (arch, noise, variance, schedule, training budget, ...), one
  model trained per (category, name). ``BUILTIN_MODELS`` are the four names a config may use
  without defining them (``pixel``, ``pixel-simplex``, ``pixel-gmm``, ``latent``).
- ``variants``: named ``VariantInstance``s: a method of ``METHOD_TABLE``, the model it scores
  with, its parameters and per-category (or per-group) overrides. ``BUILTIN_VARIANTS`` are the
  ten names of the earlier fixed variant list.
- ``METHOD_TABLE``: per scoring method, the module that computes it (``raydiff.scoring.METHODS``),
  its params class, the timesteps it uses, the architectures it scores, whether it uses φ, and
  which parameters only its ``combine`` reads (instances that differ only there, or in
  post-processing, share one computation). Config parsing, the timestep check, fitting,
  scoring, ``raydiff plan`` and the report read it; ``tests/test_variant_table.py`` walks it.

Loading (both the named form and the earlier ``models.kinds`` form), validation and the stable
ids are in ``raydiff.config.loader``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

NoiseKind = Literal["gaussian", "simplex", "gmm"]
#: Dataset folder layouts (``raydiff.data.manifest.SCANNERS`` has one scanner each).
DatasetLayout = Literal["mvtec", "visa", "btad", "generic", "mvtec-ad2"]
DATASET_LAYOUTS: tuple[str, ...] = get_args(DatasetLayout)
Smoothing = Literal["none", "mean", "gaussian"]
ImageScore = Literal["max", "avgpool-max", "topk-mean", "mean"]
#: σ² of a ddpm reverse step (``raydiff.diffusion.p_mean_variance``).
ReverseVariance = Literal["model", "fixed-large"]


Arch = Literal["pixel", "latent"]
#: What the UNet of a model predicts about the reverse variance: ``learned`` (it also outputs v,
#: improved DDPM: 2C channels), or ε only with σ² fixed to β̃_t (``fixed-small``) or β_t
#: (``fixed-large``: Fučka eq. 5, Kashihara) when sampling.
ModelVariance = Literal["learned", "fixed-small", "fixed-large"]
#: The scoring methods (``METHOD_TABLE``; a variant instance names one).
Method = Literal["static", "no-diffusion", "dynamic", "kl", "trend"]
#: φ's architectures (``features.arch``; ``raydiff.features.ARCHS`` holds their blocks and widths).
PhiArch = Literal["resnet34", "wide_resnet50_2", "wide_resnet101_2"]


def _range(lo: float | None = None, hi: float | None = None, **more: Any) -> dict[str, Any]:
    return {"range": (lo, hi), **more}


# Field metadata read by the loader and the id walker (``raydiff.config.identity``):
#: ``{"id": "omit"}``: never part of a model or run id (it changes no weight and no score).
ID_OMIT = {"id": "omit"}
#: ``{"id": "unless-default"}``: hashed only when not the default (a field added after configs
#: were hashed: those configs keep their ids). With ``"id_default": V`` the value left unhashed is
#: V instead of the default: a default that changed later (configs that relied on the old
#: default V keep their ids only where they spell V; every other run gets a new folder).
ID_UNLESS_DEFAULT = {"id": "unless-default"}
#: ``{"id_name": OLD}``: hashed under its earlier name (a renamed field keeps the ids it had).


class Invalid(ValueError):
    """A cross-field rule of a section broken (raised by its ``check``): ``keys`` are the dotted
    keys involved (the loader blames the first one a ``--set`` or a variable gave, else the file)."""

    def __init__(self, keys: tuple[str, ...], message: str, fix: str) -> None:
        super().__init__(message)
        self.keys, self.message, self.fix = keys, message, fix


#: What a dataset or category name may look like: it names folders under the output root.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+ -]*$")


def is_plain_name(value: str) -> bool:
    """A plain folder name: no ``/``, ``..``, leading dot or surrounding blanks."""
    return bool(_PLAIN_NAME.fullmatch(value)) and value.strip() == value and ".." not in value


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetConfig:
    """Where the images are and how they are turned into tensors."""

    #: (Named ``kind`` when ids were first computed: hashed under that name.)
    layout: DatasetLayout = field(default="mvtec", metadata={"id_name": "kind"})
    #: Folder of the dataset; ``${VAR}`` and ``~`` are expanded, relative paths are taken
    #: relative to the config file's folder. Not in ids: a job submitted with --working-dir
    #: unpacks to a new path each time, and the same data elsewhere must not retrain.
    root: str = field(default="data", metadata=ID_OMIT)
    #: Value of the ``dataset`` column; defaults to ``layout``.
    name: str | None = None
    #: Categories to use; empty = every category found under ``root``.
    categories: tuple[str, ...] = field(default=(), metadata=ID_OMIT)
    image_size: int = field(default=256, metadata=_range(8, 4096))
    #: ``auto`` keeps the dataset's channel count (1 for grayscale, 3 for RGB).
    channels: Literal["auto", "gray", "rgb"] = "auto"
    #: Non-square images: ``resize`` squashes to a square, ``center-crop`` crops first.
    resize: Literal["resize", "center-crop"] = field(default="resize", metadata={"id_name": "fit"})
    #: Fraction of train/good held out of training, for normalisation statistics. 0: nothing is
    #: held out (``holdout_min`` does not apply): every model trains on all of train/good, as the
    #: papers do, DynAD's KNN index holds all of it, and the statistics are measured on the
    #: training images themselves (optimistic: docs/methods.md, Normalisation). A layout with its
    #: own held-out set (``mvtec-ad2``: validation/good) holds out that set instead, whatever the
    #: fraction > 0 (``raydiff.data.splits.assign_holdout``).
    holdout_fraction: float = field(default=0.1, metadata=_range(0.0, 0.5))
    #: At least this many held-out normal images per category (when there are enough and
    #: ``holdout_fraction`` > 0).
    holdout_min: int = field(default=4, metadata=_range(0, 1000))

    @property
    def dataset_name(self) -> str:
        return self.name or self.layout

    def check(self, prefix: str) -> None:
        names = [(f"{prefix}.name", self.name)] if self.name is not None else []
        for key, value in [*names, *((f"{prefix}.categories", c) for c in self.categories)]:
            if not is_plain_name(value):
                raise Invalid((key,), PLAIN_NAME_PROBLEM.format(key=key, value=value), PLAIN_NAME_FIX)
        twice = next((c for i, c in enumerate(self.categories) if c in self.categories[:i]), None)
        if twice is not None:
            raise Invalid((f"{prefix}.categories",), f"'{prefix}.categories' lists '{twice}' twice (every row "
                          "would be scored twice).", "list each category once.")


PLAIN_NAME_PROBLEM = ("'{key}' = {value!r} is not a plain name: dataset and category names become folder names "
                      "under the output root, so they may not contain '/', '\\', '..' or start with '.'.")
PLAIN_NAME_FIX = ("name the category folder itself (e.g. 'bottle'), not a path; set dataset.root to the folder "
                  "that holds it.")


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

    def check(self, prefix: str) -> None:
        for lo, hi in (("min_components", "max_components"), ("min_sigma", "max_sigma")):
            if getattr(self, lo) > getattr(self, hi):
                raise Invalid((f"{prefix}.{lo}", f"{prefix}.{hi}"), f"'{prefix}.{lo}' > '{hi}'.", "swap them.")


@dataclass(frozen=True)
class LatentConfig:
    """The ``latent`` model kind: an AutoencoderKL plus a UNet on its latents."""

    #: A local diffusers AutoencoderKL folder (e.g. a Stable Diffusion VAE); none = train one.
    #: Hashed into model ids by its content (``vae_sha256``), not its path.
    vae_path: str | None = None
    #: The folder's sha256 (``raydiff.io.folder_sha256``: every file's, by relative path), read
    #: when the config is loaded and written into the run's config.yaml (which then loads without
    #: the folder). Hashed into model ids instead of the path: moving the folder keeps the models,
    #: editing it trains new ones. You need not write it; given, a folder that does not match is
    #: refused.
    vae_sha256: str | None = field(default=None, metadata=ID_UNLESS_DEFAULT)
    #: The digest the folder is known to have (as ``raydiff config`` shows ``vae_sha256`` for the
    #: published VAE): a folder that does not match is an error, and only then do the metrics'
    #: ``vae`` column and meta.json call it ``pretrained-verified``. Not hashed (it equals ``vae_sha256``).
    vae_expected_sha256: str | None = field(default=None, metadata=ID_UNLESS_DEFAULT)
    vae_train_steps: int = field(default=2000, metadata=_range(0, 10_000_000))
    vae_lr: float = field(default=1e-4, metadata=_range(0.0, 1.0))
    vae_kl_weight: float = field(default=1e-6, metadata=_range(0.0, 1.0))
    latent_channels: int = field(default=4, metadata=_range(1, 64))
    #: Number of 2x downsamplings of the VAE we train (SD's VAE: 3, i.e. 8x).
    vae_downsample: int = field(default=2, metadata=_range(0, 5))
    #: Latent scale factor; none = 1/std of the training latents (SD's VAE uses 0.18215).
    scale: float | None = None

    def check(self, prefix: str) -> None:
        _check_digests(self, prefix, "vae_path", ("vae_sha256", "vae_expected_sha256"))


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_digests(obj: Any, prefix: str, path_key: str, keys: tuple[str, ...]) -> None:
    """Each of ``keys`` a sha256 digest; given only with the file ``path_key`` that it describes."""
    for key in keys:
        value = getattr(obj, key)
        if value is None:
            continue
        if not _SHA256.fullmatch(value):
            raise Invalid((f"{prefix}.{key}",), f"'{prefix}.{key}' = {value!r} is not a sha256 digest "
                          "(64 lower-case hex digits).", "give `sha256sum FILE`'s digest (a folder's: what "
                          "`raydiff config` shows once it is set), or leave it out.")
        if getattr(obj, path_key) is None and key != keys[-1]:
            raise Invalid((f"{prefix}.{key}", f"{prefix}.{path_key}"), f"'{prefix}.{key}' is set but "
                          f"'{prefix}.{path_key}' is not: it is the digest of that file.",
                          f"set {prefix}.{path_key}, or remove {prefix}.{key}.")


@dataclass(frozen=True)
class InitConfig:
    """A pixel model's initial weights: a pretrained UNet checkpoint instead of a random init
    (RAN fine-tunes OpenAI's 256x256 class-conditional guided-diffusion model; docs/methods.md, kl).

    Loaded strictly into the model's preset (``raydiff.models.guided``: every tensor of the file
    fills one parameter of the UNet and vice versa, shapes equal), except a class-conditional
    file's label embedding with ``class_embedding: reset``.
    """

    #: The file: safetensors, or a weights-only torch state dict (.pt/.pth/.bin). ``${VAR}`` and
    #: ``~`` are expanded, a relative path is taken from the config's folder; null (or an unset
    #: ``${VAR:-}``) = train from scratch. Not hashed: its ``sha256`` is.
    checkpoint: str | None = field(default=None, metadata=ID_OMIT)
    #: The file's sha256 (64 hex digits). Left out, it is read from the file when the config is
    #: loaded (and stored with the run's config, which then loads without the file); given,
    #: training refuses a file that does not match it.
    sha256: str | None = None
    #: The file's key layout: guided-diffusion's ``UNetModel`` (openai/guided-diffusion unet.py).
    layout: Literal["guided-diffusion"] = "guided-diffusion"
    #: A class-conditional file's label embedding: ``reset`` drops it and trains a fresh one of
    #: ``classes`` rows, N(0, 1) as torch initialises it (RAN: train_util.py pops
    #: ``label_emb.weight`` and loads the rest; script_util.py NUM_CLASSES = 15); ``keep`` loads it.
    class_embedding: Literal["reset", "keep"] = "reset"
    classes: int = field(default=15, metadata=_range(1, 100_000))
    #: The label every training and scoring pass of a class-conditional model conditions on.
    class_label: int = field(default=0, metadata=_range(0, 100_000))
    #: What the paper initialises from, in words: with ``checkpoint`` unset, ``raydiff plan`` and
    #: the model's meta.json say it trains from scratch, which is not this. Not hashed.
    expected: str | None = field(default=None, metadata=ID_OMIT)

    def check(self, prefix: str) -> None:
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise Invalid((f"{prefix}.sha256",), f"'{prefix}.sha256' = {self.sha256!r} is not a sha256 digest "
                          "(64 lower-case hex digits).", "give `sha256sum FILE`'s digest, or leave it out "
                          "(it is then read from the file).")
        if self.class_embedding == "reset" and self.class_label >= self.classes:
            raise Invalid((f"{prefix}.class_label", f"{prefix}.classes"), f"'{prefix}.class_label' = "
                          f"{self.class_label} is not a row of a {self.classes}-row label embedding.",
                          "use a label in 0 .. classes - 1.")

    def describe(self) -> str:
        """One line: where the weights start from (``raydiff plan``, meta.json)."""
        if self.checkpoint is None:
            return ("from scratch" + (f" (not the paper's: it starts from {self.expected}; set init.checkpoint)"
                                      if self.expected else ""))
        sha = f", sha256 {self.sha256[:12]}" if self.sha256 else ""
        return f"{self.layout} checkpoint {self.checkpoint}{sha}, class embedding {self.class_embedding}, label {self.class_label}"


@dataclass(frozen=True)
class ModelSpec:
    """One named model: what it is and how it is trained (one per category).

    In YAML, ``models:`` holds settings shared by every model (any key of this class) and the
    named models (``NAME: {arch, noise, variance, ...}``), each overriding the shared settings;
    ``raydiff.config.loader`` builds one ModelSpec per name. ``BUILTIN_MODELS`` gives the four
    names a config may use without saying what they are.
    """

    #: ``pixel``: a UNet on the images; ``latent``: an AutoencoderKL plus a UNet on its latents.
    arch: Arch = "pixel"
    #: Noise of the forward process it is trained with, and sampled with when scoring.
    noise: NoiseKind = "gaussian"
    #: ``learned`` changes the network (2C output channels) and its loss; ``fixed-small`` and
    #: ``fixed-large`` train the same ε-only network and differ only when sampling.
    variance: ModelVariance = "fixed-small"
    #: ``raydiff.models.presets``; ``guided``: OpenAI guided-diffusion's 256x256 UNet (pixel models).
    preset: Literal["tiny", "ddad", "anoddpm", "dynad", "guided"] = "ddad"
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
    #: Training length in epochs instead of steps (the papers state epochs): per category,
    #: ceil(train_epochs · n / batch_size) steps for its n training images (``steps_for``). A
    #: model gives one of train_steps and train_epochs (its own setting replaces a shared one of
    #: the other kind). Hashed only when set, and then train_steps (unused) is not.
    train_epochs: int | None = field(default=None, metadata={**_range(1, 10_000_000), **ID_UNLESS_DEFAULT})
    batch_size: int = field(default=16, metadata=_range(1, 65536))
    lr: float = field(default=1e-4, metadata=_range(0.0, 1.0))
    #: ``constant``: ``lr`` at every step; ``linear``: lr·(1 - k/N) at step k of the category's N
    #: steps, down to 0 (guided-diffusion's ``--lr_anneal_steps``, RAN's train.sh).
    lr_schedule: Literal["constant", "linear"] = field(default="constant", metadata=ID_UNLESS_DEFAULT)
    weight_decay: float = field(default=0.0, metadata=_range(0.0, 1.0))
    ema_decay: float = field(default=0.999, metadata=_range(0.0, 1.0))
    grad_clip: float = field(default=1.0, metadata=_range(0.0, None))
    #: Weight of L_vlb in the improved-DDPM hybrid loss (``variance: learned``).
    vlb_weight: float = field(default=0.001, metadata=_range(0.0, 1.0))
    #: The ε term of the loss: ``l2`` (DDPM L_simple, Fučka eq. 4) or ``l1`` (Kashihara eq. 7).
    loss: Literal["l2", "l1"] = "l2"
    #: Save a checkpoint (and report to Ray) every this many steps.
    checkpoint_every: int = field(default=500, metadata=_range(1, 100_000_000, **ID_OMIT))
    augment: AugmentConfig = AugmentConfig()
    #: Per-category augmentation, e.g. ``{transistor: {hflip: false, vflip: false, rotate90: false}}``.
    augment_per_category: Mapping[str, AugmentConfig] = field(default_factory=dict)
    simplex: SimplexConfig = SimplexConfig()
    gmm: GMMConfig = GMMConfig()
    #: The VAE of a ``latent`` model (written ``latent:`` in configs of the ``models.kinds`` form).
    vae: LatentConfig = LatentConfig()
    #: Initial weights of a pixel model (default: random, from scratch).
    init: InitConfig = field(default=InitConfig(), metadata=ID_UNLESS_DEFAULT)

    def augment_for(self, category: str) -> AugmentConfig:
        return self.augment_per_category.get(category, self.augment)

    def steps_for(self, n_train: int) -> int:
        """Training steps on a category with ``n_train`` training images: ``train_steps``, or
        ceil(train_epochs · n_train / batch_size) (at least 1) when the budget is in epochs."""
        if self.train_epochs is None:
            return self.train_steps
        return max(1, -(-self.train_epochs * n_train // self.batch_size))

    def check(self, prefix: str) -> None:
        if self.beta_start >= self.beta_end:
            raise Invalid((f"{prefix}.beta_start", f"{prefix}.beta_end"),
                          f"'{prefix}.beta_start' must be < '{prefix}.beta_end'.", "swap them.")
        if self.is_latent and (self.preset == "guided" or self.init.checkpoint is not None):
            key = f"{prefix}.preset" if self.preset == "guided" else f"{prefix}.init.checkpoint"
            raise Invalid((key, f"{prefix}.arch"), f"'{key}' is a pixel UNet's (guided-diffusion's), but "
                          f"'{prefix}' is a latent model.", "use it with arch: pixel, or another preset / no init.")

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of training step ``step`` (0-based) of ``total_steps``."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * max(0.0, 1.0 - step / max(1, total_steps))

    @property
    def learned_variance(self) -> bool:
        """The UNet also outputs v (2C channels)."""
        return self.variance == "learned"

    @property
    def is_latent(self) -> bool:
        """It diffuses VAE latents instead of pixels (``latent`` holds the VAE's settings)."""
        return self.arch == "latent"


#: Model names a config may use without defining them (the four models every earlier config
#: trained, as ``models.kinds``): name → what sets it apart from the shared settings.
BUILTIN_MODELS: dict[str, dict[str, str]] = {
    "pixel": {"arch": "pixel", "noise": "gaussian", "variance": "learned"},
    "pixel-simplex": {"arch": "pixel", "noise": "simplex", "variance": "fixed-small"},
    "pixel-gmm": {"arch": "pixel", "noise": "gmm", "variance": "fixed-small"},
    "latent": {"arch": "latent", "noise": "gaussian", "variance": "fixed-small"},
}


@dataclass(frozen=True)
class ModelsConfig:
    """The named models of a config, in config order (built by the loader)."""

    specs: Mapping[str, ModelSpec] = field(default_factory=lambda: {
        name: ModelSpec(**what) for name, what in BUILTIN_MODELS.items()})  # type: ignore[arg-type]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def spec(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise KeyError(f"unknown model {name!r}; this config's models: {', '.join(self.specs)}") from None


# --------------------------------------------------------------------------------------------
# Scoring variants
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostProcessConfig:
    """What every method does to its combined map (``raydiff.scoring.postprocess``): the
    parameters each params class below inherits (a class may change ``smoothing``'s and
    ``image_score``'s defaults). Serialised after the method's own parameters."""

    smoothing: Smoothing = "none"
    smoothing_size: int = field(default=11, metadata=_range(1, 255))
    sigma: float = field(default=4.0, metadata=_range(0.0, 100.0))
    image_score: ImageScore = "max"
    #: The avgpool-max kernel; 0 = round(image_size / 25) (Kashihara).
    pool_size: int = field(default=0, metadata=_range(0, 255))
    top_k: int = field(default=64, metadata=_range(1, 1_000_000))
    #: ``true``: component statistics per ring of distance to the image edge and a final per-ring
    #: rescaling (issue 17's border fix; docs/methods.md, Normalisation). ``false``: one global
    #: mean/std per component and no final rescaling, as the papers (their code has no
    #: position-dependent statistics). Hashed into run ids only when off.
    border_rings: bool = field(default=True, metadata=ID_UNLESS_DEFAULT)


def _check_steps(p: Any, prefix: str) -> None:
    if p.steps > p.t0:
        raise Invalid((f"{prefix}.steps", f"{prefix}.t0"), f"'{prefix}.steps' = {p.steps} exceeds t0 = {p.t0}.",
                      "use steps <= t0.")


@dataclass(frozen=True)
class StaticConfig(PostProcessConfig):
    """Kashihara "diffusion" / Fučka: noise to t0 with the model's noise kind, reverse to 0."""

    t0: int = field(default=200, metadata=_range(1, 100_000))
    #: Reverse steps from t0 to 0 (DDPM ancestral uses t0 steps when ``steps == t0``).
    steps: int = field(default=200, metadata=_range(1, 100_000))
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    #: σ² of the ddpm steps: ``model`` (the model's learned variance, β̃ for an ε-only model) or
    #: ``fixed-large`` (β_t: Fučka eq. 5, Kashihara). Unused by ddim.
    variance: ReverseVariance = "model"
    #: Clip x̂0 to [-1, 1] in every reverse step (guided-diffusion's ``clip_denoised``); Kashihara
    #: eq. 5 does not clip (``false``). Hashed into run ids only when off.
    clip_x0: bool = field(default=True, metadata=ID_UNLESS_DEFAULT)
    smoothing: Smoothing = "mean"

    def check(self, prefix: str) -> None:
        _check_steps(self, prefix)


@dataclass(frozen=True)
class NoDiffusionConfig(PostProcessConfig):
    """Kashihara no-diffusion: the input itself is taken as x_t0 and reversed to 0."""

    t0: int = field(default=50, metadata=_range(1, 100_000))
    steps: int = field(default=5, metadata=_range(1, 100_000))
    sampler: Literal["ddpm", "ddim"] = "ddim"
    variance: ReverseVariance = "model"
    #: As ``StaticConfig.clip_x0`` (Kashihara eq. 5: off). Hashed into run ids only when off.
    clip_x0: bool = field(default=True, metadata=ID_UNLESS_DEFAULT)
    image_score: ImageScore = "avgpool-max"

    def check(self, prefix: str) -> None:
        _check_steps(self, prefix)


@dataclass(frozen=True)
class DynamicConfig(PostProcessConfig):
    """DynAD: KNN-prior noise level, noiseless start, guided DDIM (DDAD), pixel+feature map."""

    t_max: int = field(default=80, metadata=_range(1, 100_000))
    #: 0: T̂ per image from the KNN prior (DynAD's dynamic conditioning). N > 0: T̂ = N for every
    #: image (DynAD Table 5's static levels 20/40/60/80).
    fixed_level: int = field(default=0, metadata=_range(0, 100_000))
    #: ``noiseless``: z_T̂ = √ᾱ z0 (DynAD); ``noised``: plus √(1-ᾱ) ε, the usual start (DynAD Table 6).
    start: Literal["noiseless", "noised"] = "noiseless"
    #: Use the domain-adapted φ (DynAD §4.3; for its KNN prior and f_map) when
    #: ``features.domain_adaptation_epochs`` > 0; false: the unadapted φ and a KNN prior over it
    #: (DynAD Table 6's "DA" column). Hashed into run ids only when off.
    domain_adaptation: bool = field(default=True, metadata=ID_UNLESS_DEFAULT)
    ddim_steps: int = field(default=10, metadata=_range(1, 10_000))
    #: ``paper``: the UNet is first evaluated at T̂ (Alg. 1); ``reference``: at T̂ - ⌊T̂/S⌋, down to
    #: 0, as the authors' code walks it (``raydiff.scoring.dynad.ddim_timesteps``). Hashed into
    #: run ids only when not the default (configs written before it keep their ids).
    ddim_grid: Literal["paper", "reference"] = field(default="paper", metadata=ID_UNLESS_DEFAULT)
    guidance_w: float = field(default=4.0, metadata=_range(0.0, 100.0))
    #: map = lam * l_map + (1 - lam) * f_map.
    lam: float = field(default=0.85, metadata=_range(0.0, 1.0))
    knn_k: int = field(default=20, metadata=_range(1, 10_000))
    bins: int = field(default=10, metadata=_range(1, 1000))
    smoothing: Smoothing = "gaussian"


@dataclass(frozen=True)
class KLConfig(PostProcessConfig):
    """RAN: per-pixel KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) at several t, plus a feature term."""

    timesteps: tuple[int, ...] = (20, 200, 400)
    #: 0: single steps t of the model's own schedule. N > 0: the chain respaced to N steps
    #: (improved-diffusion ``space_timesteps``; RAN's reference scores on 250), and
    #: ``timesteps`` are steps of that chain (RAN: 5, 50, 100 ≈ 20, 201, 401 of 1000).
    chain_steps: int = field(default=0, metadata=_range(0, 100_000))
    #: Clip x̂0 to [-1, 1] in p_θ's mean (RAN's reference: ``clip_denoised=True``).
    clip_x0: bool = False
    #: One noise draw per t (RAN's reference) instead of one draw shared by every t (and by
    #: the other variants that noise the same model at the same t).
    fresh_noise: bool = False
    #: ``held-out``: each KL map and the feature map standardised with held-out normal statistics;
    #: ``per-image``: the reference's (each t's KL z-scored over the image's channels and pixels,
    #: the feature map raw; ``raydiff.scoring.ran_kl``). Hashed into run ids only when set.
    normalise: Literal["held-out", "per-image"] = field(default="held-out", metadata=ID_UNLESS_DEFAULT)
    #: map = (1 - feature_weight) * kl_map + feature_weight * feature_map (RAN: 1:1).
    feature_weight: float = field(default=0.5, metadata=_range(0.0, 1.0))
    image_score: ImageScore = "topk-mean"

    def check(self, prefix: str) -> None:
        if not self.timesteps or min(self.timesteps) < 1:
            raise Invalid((f"{prefix}.timesteps",), f"'{prefix}.timesteps' must be non-empty and >= 1.",
                          "e.g. [20, 200, 400].")


@dataclass(frozen=True)
class TrendConfig(PostProcessConfig):
    """Kim et al.: DFT trend of reconstruction error and of model uncertainty over noise levels."""

    levels: tuple[int, ...] = (25, 50, 75, 100, 150, 200, 300, 400)
    #: Which trend the map adds up: ``both`` (Kim et al.), or one of them (their ablations).
    #: Instances that differ only here share one computation.
    output: Literal["both", "intensity", "uncertainty"] = "both"
    reconstruction: Literal["one-step", "ddim"] = "one-step"
    ddim_steps: int = field(default=5, metadata=_range(1, 10_000))
    #: Uncertainty map: 0 = |Jᵀr| for one fixed Gaussian probe r (METHODS' reading of Kim et al.,
    #: the reproducing instances spell it); K > 0 = Hutchinson's estimate of diag(J) from K
    #: Rademacher probes (K gradient passes per level; ``raydiff.scoring.kim_trend``). Default 1:
    #: the same cost as 0 and better on MPDD, MagneticTile's pixels and the demo (docs/results.md,
    #: "Trend's uncertainty"). Hashed into run ids unless 0 (the default before 2026-12-06), so a
    #: run scored with the one-probe map is never mistaken for one scored with the diagonal.
    probes: int = field(default=1, metadata={**_range(0, 256), **ID_UNLESS_DEFAULT, "id_default": 0})
    smoothing: Smoothing = "gaussian"

    def check(self, prefix: str) -> None:
        if len(self.levels) < 3 or list(self.levels) != sorted(set(self.levels)):
            raise Invalid((f"{prefix}.levels",), f"'{prefix}.levels' must be at least 3 strictly increasing "
                          f"timesteps, got {list(self.levels)}.", "list levels such as [25, 50, 100, 200, 400].")


#: Parameters that only post-process a variant's combined map (``raydiff.scoring.postprocess``).
POSTPROCESS_PARAMS: tuple[str, ...] = tuple(f.name for f in fields(PostProcessConfig))


@dataclass(frozen=True)
class MethodSpec:
    """One scoring method (one row of ``METHOD_TABLE``)."""

    name: str
    #: Module of ``raydiff.scoring`` (a key of ``raydiff.scoring.METHODS``) with its maths.
    module: str
    #: Its parameter dataclass.
    params: type
    #: The diffusion timesteps its parameters use (each must be < the model's timesteps).
    timesteps: Callable[[Any], list[int]]
    #: Model architectures it can score with.
    archs: tuple[str, ...] = ("pixel",)
    #: It uses the feature extractor φ: its scores depend on ``features.arch`` and ``features.weights``
    #: (the ``feature_weights`` column of the metrics says which: ``raydiff.report_tables.weights_label``).
    uses_features: bool = False
    #: Parameters read only by ``combine`` (besides ``POSTPROCESS_PARAMS``): instances of one
    #: model that differ only in these share one ``components`` call per batch (one family).
    combine_only: tuple[str, ...] = ()


def _t0(p: Any) -> list[int]:
    return [p.t0]


def _kl_timesteps(p: Any) -> list[int]:
    # On a respaced chain the timesteps are steps of the chain (checked against chain_steps).
    return [] if p.chain_steps else list(p.timesteps)


METHOD_TABLE: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("static", "kashihara_static", StaticConfig, _t0),
        MethodSpec("no-diffusion", "kashihara_no_diffusion", NoDiffusionConfig, _t0),
        MethodSpec("dynamic", "dynad", DynamicConfig, lambda p: [max(p.t_max, p.fixed_level)], ("pixel", "latent"),
                   True, ("lam",)),
        MethodSpec("kl", "ran_kl", KLConfig, _kl_timesteps, uses_features=True, combine_only=("feature_weight",)),
        MethodSpec("trend", "kim_trend", TrendConfig, lambda p: list(p.levels), combine_only=("output",)),
    )
}
METHODS_LIST: tuple[str, ...] = tuple(METHOD_TABLE)


@dataclass(frozen=True)
class BuiltinVariant:
    """A variant name a config may use without saying what it is (the ten variants of every
    earlier config): its method, model, and parameters that differ from the method's defaults."""

    method: str
    model: str
    params: Mapping[str, Any] = field(default_factory=dict)
    #: The field of ``LegacyVariants`` holding its parameters in the old config form.
    legacy_field: str = ""


BUILTIN_VARIANTS: dict[str, BuiltinVariant] = {
    "static-gaussian": BuiltinVariant("static", "pixel", {}, "static_gaussian"),
    "static-simplex": BuiltinVariant("static", "pixel-simplex", {}, "static_simplex"),
    "static-gmm": BuiltinVariant("static", "pixel-gmm", {"smoothing_size": 5}, "static_gmm"),
    "no-diffusion": BuiltinVariant("no-diffusion", "pixel", {}, "no_diffusion"),
    "dynamic": BuiltinVariant("dynamic", "latent", {}, "dynamic"),
    "dynamic-pixel": BuiltinVariant("dynamic", "pixel", {}, "dynamic_pixel"),
    "kl": BuiltinVariant("kl", "pixel", {}, "kl"),
    "trend": BuiltinVariant("trend", "pixel", {"output": "both"}, "trend"),
    "trend-intensity": BuiltinVariant("trend", "pixel", {"output": "intensity"}, "trend"),
    "trend-uncertainty": BuiltinVariant("trend", "pixel", {"output": "uncertainty"}, "trend"),
}


@dataclass(frozen=True)
class LegacyVariants:
    """The old form of the ``variants`` section (one fixed key per built-in variant, ``enabled``
    listing which to score); the loader turns it into variant instances."""

    enabled: tuple[str, ...] = tuple(BUILTIN_VARIANTS)
    static_gaussian: StaticConfig = StaticConfig()
    static_simplex: StaticConfig = StaticConfig()
    static_gmm: StaticConfig = StaticConfig(smoothing_size=5)
    no_diffusion: NoDiffusionConfig = NoDiffusionConfig()
    dynamic: DynamicConfig = DynamicConfig()
    dynamic_pixel: DynamicConfig = DynamicConfig()
    kl: KLConfig = KLConfig()
    #: Shared by ``trend``, ``trend-intensity`` and ``trend-uncertainty`` (one pass computes all three).
    trend: TrendConfig = TrendConfig()


@dataclass(frozen=True)
class VariantInstance:
    """One named scoring variant: a method, the model it scores with, its parameters, and its
    per-category overrides (resolved: category → the whole parameter dataclass)."""

    method: str
    model: str
    params: Any
    per_category: Mapping[str, Any] = field(default_factory=dict)
    #: The published result (a key of ``raydiff.config.published.PUBLISHED``) this instance
    #: reproduces with the paper's own settings; the report compares only such pairs.
    reproduces: str | None = None

    def params_for(self, category: str | None) -> Any:
        if category is None:
            return self.params
        return self.per_category.get(category, self.params)


def _check_against_model(name: str, inst: VariantInstance, spec: ModelSpec) -> None:
    """Every timestep a variant uses (with each category's overrides) is one its model has."""
    keys = (*(f"variants.{name}.{f.name}" for f in fields(inst.params)), f"models.{inst.model}.timesteps",
            f"variants.{name}")
    for category, params in [(None, inst.params), *inst.per_category.items()]:
        on = f" (for {category})" if category else ""
        levels = METHOD_TABLE[inst.method].timesteps(params)
        if any(t >= spec.timesteps for t in levels):
            raise Invalid(keys, f"variant '{name}' uses timestep {max(levels)}{on} >= the timesteps of its model "
                          f"'{inst.model}' ({spec.timesteps}).", f"keep every timestep below {spec.timesteps}.")
        if isinstance(params, KLConfig) and params.chain_steps:
            if params.chain_steps > spec.timesteps:
                raise Invalid(keys, f"variant '{name}': chain_steps = {params.chain_steps}{on} exceeds its model's "
                              f"{spec.timesteps} timesteps.", f"use chain_steps <= {spec.timesteps}.")
            if max(params.timesteps) >= params.chain_steps:
                raise Invalid(keys, f"variant '{name}': timesteps {list(params.timesteps)}{on} are steps of the "
                              f"{params.chain_steps}-step chain and must be below {params.chain_steps}.",
                              "lower them (RAN: [5, 50, 100] on a 250-step chain).")


def _builtin_instances() -> dict[str, VariantInstance]:
    return {
        name: VariantInstance(b.method, b.model, METHOD_TABLE[b.method].params(**b.params))
        for name, b in BUILTIN_VARIANTS.items()
    }


@dataclass(frozen=True)
class VariantsConfig:
    """The config's variant instances (name → VariantInstance, config order) and which of them
    to score (``enabled``). The ``variant`` column of every table is the instance name."""

    instances: Mapping[str, VariantInstance] = field(default_factory=_builtin_instances)
    enabled: tuple[str, ...] = tuple(BUILTIN_VARIANTS)

    def instance(self, name: str) -> VariantInstance:
        try:
            return self.instances[name]
        except KeyError:
            raise KeyError(f"unknown variant {name!r}; this config's variants: {', '.join(self.instances)}") from None

    def params(self, name: str, category: str | None = None) -> Any:
        """The parameter dataclass of instance ``name`` (with ``category``'s overrides)."""
        return self.instance(name).params_for(category)

    def model(self, name: str) -> str:
        """The name of the model instance ``name`` scores with."""
        return self.instance(name).model

    def method(self, name: str) -> MethodSpec:
        return METHOD_TABLE[self.instance(name).method]

    def with_params(self, name: str, **changes: Any) -> VariantsConfig:
        """These variants with ``changes`` applied to instance ``name``'s parameters (and to each
        of its per-category ones). Not re-checked: for tests and benchmarks."""
        from dataclasses import replace

        inst = self.instance(name)
        new = replace(inst, params=replace(inst.params, **changes),
                      per_category={c: replace(p, **changes) for c, p in inst.per_category.items()})
        return replace(self, instances={**self.instances, name: new})

    def check_shared_prior(self) -> None:
        """Every enabled dynamic instance shares one KNN prior per category (fit step): in each
        category (with its overrides) their k and bins must agree."""
        dynamic = [v for v in self.enabled if self.instance(v).method == "dynamic"]
        categories = {c for v in dynamic for c in self.instance(v).per_category}
        for category in [None, *sorted(categories)]:
            rows = [(v, self.params(v, category)) for v in dynamic]
            if len({(p.knn_k, p.bins) for _, p in rows}) > 1:
                names = ", ".join(f"{v} ({p.knn_k}/{p.bins})" for v, p in rows)
                on = f" for {category}" if category else ""
                raise Invalid(("variants",), f"the dynamic variants {names} differ in knn_k/bins{on}; they share "
                              "one KNN prior per category.", "give every dynamic variant the same knn_k and bins.")

    def family(self, name: str, category: str | None = None) -> str:
        """The instance whose ``components`` call ``name`` shares: the first instance (in config
        order) with the same method, model and parameters apart from post-processing and
        ``combine``-only ones (with ``category``'s overrides). Defined over every instance,
        enabled or not, so a family (and the noise its leader's name seeds) does not depend on
        which instances are enabled."""
        key = self._family_key(name, category)
        return next(n for n in self.instances if self._family_key(n, category) == key)

    def _family_key(self, name: str, category: str | None) -> tuple[Any, ...]:
        inst = self.instance(name)
        spec = METHOD_TABLE[inst.method]
        skip = set(POSTPROCESS_PARAMS) | set(spec.combine_only)
        params = inst.params_for(category)
        kept = tuple((f.name, getattr(params, f.name)) for f in fields(params) if f.name not in skip)
        return (spec.module, inst.model, kept)


@dataclass(frozen=True)
class FeaturesConfig:
    """The feature extractor φ (DynAD's KNN prior and feature maps, RAN's feature term; each
    consumer gets its own instance, so DynAD's domain adaptation never reaches RAN's: raydiff.features)."""

    #: torchvision ResNet of φ (``raydiff.features.ARCHS``): resnet34 (DynAD), wide_resnet101_2 or
    #: wide_resnet50_2 (DDAD). Hashed into run ids only when not resnet34.
    arch: PhiArch = field(default="resnet34", metadata=ID_UNLESS_DEFAULT)
    #: A local torchvision/timm state dict of ``arch`` (.pth/.pt/.safetensors); none = random init.
    #: Spelled ``resnet34_weights`` before (still read, with a FutureWarning: config.compat); hashed
    #: under that name, so ids stay.
    weights: str | None = field(default=None, metadata={"id_name": "resnet34_weights"})
    #: The file's sha256, read when the config is loaded and written into the run's config.yaml
    #: (which then loads without the file). Hashed into run ids instead of the path: moving the
    #: file keeps the run, editing it makes a new one. You need not write it; given, φ refuses a
    #: file that does not match it.
    weights_sha256: str | None = field(default=None, metadata=ID_UNLESS_DEFAULT)
    #: The published sha256 of the weights (e.g. of torchvision's ImageNet file; applies when
    #: ``weights`` is set): a file that does not match is an error, and only then do the metrics
    #: say ``feature_weights = imagenet-verified:<file>@<sha12>`` (else ``file:<file>@<sha12>``).
    #: Not hashed (it equals ``weights_sha256``).
    expected_sha256: str | None = field(default=None, metadata=ID_UNLESS_DEFAULT)
    #: Epochs of DynAD domain adaptation of DynAD's φ on normal images (0 = off); a dynamic
    #: instance with ``domain_adaptation: false`` keeps the unadapted φ (DynAD Table 6).
    domain_adaptation_epochs: int = field(default=0, metadata=_range(0, 100))
    domain_adaptation_lr: float = field(default=1e-4, metadata=_range(0.0, 1.0))

    def check(self, prefix: str) -> None:
        _check_digests(self, prefix, "weights", ("weights_sha256", "expected_sha256"))


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
class TexturesConfig:
    """How ``raydiff demo`` generates the embedded texture benchmark (``raydiff.data.textures``):
    images per category, the defects' size and their visibility floors. The defaults are the
    generator's own (60 / 15 / 15 images, no floors); ``dataset.image_size`` and ``seed`` apply too."""

    n_train: int = field(default=60, metadata=_range(1, 9999))
    n_test_good: int = field(default=15, metadata=_range(1, 9999))
    n_test_defect: int = field(default=15, metadata=_range(0, 9999))
    #: Source pixels of a crop's side (the zoom).
    crop: int = field(default=112, metadata=_range(8, 124))
    #: Thinnest scratch width and spot diameter, in output pixels.
    min_stroke_px: float = field(default=0.0, metadata=_range(0.0, 256.0))
    #: Faintest brightness change (scratch, blob, spot contrast; hole depth), in standard
    #: deviations of the clean crop.
    min_contrast_sd: float = field(default=0.0, metadata=_range(0.0, 5.0))
    #: Probability that a pasted foreign-texture patch is matched to the crop's mean and std.
    patch_match: float = field(default=0.5, metadata=_range(0.0, 1.0))
    #: Every defect's linear size (radii, scratch length and width, spot dots) times this.
    defect_scale: float = field(default=1.0, metadata=_range(0.25, 2.5, **ID_UNLESS_DEFAULT))
    #: Faintest tone difference of an unmatched patch, in standard deviations of the clean crop.
    patch_tone_sd: float = field(default=0.0, metadata=_range(0.0, 5.0, **ID_UNLESS_DEFAULT))


@dataclass(frozen=True)
class OutputConfig:
    #: Root of all outputs; relative paths are taken relative to the current directory.
    root: str = "raydiff-out"


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking (``raydiff.tracking``; docs/usage.md, "Tracking"): each model's loss
    curve, config, versions and placement, and each (category, variant)'s metrics and cost, sent
    to MLflow or TensorBoard. Not part of any id: it changes no weight and no score."""

    #: ``none``, ``mlflow`` (needs ``pip install 'raydiff[tracking]'``) or ``tensorboard``.
    backend: Literal["none", "mlflow", "tensorboard"] = "none"
    #: MLflow's tracking URI (``http://host:5000``, ``sqlite:///…/mlflow.db``) or TensorBoard's log
    #: folder. null = under the output root: ``sqlite:///OUT/mlflow/mlflow.db`` (artefacts in
    #: ``OUT/mlflow/artifacts``), ``OUT/tensorboard``.
    uri: str | None = None
    #: The MLflow experiment (null: the dataset's name).
    experiment: str | None = None
    #: Keep Ray Tune's automatic CSV / JSON / TensorBoard loggers (``OUT/ray_results``): one
    #: point per checkpoint report and, in a packed run, every model on the same series; off.
    tune_loggers: bool = False

    def check(self, prefix: str) -> None:
        if self.backend == "none" and self.uri is not None:
            raise Invalid((f"{prefix}.uri", f"{prefix}.backend"), f"'{prefix}.uri' is set but '{prefix}.backend' "
                          "is none: nothing would be logged there.", "set tracking.backend: mlflow or tensorboard.")
        if self.backend == "tensorboard" and self.uri is not None and "://" in self.uri:
            raise Invalid((f"{prefix}.uri",), f"'{prefix}.uri' is {self.uri!r}, a URI; TensorBoard's event files "
                          "are written to a local or mounted folder.", "give a folder path (or null: OUT/tensorboard).")


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
    #: Interface the dashboard of a Ray started by raydiff listens on: a loopback address only
    #: (docs/cluster.md: reach a remote dashboard through SSH, never by opening the port).
    dashboard_host: str = "127.0.0.1"

    def check(self, prefix: str) -> None:
        if not is_loopback(self.dashboard_host):
            raise Invalid((f"{prefix}.dashboard_host",), f"'{prefix}.dashboard_host' is {self.dashboard_host!r}, "
                          "not a loopback address: the dashboard and the Jobs API would be open to the network.",
                          "keep 127.0.0.1 (or ::1 / localhost) and reach it through an SSH tunnel (docs/cluster.md).")

    @property
    def torch_device(self) -> str:
        """``cuda`` or ``cpu``: what the workers compute on (``device`` with ``auto`` resolved)."""
        if self.device == "auto":
            return "cuda" if self.accelerator == "gpu" else "cpu"
        return self.device


@dataclass(frozen=True)
class Config:
    dataset: DatasetConfig = DatasetConfig()
    models: ModelsConfig = field(default_factory=ModelsConfig)
    variants: VariantsConfig = field(default_factory=VariantsConfig)
    features: FeaturesConfig = FeaturesConfig()
    output: OutputConfig = OutputConfig()
    ray: RayConfig = RayConfig()
    scoring: ScoringConfig = ScoringConfig()
    train: TrainConfig = TrainConfig()
    #: MLflow / TensorBoard logging (no id: an added section that leaves every pin alone at its default).
    tracking: TrackingConfig = field(default=TrackingConfig(), metadata=ID_UNLESS_DEFAULT)
    #: The embedded benchmark's generator settings (read by ``raydiff demo`` only).
    textures: TexturesConfig = TexturesConfig()
    #: Category groups for per-category overrides, e.g. ``{textures: [carpet, grid, ...]}``.
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    seed: int = 0
    #: The file this config was loaded from (not hashed; for messages and relative paths).
    source: str | None = field(default=None, metadata={"internal": True})

    def check(self, prefix: str = "") -> None:
        """Rules across sections (each section's own ``check`` has run): the output root, the
        device, and every variant instance against its model; the loader runs it once the models
        and variants are built."""
        if "://" in self.output.root:
            raise Invalid(("output.root",), f"'output.root' is a URI ({self.output.root}); raydiff commits results "
                          "with atomic renames, which object stores do not have.",
                          "use a POSIX path that every node mounts at the same place (NFS, EFS, FSx for Lustre).")
        if self.ray.device == "cuda" and self.ray.accelerator != "gpu":
            raise Invalid(("ray.device", "ray.accelerator"), "'ray.device' is cuda but 'ray.accelerator' is cpu: the "
                          "workers would get no GPU from Ray.", "set ray.accelerator: gpu (or ray.device: auto / cpu).")
        if not self.variants.enabled:
            raise Invalid(("variants.enabled",), "'variants.enabled' is empty: nothing would be scored.",
                          f"list some of: {', '.join(self.variants.instances)}.")
        for name, inst in self.variants.instances.items():
            _check_against_model(name, inst, self.models.spec(inst.model))
        self.variants.check_shared_prior()

    def models_needed(self) -> tuple[str, ...]:
        """Names of the models the enabled variants score with, in config order (each is
        trained once per category, however many variants use it)."""
        needed = {self.variants.model(v) for v in self.variants.enabled}
        return tuple(m for m in self.models.names if m in needed)

    def model_spec(self, name: str) -> ModelSpec:
        return self.models.spec(name)

    def with_models(self, names: tuple[str, ...] | None = None, **changes: Any) -> Config:
        """This config with ``changes`` (ModelSpec fields) applied to the models ``names`` (all by
        default): ``cfg.with_models(train_steps=50)``. The result is not re-checked."""
        from dataclasses import replace

        specs = {n: replace(s, **changes) if names is None or n in names else s for n, s in self.models.specs.items()}
        return replace(self, models=ModelsConfig(specs=specs))


def is_loopback(host: str) -> bool:
    """``localhost`` or an address of the loopback interface (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _config_dir() -> Path:
    """The shipped configs: the package ``raydiff.configs`` (the repository's ``configs/``
    folder, mapped into the package by pyproject.toml), wherever it is installed."""
    from importlib.resources import files

    return Path(str(files("raydiff.configs")))


#: The folder of the configs that ship with raydiff (``configs/`` of the repository).
CONFIG_DIR = _config_dir()
#: The embedded default benchmark's config (what ``make demo`` runs).
DEFAULT_CONFIG = CONFIG_DIR / "textures.yaml"
#: Environment variable that moves the default config's texture data (else OUTPUT_ROOT/data/textures).
TEXTURES_ENV = "RAYDIFF_TEXTURES"
