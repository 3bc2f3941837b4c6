"""The root ``Config`` and the run-level sections; the other sections have a file each:

- ``raydiff.config.fields``: field metadata (``ID_OMIT``, ``ID_UNLESS_DEFAULT``, ranges),
  ``Invalid``, the plain-name and sha256 rules.
- ``raydiff.config.dataset``: ``dataset`` and ``textures``.
- ``raydiff.config.models``: ``models`` (``ModelSpec``, ``BUILTIN_MODELS``).
- ``raydiff.config.methods``: the scoring methods (``METHOD_TABLE``, each method's params class).
- ``raydiff.config.variants``: ``variants`` (``VariantInstance``, ``BUILTIN_VARIANTS``).
- here: ``features``, ``scoring``, ``train``, ``output``, ``tracking``, ``ray``, the root
  ``Config`` (rules across sections) and the shipped configs' folder.

Loading (both the named form and the earlier ``models.kinds`` form), validation and the stable
ids are in ``raydiff.config.loader``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from raydiff.config.dataset import DatasetConfig, TexturesConfig
from raydiff.config.fields import ID_UNLESS_DEFAULT, Invalid, _check_digests, _range
from raydiff.config.models import ModelsConfig, ModelSpec
from raydiff.config.variants import VariantsConfig, _check_against_model

#: φ's architectures (``features.arch``; ``raydiff.features.ARCHS`` holds their blocks and widths).
PhiArch = Literal["resnet34", "wide_resnet50_2", "wide_resnet101_2"]


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
