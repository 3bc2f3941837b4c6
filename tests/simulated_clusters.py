"""Simulated Ray clusters on this machine, for the cluster tests.

- :class:`FakeAutoscalingCluster`: Ray's ``AutoscalingCluster`` (fake nodes that its autoscaler
  starts as local raylets) with the fake provider's config written here: the ray wheel does not
  ship ``fake_multi_node/example.yaml``, which the class reads by default. Fields as in the Ray
  repository's ``python/ray/autoscaler/_private/fake_multi_node/example.yaml``.
- :func:`sweep_config`: a tiny sweep config (textures, 32 px, the ``tiny`` preset).
- :func:`run_tables`: what a run folder holds, sorted, for "equal to a clean run" comparisons.
- :func:`one_node_sweep`, :func:`static_cluster`: the clean run on one local Ray, and a
  ``ray.cluster_utils.Cluster`` head to add worker nodes to, for the static-cluster tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ray.cluster_utils import AutoscalingCluster, Cluster

REPO = Path(__file__).resolve().parents[1]


class FakeAutoscalingCluster(AutoscalingCluster):
    """``AutoscalingCluster`` whose config does not come from the (missing) example file.

    Its ``start()`` runs ``ray stop --force``, which ends every Ray on this machine: use it only
    where no other Ray of the test run is alive.
    """

    def _generate_config(self, head_resources: dict[str, Any], worker_node_types: dict[str, Any],
                         autoscaler_v2: bool = False, **config_kwargs: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "cluster_name": "raydiff-fake",
            "max_workers": sum(int(t.get("max_workers", 0)) for t in worker_node_types.values()),
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},
            "available_node_types": {
                **worker_node_types,
                "ray.head.default": {"resources": head_resources, "node_config": {}, "max_workers": 0},
            },
            "head_node_type": "ray.head.default",
            "auth": {},
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": 5,
            "docker": {},
        }
        for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                    "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files",
                    "rsync_exclude", "rsync_filter"):
            config[key] = []
        config.update(file_mounts={}, file_mounts_sync_continuously=False, **config_kwargs)
        return config


def with_venv_on_path() -> dict[str, str]:
    """The environment with this interpreter's bin folder first on PATH (AutoscalingCluster runs
    the ``ray`` command; ``make test`` runs pytest without activating the venv)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def sweep_config(root: Path, out: Path, **extra: Any) -> Any:
    """The textures config at 32 px with a tiny training budget, plus ``extra`` dotted overrides."""
    from raydiff.config import load_config

    overrides = {
        "dataset.root": str(root), "output.root": str(out), "dataset.image_size": 32,
        "models.preset": "tiny", "models.train_steps": 4, "models.checkpoint_every": 4, "models.batch_size": 4,
        "models.latent.vae.vae_train_steps": 2, "ray.scoring_batch_size": 2, "ray.training_runs": 0,
        **extra,
    }
    return load_config(REPO / "configs" / "textures.yaml", overrides)


def one_node_sweep(cfg: Any) -> None:
    """``cfg``'s sweep on a local Ray of 2 CPUs: the clean run a cluster's run must equal."""
    import ray

    from raydiff import workflow

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    try:
        workflow.sweep(cfg, report=False, bars=False)
    finally:
        ray.shutdown()


def static_cluster() -> Cluster:
    """A static cluster's head node (1 CPU, with the dashboard Ray Train's placement-group cleaner
    asks); the test adds its worker nodes with ``add_node`` and shuts it down."""
    return Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True,
                                                         "dashboard_host": "127.0.0.1"})


#: The metrics.csv columns two runs of one config must agree on (cost columns are timings).
QUALITY = ["category", "variant", "i_auroc", "p_auroc", "p_ap", "aupro"]


def run_tables(folder: Path) -> dict[str, Any]:
    """The run folder's pixels, images (without timings) and quality metrics as sorted polars
    DataFrames: two runs wrote the same scores iff these are equal."""
    import polars as pl

    from raydiff.runs import scan_images, scan_pixels

    return {
        "pixels": scan_pixels(folder).collect().sort("category", "variant", "image_id", "y", "x"),
        "images": scan_images(folder).drop("seconds_per_image").collect().sort("category", "variant", "image_id"),
        "metrics": pl.read_csv(folder / "metrics.csv").select(QUALITY).sort("category", "variant"),
    }
