"""The same sweep on one node and on a static two-node cluster (``ray.cluster_utils.Cluster``,
both nodes on this machine): the Parquet and the metrics are equal bit for bit, and the work
really ran on both nodes (placement records)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulated_clusters import one_node_sweep, run_tables, static_cluster, sweep_config

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.trains]


def test_two_node_cluster_writes_what_one_node_writes(tmp_path: Path) -> None:
    import ray

    from raydiff import workflow
    from raydiff.data.textures import make_textures
    from raydiff.paths import run_dir

    root = make_textures(tmp_path / "data", size=32, n_train=10, n_test_good=3, n_test_defect=3, categories=("brick",))
    extra = {"dataset.categories": ["brick"], "ray.training_runs": 0}
    single = sweep_config(root, tmp_path / "one", **extra)
    multi = sweep_config(root, tmp_path / "two", **extra)

    one_node_sweep(single)

    cluster = static_cluster()
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        result = workflow.sweep(multi, report=False, bars=False)
    finally:
        ray.shutdown()
        cluster.shutdown()

    trained = workflow.training_records(multi, ["brick"], since="1970-01-01T00:00:00+00:00")
    scored = [r for s in result["scoring"] for r in s["placement"]]
    nodes = {r["node_id"] for r in trained + scored}
    assert len(nodes) == 2, f"the work ran on {len(nodes)} node(s) only"
    a, b = run_tables(run_dir(single)), run_tables(run_dir(multi))
    for name in a:
        assert a[name].height > 0 and a[name].equals(b[name]), name
