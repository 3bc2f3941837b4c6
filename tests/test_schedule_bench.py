"""``raydiff bench schedule`` on a tiny workload: the stand-in work runs on simulated GPU nodes
through the sweep's own chain runner, and no orchestration beats the lower bound."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[1]


def test_lower_bound_formula() -> None:
    from raydiff.bench.schedule import lower_bound

    w = {"train_s": {"pixel": 100.0, "latent": 200.0}, "fit_s": {"a": 10.0, "b": 10.0},
         "test_images": {"a": 8, "b": 8}, "batch": 4, "image_s": 1.0}
    # total = 2 x (300 + 10 + 8 + 2) = 640; chain = 200 + 10 + 2 + 8 / 2 = 216
    assert lower_bound(w, 2, actor_start_s=2.0) == pytest.approx(320.0)
    assert lower_bound(w, 8, actor_start_s=2.0) == pytest.approx(216.0)


def test_both_orders_run_and_respect_the_bound() -> None:
    from raydiff.config import load_config
    from raydiff.bench.schedule import bench_schedule

    cfg = load_config(REPO / "configs" / "textures.yaml", {"dataset.root": str(REPO)})
    # A slow "GPU", so that the tiny models' work lasts ~15 s of real time at this scale.
    out = bench_schedule(cfg, gpus=[2], gpu_tflops=0.002, mfu=1.0, scale=400.0, actor_start_s=100.0,
                         sizes={"a": (20, 6), "b": (20, 6)})
    (row,) = out["rows"]
    assert row["chains_ratio"] >= 0.95 and row["phases_ratio"] >= 0.95
    assert out["workload"]["forwards_per_image"]["pixel"] > 0
