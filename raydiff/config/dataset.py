"""The ``dataset`` section (where the images are, how they become tensors, what is held out) and
the ``textures`` section (how ``raydiff demo`` generates its embedded benchmark)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from raydiff.config.fields import ID_OMIT, ID_UNLESS_DEFAULT, PLAIN_NAME_FIX, PLAIN_NAME_PROBLEM, Invalid, _range, is_plain_name

#: Dataset folder layouts (``raydiff.data.manifest.SCANNERS`` has one scanner each).
DatasetLayout = Literal["mvtec", "visa", "btad", "generic", "mvtec-ad2"]
DATASET_LAYOUTS: tuple[str, ...] = get_args(DatasetLayout)


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
