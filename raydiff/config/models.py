"""The ``models`` section: named ``ModelSpec``s (arch, noise, variance, schedule, training budget,
...), one model trained per (category, name), with their noise, VAE, initial-weights and
augmentation settings. ``BUILTIN_MODELS`` are the four names a config may use without defining
them (``pixel``, ``pixel-simplex``, ``pixel-gmm``, ``latent``). The loader builds them in
``raydiff.config.sections`` (named form) and ``raydiff.config.compat`` (``models.kinds`` form)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from raydiff.config.fields import _SHA256, ID_OMIT, ID_UNLESS_DEFAULT, Invalid, _check_digests, _range

NoiseKind = Literal["gaussian", "simplex", "gmm"]
Arch = Literal["pixel", "latent"]
#: What the UNet of a model predicts about the reverse variance: ``learned`` (it also outputs v,
#: improved DDPM: 2C channels), or ε only with σ² fixed to β̃_t (``fixed-small``) or β_t
#: (``fixed-large``: Fučka eq. 5, Kashihara) when sampling.
ModelVariance = Literal["learned", "fixed-small", "fixed-large"]


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
