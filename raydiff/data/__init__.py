"""Datasets: folder layouts → manifest tables, validation, and the one image preprocessing path."""

from raydiff.data.images import dataset_channels, load_image, load_mask
from raydiff.data.manifest import (
    MANIFEST_SCHEMA,
    scan_btad,
    scan_dataset,
    scan_generic,
    scan_mvtec,
    scan_visa,
)
from raydiff.data.splits import assign_holdout
from raydiff.data.validate import ValidationSummary, validate_dataset

__all__ = [
    "MANIFEST_SCHEMA",
    "ValidationSummary",
    "assign_holdout",
    "dataset_channels",
    "load_image",
    "load_mask",
    "scan_btad",
    "scan_dataset",
    "scan_generic",
    "scan_mvtec",
    "scan_visa",
    "validate_dataset",
]
