"""Faults of issue 30: two sweeps on one output root, a request no node can meet, joining a Ray
that someone else started. Each answer is one clear line (or a message) before any work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from datatrees import make_mvtec

from raydiff.cli import main
from raydiff.config import config_from_dict
from raydiff.errors import ConfigError, OutputError

pytestmark = [pytest.mark.slow]


def _cfg(tmp_path: Path, **ray: object) -> object:
    return config_from_dict({"dataset": {"layout": "mvtec", "root": str(tmp_path / "data"), "image_size": 16},
                             "output": {"root": str(tmp_path / "out")}, "ray": dict(ray)})


def test_a_second_sweep_on_the_same_output_root_refuses_and_a_stale_lock_is_taken_over(tmp_path: Path) -> None:
    from raydiff.runs import LOCK, output_lock

    root = make_mvtec(tmp_path / "data", n_train=4)
    out = tmp_path / "out"
    holder = subprocess.Popen(  # the first sweep: another driver process holding the lock
        [sys.executable, "-c",
         "import sys, time; from raydiff.config import config_from_dict; from raydiff.runs import output_lock\n"
         f"cfg = config_from_dict({{'output': {{'root': {str(out)!r}}}}})\n"
         "with output_lock(cfg):\n    print('locked', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        lock = json.loads((out / LOCK).read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname()
        result = CliRunner().invoke(main, ["sweep", "--dataset-root", str(root), "--output", str(out),
                                           "--set", "dataset.image_size=16", "--set", "models.preset=tiny"])
        errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
        assert f"pid {holder.pid} on {socket.gethostname()}" in errors[0] and str(out / LOCK) in errors[0]
        assert not list(out.glob("*/config.yaml"))  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK).exists()  # a killed driver leaves its lock behind: stale, taken over
    with output_lock(config_from_dict({"output": {"root": str(out)}})) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not (out / LOCK).exists()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path: Path) -> None:
    from raydiff.runs import LOCK, output_lock

    (tmp_path / LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    with pytest.raises(OutputError, match="pid 1 on elsewhere"):
        with output_lock(config_from_dict({"output": {"root": str(tmp_path)}})):
            pass


def test_a_request_no_node_can_meet_fails_in_one_line() -> None:
    from raydiff.placement import check_requests

    cfg = config_from_dict({"ray": {"cpus_per_training": 4}})
    with pytest.raises(ConfigError, match=r"ray.cpus_per_training: 4, but the largest node .* has 2 CPUs"):
        check_requests(cfg, [{"CPU": 2.0}, {"CPU": 1.0}])
    check_requests(config_from_dict({"ray": {"cpus_per_training": 2}}), [{"CPU": 2.0}])
    gpu = config_from_dict({"ray": {"accelerator": "gpu", "gpus_per_training": 1}})
    with pytest.raises(ConfigError, match="gpus_per_training: 1, but .* 0 GPUs"):
        check_requests(gpu, [{"CPU": 8.0}])


@pytest.mark.ray
def test_a_local_ray_that_cannot_meet_the_request_fails_before_training(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from raydiff import workflow

    monkeypatch.setattr(workflow, "running_local_ray", lambda: None)  # never someone else's Ray here
    root = make_mvtec(tmp_path / "data", n_train=4)
    too_many = (os.cpu_count() or 2) + 2
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["sweep", "--dataset-root", str(root), "--output", str(tmp_path / "out"),
                                       "--set", "dataset.image_size=16", "--set", "models.preset=tiny",
                                       "--set", f"ray.cpus_per_training={too_many}"])
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert f"ray.cpus_per_training: {too_many}, but the largest node" in errors[0]
    assert f"has {os.cpu_count()} CPUs" in errors[0] and "--set ray.cpus_per_training=" in errors[0]
    assert not ray.is_initialized() and time.perf_counter() - start < 60
    assert not list((tmp_path / "out").glob("models/*"))  # nothing trained


@pytest.mark.ray
def test_joining_a_ray_someone_else_started_says_its_address_first(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from raydiff import workflow

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        monkeypatch.setattr(workflow, "running_local_ray", lambda: cluster.address)
        said: list[str] = []
        assert workflow.init_ray(_cfg(tmp_path), said.append)
        try:
            assert ray.get_runtime_context().gcs_address == cluster.address
        finally:
            ray.shutdown()
        assert len(said) == 1 and cluster.address in said[0] and "ray.address: local" in said[0]
    finally:
        cluster.shutdown()


def _bootstrap(path: Path, **types: dict[str, float]) -> Path:
    """A launcher's bootstrap config (``ray up`` writes it on the head) with these node types."""
    import yaml

    path.write_text(yaml.safe_dump({"cluster_name": "c", "available_node_types": {
        name: {"resources": res, "node_config": {}, "max_workers": 2} for name, res in types.items()}}))
    return path


def test_a_launched_clusters_node_types_decide_what_can_be_met(tmp_path: Path) -> None:
    from raydiff.placement import check_requests, launcher_node_types

    assert launcher_node_types(tmp_path / "absent.yaml") is None
    undeclared = tmp_path / "undeclared.yaml"
    undeclared.write_text("available_node_types:\n  head: {node_config: {}}\n  gpu: {resources: {GPU: 1}}\n")
    assert launcher_node_types(undeclared) is None  # resources filled in from the cloud: unknown here
    types = launcher_node_types(_bootstrap(tmp_path / "b.yaml", head={"CPU": 0}, gpu={"CPU": 8, "GPU": 1}))
    assert types == {"head": {"CPU": 0.0}, "gpu": {"CPU": 8.0, "GPU": 1.0}}
    gpu = config_from_dict({"ray": {"accelerator": "gpu", "gpus_per_training": 1, "cpus_per_training": 4}})
    check_requests(gpu, [{"CPU": 2.0}], types)  # no GPU node yet, but the autoscaler can add one
    too_big = config_from_dict({"ray": {"cpus_per_training": 16}})
    with pytest.raises(ConfigError, match=r"cpus_per_training: 16, but the largest node of this Ray cluster and of "
                                          r"the node types its autoscaler can add \(gpu, head\) has 8 CPUs"):
        check_requests(too_big, [{"CPU": 2.0}], types)


@pytest.mark.ray
def test_joining_a_launched_cluster_checks_its_node_types_not_its_nodes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A static one-CPU head with a bootstrap config: a request above the head but within a node
    type passes (the autoscaler would add it); one above every node type fails in one line."""
    import ray
    from ray.cluster_utils import Cluster

    from raydiff import placement, workflow

    monkeypatch.setattr(placement, "BOOTSTRAP_CONFIG", _bootstrap(tmp_path / "boot.yaml", head={"CPU": 1},
                                                                  big={"CPU": 4}))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        fits = config_from_dict({"ray": {"address": cluster.address, "cpus_per_training": 3}})
        assert workflow.init_ray(fits) is True  # 3 > the head's 1 CPU, but a "big" node has 4
        ray.shutdown()
        never = config_from_dict({"ray": {"address": cluster.address, "cpus_per_training": 6}})
        with pytest.raises(ConfigError, match=r"cpus_per_training: 6, but the largest node .* \(big, head\) has 4 CPUs"):
            workflow.init_ray(never)
        assert not ray.is_initialized()
    finally:
        ray.shutdown()
        cluster.shutdown()
