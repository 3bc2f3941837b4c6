"""A sweep on a simulated autoscaling GPU cluster: a head without GPUs, GPU workers from 0 to 2.

``ray.accelerator: gpu`` with ``ray.device: cpu``: every training, fit and scoring actor asks
for a GPU (so the autoscaler must add GPU nodes) and computes on the CPU (this machine has no
GPU). Checked: GPU nodes were added, every training segment and scoring batch ran on a GPU
node with the GPU id Ray assigned recorded, and two trainings overlapped in time.

``AutoscalingCluster.start()`` runs ``ray stop --force``: this module needs that no other Ray
of the test run is alive (the other modules shut theirs down), and it must not run in parallel
with anything else using Ray on this machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from simulated_clusters import FakeAutoscalingCluster, sweep_config, with_venv_on_path

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.trains]

CATEGORIES = ("brick", "grass")


def _overlap(spans: list[tuple[float, float]]) -> int:
    """Most spans open at one instant."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def test_sweep_scales_up_gpu_nodes_and_runs_every_stage_on_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from raydiff import workflow
    from raydiff.data.textures import make_textures
    from raydiff.paths import model_dir
    from raydiff.placement import parse_utc

    assert not ray.is_initialized(), "another Ray is alive in this process: `ray stop --force` would end it"
    for key, value in with_venv_on_path().items():
        monkeypatch.setenv(key, value)
    root = make_textures(tmp_path / "data", size=32, n_train=10, n_test_good=2, n_test_defect=2, categories=CATEGORIES)
    cfg = sweep_config(
        root, tmp_path / "out",
        **{"dataset.categories": list(CATEGORIES), "variants.enabled": ["no-diffusion", "kl"],  # the pixel model only
           "models.train_steps": 80, "models.checkpoint_every": 80,
           "ray.accelerator": "gpu", "ray.device": "cpu", "ray.cpus_per_training": 1, "ray.gpus_per_training": 1,
           "ray.cpus_per_scoring_actor": 1, "ray.gpus_per_scoring_actor": 1},
    )
    cluster = FakeAutoscalingCluster(
        head_resources={"CPU": 1},
        worker_node_types={"gpu": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 200 * 1024**2},
                                   "node_config": {}, "min_workers": 0, "max_workers": 2}},
    )
    cluster.start()
    try:
        ray.init(address="auto", log_to_driver=False)
        head = ray.get_runtime_context().get_node_id()
        assert ray.cluster_resources().get("GPU", 0) == 0  # no GPU node before the sweep asks for one
        result = workflow.sweep(cfg, report=False, bars=False)
        gpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU")}
    finally:
        ray.shutdown()
        cluster.shutdown()

    segments = []
    for c in CATEGORIES:
        meta = json.loads((model_dir(cfg, c, "pixel") / "meta.json").read_text())
        segments.extend(meta["segments"])
    assert segments and all(s["gpu_ids"] and s["node_id"] in gpu_nodes for s in segments), segments
    assert all(s["device"] == "cpu" for s in segments)
    overlap = _overlap([(parse_utc(s["started"]), parse_utc(s["ended"])) for s in segments])
    scoring = [r for s in result["scoring"] for r in s["placement"]]
    assert scoring and all(r["gpu_ids"] and r["node_id"] in gpu_nodes and r["node_id"] != head for r in scoring)
    report = {"gpu_nodes_added": len(gpu_nodes), "trainings_overlapping": overlap, "stages": result["stages"]}
    print(json.dumps(report, indent=1))  # the numbers docs/cluster.md and closing notes quote (pytest -s)
    assert len(gpu_nodes) >= 2 and head not in gpu_nodes
    assert overlap >= 2, "the two categories' trainings ran one after another"
    assert result["stages"]["train"]["gpus"] >= 2
    metrics = pl.read_csv(result["metrics"])
    assert sorted(metrics["category"].unique().to_list()) == list(CATEGORIES)
    assert metrics["i_auroc"].null_count() == 0
