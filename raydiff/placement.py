"""What a worker asks Ray for, what torch computes on there, and a record of where work ran.

The requests come from the config (``ray.accelerator``, ``ray.device``), never from
``ray.cluster_resources()``: on an autoscaling cluster the GPU nodes appear only after something
asks for GPUs, so a snapshot at submit time sees none.

Every piece of distributed work (a training segment, a fit, a scoring batch) records
:func:`where_ran`: the Ray node id, the GPU ids Ray assigned, the torch device used, and UTC
start/end times (ISO 8601). :func:`stage_summary` turns such records into tasks, nodes, GPUs
and the GPUs' busy fraction per stage.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from raydiff.config import Config
from raydiff.errors import ConfigError


def utc_now() -> str:
    """The current UTC time, ISO 8601 with microseconds (``2026-12-01T20:53:33.123456+00:00``)."""
    return dt.datetime.now(dt.timezone.utc).isoformat()


def parse_utc(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time written by :func:`utc_now`."""
    return dt.datetime.fromisoformat(text).timestamp()


def gpus_for(cfg: Config, per_task: float) -> float:
    """GPUs a task asks for: ``per_task`` with ``ray.accelerator: gpu``, else none."""
    return per_task if cfg.ray.accelerator == "gpu" else 0.0


#: Where Ray's cluster launcher (``ray up``) leaves the cluster's config on the head node, which a
#: job's driver runs on; Ray Tune reads the same file to tell a launched cluster
#: (``ray.tune.execution.cluster_info``).
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


def launcher_node_types(path: Path | None = None) -> dict[str, dict[str, float]] | None:
    """Resources per node type that the autoscaler of a launched cluster can start, from its
    bootstrap config (``path``, default ``BOOTSTRAP_CONFIG``). None when there is no such file,
    it cannot be read, or a node type does not declare its resources (the launcher then fills
    them in from the cloud's instance type, which cannot be known here): nothing to check."""
    file = (path or BOOTSTRAP_CONFIG).expanduser()
    try:
        types = (yaml.safe_load(file.read_text()) or {}).get("available_node_types") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if not types or not all(isinstance(t, Mapping) and isinstance(t.get("resources"), Mapping) for t in types.values()):
        return None
    return {name: {k: float(v) for k, v in t["resources"].items()} for name, t in types.items()}


def check_requests(cfg: Config, nodes: Iterable[Mapping[str, float]], node_types: Mapping[str, Mapping[str, float]] | None = None) -> None:
    """ConfigError when a per-worker request of the config exceeds every node of a cluster that
    cannot grow (``nodes``: each alive node's total resources), or every node and every node
    type its autoscaler can add (``node_types``, ``launcher_node_types``): Ray would retry and
    time out.

    Checked: ``ray.cpus_per_training`` / ``gpus_per_training`` (one training worker) and
    ``ray.cpus_per_scoring_actor`` / ``gpus_per_scoring_actor`` (one scoring actor).
    """
    nodes = list(nodes) + list((node_types or {}).values())
    if not nodes:
        return
    where = (f"of this Ray cluster and of the node types its autoscaler can add ({', '.join(sorted(node_types))})"
             if node_types else "of this Ray cluster")
    cluster = "its bootstrap config lists no larger type" if node_types else f"{len(nodes)} node(s), none can be added"
    for key, resource in (("cpus_per_training", "CPU"), ("gpus_per_training", "GPU"),
                          ("cpus_per_scoring_actor", "CPU"), ("gpus_per_scoring_actor", "GPU")):
        asked = float(getattr(cfg.ray, key))
        if resource == "GPU":
            asked = gpus_for(cfg, asked)
        largest = max(float(n.get(resource, 0.0)) for n in nodes)
        if asked > largest:
            fix = (f"set ray.{key} to at most {largest:g} (--set ray.{key}={largest:g})"
                   if largest > 0 else "set ray.accelerator: cpu, or run on a cluster with GPUs")
            raise ConfigError(
                f"ray.{key}",
                f"ray.{key}: {asked:g}, but the largest node {where} has {largest:g} {resource}s "
                f"({cluster}): no worker could ever start.",
                f"{fix}, or join a larger cluster with ray.address.",
            )


def worker_line(line: str) -> None:
    """One progress line from a Ray worker (a training worker, a fit task) to the driver's
    console, which Ray forwards from the worker's stdout (``log_to_driver``). Not ``print``: Ray
    Train 2.60 patches ``print`` in its workers to log the message and also to pass it on to the
    wrapped stdout, so the driver showed every printed line twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def assigned_gpus() -> list[str]:
    """GPU ids Ray assigned to this worker ([] outside Ray or without GPUs)."""
    try:
        import ray  # lazy: ray only where work is distributed; in-process code imports this module too (0.5 s)

        if not ray.is_initialized():
            return []
        return [str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]
    except Exception:  # outside a Ray worker, or an older runtime context
        return []


def node_id() -> str | None:
    try:
        import ray  # lazy: as in assigned_gpus

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        return None


def worker_device(cfg: Config) -> str:
    """The torch device this worker computes on (``cuda`` / ``cpu``), checked against what it has.

    A worker that was given GPUs but sees no CUDA device fails here with one clear line, unless
    ``ray.device: cpu`` was set explicitly (GPU resources requested, CPU computation).
    """
    import torch  # lazy: train.launch imports this module into Tune's trial processes, which start without torch

    device = cfg.ray.torch_device
    if device == "cuda" and not torch.cuda.is_available():
        gpus = assigned_gpus()
        raise ConfigError(
            f"worker on {socket.gethostname()} (Ray node {node_id()}, GPU ids {gpus or 'none'}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})",
            f"ray.device resolves to cuda, but torch {torch.__version__} sees no CUDA device.",
            "install a CUDA build of torch on the GPU nodes, or set ray.device: cpu to simulate a GPU "
            "cluster on CPUs (ray.accelerator: cpu to ask for no GPUs at all).",
        )
    return device


def where_ran(device: str, started: str, ended: str | None = None) -> dict[str, Any]:
    """The placement record of one piece of work."""
    return {
        "node_id": node_id(),
        "host": socket.gethostname(),
        "gpu_ids": assigned_gpus(),
        "device": device,
        "started": started,
        "ended": ended or utc_now(),
    }


def stage_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Tasks, distinct nodes and GPUs, wall span and the GPUs' busy fraction of some records.

    Busy fraction = GPU-seconds of work / (GPUs used x the stage's wall span); a GPU is a
    (node, GPU id) pair. None when no record holds a GPU.
    """
    rows = [r for r in records if r.get("started") and r.get("ended")]
    if not rows:
        return {"tasks": 0, "nodes": 0, "gpus": 0, "seconds": 0.0, "gpu_busy_fraction": None}
    spans = [(parse_utc(r["started"]), parse_utc(r["ended"])) for r in rows]
    gpus = {(r.get("node_id"), g) for r in rows for g in r.get("gpu_ids") or ()}
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    gpu_seconds = sum((e - s) * len(r.get("gpu_ids") or ()) for r, (s, e) in zip(rows, spans, strict=True))
    busy = gpu_seconds / (len(gpus) * wall) if gpus and wall > 0 else None
    return {
        "tasks": len(rows),
        "nodes": len({r.get("node_id") for r in rows}),
        "gpus": len(gpus),
        "seconds": round(wall, 1),
        "gpu_busy_fraction": None if busy is None else round(min(busy, 1.0), 3),
    }
