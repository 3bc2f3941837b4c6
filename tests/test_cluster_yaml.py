"""cluster.yaml is a valid Ray cluster-launcher config (checked offline against Ray's own schema)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml

CLUSTER = Path(__file__).parents[1] / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_matches_ray_schema() -> None:
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(load(), schema)


def test_cluster_yaml_has_what_the_launcher_needs() -> None:
    cfg = load()
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type", "max_workers"):
        assert key in cfg, key
    assert cfg["head_node_type"] in cfg["available_node_types"]
    gpu_types = [n for n, t in cfg["available_node_types"].items() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types, "no GPU worker type"
    assert any(t.get("max_workers", 0) > t.get("min_workers", 0) for t in cfg["available_node_types"].values())
    # raydiff is installed on every node, and the dashboard stays on loopback.
    assert any("raydiff" in c for c in cfg["setup_commands"])
    assert all("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"] if "--head" in c)


def test_cluster_yaml_passes_ray_launcher_validation() -> None:
    # The launcher's own offline steps: fill defaults, then validate (no cloud call).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load()))
