"""Resources from the config, the worker's device check, placement records and stage summaries,
the multi-writer commit protocol of the run folder, and ``--set`` on the job entry point."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from raydiff.config import config_from_dict, load_config, parse_overrides
from raydiff.errors import ConfigError, OutputError

REPO = Path(__file__).resolve().parents[1]


def test_accelerator_and_device_resolve_from_the_config() -> None:
    from raydiff.placement import gpus_for

    gpu = config_from_dict({"ray": {"accelerator": "gpu"}})
    assert gpu.ray.torch_device == "cuda" and gpus_for(gpu, 1.0) == 1.0
    simulated = config_from_dict({"ray": {"accelerator": "gpu", "device": "cpu"}})
    assert simulated.ray.torch_device == "cpu" and gpus_for(simulated, 0.5) == 0.5  # asks for GPUs anyway
    cpu = config_from_dict({})
    assert cpu.ray.torch_device == "cpu" and gpus_for(cpu, 1.0) == 0.0
    with pytest.raises(ConfigError, match="ray.accelerator: gpu"):
        config_from_dict({"ray": {"device": "cuda"}})
    for name in ("mvtec", "visa", "btad"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml", {"dataset.root": str(REPO)})
        assert cfg.ray.accelerator == "gpu" and cfg.ray.torch_device == "cuda", name
    for name in ("textures", "real-smoke"):
        assert load_config(REPO / "configs" / f"{name}.yaml", {"dataset.root": str(REPO)}).ray.accelerator == "cpu"


def test_a_worker_given_a_gpu_without_cuda_fails_with_one_clear_line() -> None:
    import torch

    from raydiff.placement import worker_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError) as err:
        worker_device(config_from_dict({"ray": {"accelerator": "gpu"}}))
    text = str(err.value)
    assert "sees no CUDA device" in text and "ray.device: cpu" in text and "\n" not in text
    assert worker_device(config_from_dict({"ray": {"accelerator": "gpu", "device": "cpu"}})) == "cpu"


def test_no_resource_decision_reads_a_cluster_snapshot() -> None:
    """``ray.cluster_resources()`` at submit time does not describe an autoscaling cluster."""
    for path in (REPO / "raydiff").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("cluster_resources", "available_resources"):
                raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno} reads {node.attr}()")


def test_stage_summary_counts_nodes_gpus_and_busy_fraction() -> None:
    from raydiff.placement import stage_summary

    rows = [
        {"node_id": "a", "gpu_ids": ["0"], "started": "2026-01-01T00:00:00+00:00", "ended": "2026-01-01T00:00:10+00:00"},
        {"node_id": "a", "gpu_ids": ["0"], "started": "2026-01-01T00:00:10+00:00", "ended": "2026-01-01T00:00:20+00:00"},
        {"node_id": "b", "gpu_ids": ["0"], "started": "2026-01-01T00:00:00+00:00", "ended": "2026-01-01T00:00:05+00:00"},
    ]
    s = stage_summary(rows)
    assert (s["tasks"], s["nodes"], s["gpus"], s["seconds"]) == (3, 2, 2, 20.0)
    assert s["gpu_busy_fraction"] == pytest.approx(25 / 40)
    assert stage_summary([])["tasks"] == 0
    assert stage_summary([{**rows[0], "gpu_ids": []}])["gpu_busy_fraction"] is None


def _batch(first: int, n: int, size: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(first)
    return {
        "image_id": np.array([f"test/good/{first + i:03d}.png" for i in range(n)], dtype=object),
        "defect_type": np.array(["good"] * n, dtype=object),
        "label": np.zeros(n, np.int8),
        "gt": np.zeros((n, size, size), np.int8),
        "region": np.zeros((n, size, size), np.int32),
        "map:kl": rng.random((n, size, size)).astype(np.float32),
    }


def test_staged_partition_keeps_exactly_the_reported_parts(tmp_path: Path) -> None:
    from raydiff.io import is_complete
    from raydiff.runs import commit_staged, pixel_table, staging_dir, write_part

    final = tmp_path / "pixels" / "dataset=d" / "category=c" / "variant=kl"
    write_part(final, "a1", 0, pixel_table(_batch(0, 2), "kl"))
    write_part(final, "a1", 2, pixel_table(_batch(2, 3), "kl"))
    write_part(final, "a1", 2, pixel_table(_batch(2, 3), "kl"))  # a retried batch replaces its own part
    write_part(final, "a1", 1, pixel_table(_batch(1, 1), "kl"))  # a killed attempt's leftover, never reported
    (staging_dir(final, "a1") / ".tmp-part-000004.parquet-dead").write_bytes(b"half")
    assert not final.exists()
    with pytest.raises(OutputError, match="expected 99"):
        commit_staged(final, "a1", ["part-000000.parquet", "part-000002.parquet"], 99, {})
    assert not final.exists()  # nothing visible after a failed check
    commit_staged(final, "a1", ["part-000000.parquet", "part-000002.parquet"], 5 * 16, {"images": 5})
    assert is_complete(final) and not staging_dir(final, "a1").exists()
    assert sorted(p.name for p in final.glob("*.parquet")) == ["part-000000.parquet", "part-000002.parquet"]
    df = pl.read_parquet(final / "*.parquet")
    assert df.height == 80 and df["image_id"].n_unique() == 5
    # Strings are built in Arrow from one value per image and stored dictionary-encoded.
    encodings = pq.ParquetFile(final / "part-000002.parquet").metadata.row_group(0).column(0).encodings
    assert any("DICTIONARY" in e for e in encodings)


def test_missing_part_is_an_error_naming_shared_storage(tmp_path: Path) -> None:
    from raydiff.runs import commit_staged, pixel_table, write_part

    final = tmp_path / "variant=kl"
    write_part(final, "a", 0, pixel_table(_batch(0, 1), "kl"))
    with pytest.raises(OutputError, match="shared storage|every node"):
        commit_staged(final, "a", ["part-000000.parquet", "part-000001.parquet"], 32, {})


def test_worker_that_cannot_see_the_run_folder_says_so(tmp_path: Path) -> None:
    import pickle

    from raydiff.runs import require_visible, run_probe, write_run_metadata

    cfg = config_from_dict({"output": {"root": str(tmp_path / "out")}})
    with pytest.raises(OutputError, match="shared storage") as err:
        require_visible(run_probe(cfg), "node x")
    again = pickle.loads(pickle.dumps(err.value))  # as Ray sends it from a worker to the driver
    assert type(again) is OutputError and str(again) == str(err.value)
    write_run_metadata(cfg)
    require_visible(run_probe(cfg), "node x")


def test_parse_overrides_and_the_job_entry_point_set_flag() -> None:
    import importlib.util

    assert parse_overrides(["models.train_steps=200", "ray.accelerator=gpu", "variants.enabled=[kl, trend]"]) == {
        "models.train_steps": 200, "ray.accelerator": "gpu", "variants.enabled": ["kl", "trend"]}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["models.lr"])
    spec = importlib.util.spec_from_file_location("sweep_job", REPO / "jobs" / "sweep.py")
    job = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(job)  # type: ignore[union-attr]
    args = job.parse_args(["--config", "c.yaml", "--set", "ray.accelerator=gpu", "--set", "ray.device=cpu"])
    assert args.sets == ["ray.accelerator=gpu", "ray.device=cpu"]


def test_user_error_is_found_inside_ray_wrappers() -> None:
    from raydiff.errors import user_error_in

    class Wrapped(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__("wrapped")
            self.cause = cause

    inner = ConfigError("worker on n1", "sees no CUDA device.", "set ray.device: cpu.")
    try:
        try:
            raise Wrapped(inner)
        except Wrapped as w:
            raise RuntimeError("Ray Data failed") from w
    except RuntimeError as outer:
        assert user_error_in(outer) is inner
    assert user_error_in(RuntimeError("plain")) is None


def test_an_object_store_output_root_is_refused() -> None:
    with pytest.raises(ConfigError, match="atomic renames"):
        config_from_dict({"output": {"root": "s3://bucket/raydiff-out"}})
