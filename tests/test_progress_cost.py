"""Progress and cost you can read (issue 31, item 7): a variant whose UNet pass another variant
made is charged the passes it needs and names whose pass it rides on, instead of 0; scoring
reports images done with an ETA. (The driver's progress lines of a whole sweep are checked by
tests/test_job_path.py's smoke run.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import polars as pl
import torch

from raydiff.config import config_from_dict
from raydiff.paths import partition_dir, run_dir
from raydiff.pipeline import eta
from raydiff.report_tables import PASS_COLUMN, with_shared_passes
from raydiff.runs import IMAGE_SCHEMA, PartitionWriter, passes_of
from raydiff.scoring.context import BatchCache


def _forward(cache: BatchCache, n: int = 1) -> object:
    def compute() -> object:
        cache.count_forward(n)
        return object()

    return compute


def test_a_pass_reused_by_another_family_is_counted_for_it_and_named() -> None:
    """kim-single-level's one reconstruction at t = 100 is one of kim-trend's eight levels."""
    cache = BatchCache(SimpleNamespace(device=torch.device("cpu"), cfg=None), torch.zeros(2, 1, 4, 4), ["a", "b"])
    cache.current = "kim-trend"
    for t in (25, 50, 100, 200):
        cache.memo(("recon", "ran", t), _forward(cache))
    cache.memo(("noise", "ran"), lambda: object())  # no UNet: reusing it is not riding on a pass
    cache.current = "kim-single-level"
    cache.memo(("noise", "ran"), lambda: object())
    assert cache.rides_on == {}
    cache.memo(("recon", "ran", 100), _forward(cache))
    assert cache.forwards["kim-single-level"] == 0  # what the cache spent on it (the old cost column)
    assert cache.shared_forwards["kim-single-level"] == 1 and cache.rides_on == {"kim-single-level": "kim-trend"}
    assert cache.forwards["kim-trend"] == 4 and "kim-trend" not in cache.rides_on
    cache.memo(("recon", "ran", 100), _forward(cache))  # its own second ask of the same key: nothing new
    assert cache.shared_forwards["kim-single-level"] == 2  # (each ask is a pass the variant needs)


def test_cost_columns_name_the_pass_a_variant_rides_on(tmp_path: Path) -> None:
    cfg = config_from_dict({"output": {"root": str(tmp_path)}, "dataset": {"name": "mvtec"}})
    for variant, rides in (("kim-trend", "kim-trend"), ("kim-single-level", "kim-trend"), ("old", None)):
        w = PartitionWriter(partition_dir(cfg, "images", "bottle", variant), IMAGE_SCHEMA)
        w.commit({"images": 0} | ({"pass_of": rides} if rides else {}))
    passes = passes_of(run_dir(cfg))
    metrics = pl.DataFrame({"dataset": ["mvtec"] * 3, "category": ["bottle"] * 3,
                            "variant": ["kim-single-level", "kim-trend", "old"], "unet_forwards_per_image": [1.0, 8.0, 3.0]})
    out = with_shared_passes(metrics, passes)
    assert out[PASS_COLUMN].to_list() == ["kim-trend", "kim-trend", None]  # None: written before it was recorded
    assert out["unet_forwards_per_image"].to_list() == [1.0, 8.0, 3.0]
    assert with_shared_passes(out, passes).equals(out)


def test_eta_from_the_rate_so_far() -> None:
    assert eta(10.0, 2, 6) == ", ETA 20 s"
    assert eta(10.0, 6, 6) == "" and eta(0.0, 0, 6) == ""
