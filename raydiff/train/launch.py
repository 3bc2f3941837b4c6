"""Many independent trainings on Ray: one Tune trial per (category, model kind).

The pattern Ray 2.60 documents for many independent Train runs ("Hyperparameter tuning with Ray
Tune", Train V2): a Tune trial is a small *driver* that builds a ``TorchTrainer`` and calls
``fit()``; the TorchTrainer runs ``train_one`` (raydiff.train.loop) in one worker.

- Resources come from the config, never from ``ray.cluster_resources()`` (an autoscaling cluster
  has no GPU node until something asks for one): ``ScalingConfig(num_workers=1,
  use_gpu=<ray.accelerator is gpu>, resources_per_worker={"CPU": ray.cpus_per_training, "GPU":
  ray.gpus_per_training})``. Every trial starts at once (``ray.max_concurrent_trainings`` = 0) and
  its Train run waits for its worker's resources, so the autoscaler sees the whole demand. The
  Tune trial itself asks for no CPU (it only waits). With ``ray.device: cpu`` the worker computes
  on the CPU over the gloo backend even when it holds a (simulated) GPU.
- Checkpoints are written once: every ``models.checkpoint_every`` steps the worker writes the
  model folder (``raydiff.paths.model_dir``, swapped in atomically) and reports only metrics,
  ``ray.train.report(metrics)`` (no ``checkpoint=``: Ray would upload a second copy of every
  checkpoint to ``OUT/ray_results``, and the model folder is what every later stage reads).
  The loss appears in Ray's results and dashboard; reports are as sparse as checkpoints.
- Failures: ``FailureConfig(max_failures=ray.max_failures)`` restarts the worker, which resumes
  from the model folder's latest checkpoint (``train_one(resume=True)``); the step counter
  continues. A relaunched sweep does the same, as does a packed run (each finished model has
  its success marker, a partial one its latest checkpoint).
- Tracking (``tracking`` section, ``raydiff.tracking``): the worker logs each model's loss
  curve after every checkpoint and its config, versions and placement when it finishes, one
  MLflow run / TensorBoard folder per (category, model). Ray Tune's automatic loggers
  (``OUT/ray_results``: one point per report, a packed run's models on one series) are off
  unless ``tracking.tune_loggers``.
- Finished folders (success marker) are skipped before anything is submitted.
- Packing (``ray.training_runs: N``): the pending trainings, in category order, are cut into at
  most N contiguous runs of similar cost (FLOPs counted by ``raydiff.models.flops``); each run
  trains its models one after another in the same worker, so a category's models finish together
  and its fit and scoring can start while other categories still train. Each Train run starts a
  trial actor, a controller, a placement-group cleaner and a worker process (~25 CPU-seconds on a
  small CPU), which dominates a dozen tiny CPU trainings.

Usage (needs a running Ray: ``ray.init()`` locally, or ``ray.init("auto")`` on a cluster)::

    folders = train_all(prepared, ["bottle", "cable"], ["pixel", "latent"])  # raydiff.workflow.prepare(cfg)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raydiff.config import Config, model_id, run_id
from raydiff.io import atomic_write_text, is_complete
from raydiff.paths import model_dir, output_root
from raydiff.placement import assigned_gpus, gpus_for, node_id, worker_device, worker_line
from raydiff.runs import require_visible
from raydiff.tracking import Tracker, model_params, model_ref, open_tracker, resolved_uri

if TYPE_CHECKING:  # a Prepared arrives pickled; this module need not import the data layer
    from raydiff.data.prepared import Prepared

# torch / diffusers are imported inside the worker only: the Tune trial and the Train controller
# processes unpickle this module and should start fast.
CheckpointHook = Callable[[Path, int, dict[str, float]], None]

#: The Tune trial only drives its TorchTrainer: it asks for no CPU (so that the training workers
#: get them all) but for 1 MiB of Ray's "memory" resource, since a trial needs a non-empty request.
DRIVER_RESOURCES = {"cpu": 0, "memory": 1 << 20}


def absolute_output(cfg: Config) -> Config:
    """The config with an absolute output root and tracking URI (Ray workers do not share the
    driver's cwd)."""
    root = output_root(cfg).resolve()
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, root=str(root)))
    if cfg.tracking.backend != "none":
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, uri=resolved_uri(cfg)))
    return cfg


def storage_path(cfg: Config) -> Path:
    return output_root(cfg) / "ray_results"


def storage_probe(cfg: Config) -> Path:
    """A file ``train_all`` writes at the output root before submitting; each training worker
    checks that it sees it (its node shares the driver's storage)."""
    return output_root(cfg) / ".visible-from-every-node"


def run_name(cfg: Config, category: str, kind: str) -> str:
    return f"train-{model_id(cfg, kind, category)}-{cfg.dataset.dataset_name}-{category}-{kind}"


def track_model(tracker: Tracker, cfg: Config, category: str, kind: str, folder: Path, finished: bool) -> int:
    """Send the rows of the model's ``loss.csv`` the tracker does not hold yet (and, once
    ``finished``, its meta.json); → rows sent."""
    from raydiff.train.loop import read_loss_csv  # lazy: imports torch (the note above CheckpointHook)

    rows = read_loss_csv(folder / "loss.csv", up_to_step=sys.maxsize)
    return tracker.log_model(model_ref(cfg, category, kind), rows, model_params(cfg, category, kind),
                             finished=folder if finished else None)


def track_finished(cfg: Config, tracker: Tracker | None, folders: dict[tuple[str, str], Path]) -> None:
    """On the driver: every complete model the tracker has not seen finish (trained before
    tracking was on, in process, or by a worker that died before it logged the end)."""
    if tracker is None:
        return
    for (category, kind), folder in folders.items():
        if is_complete(folder) and not tracker.model_finished(model_ref(cfg, category, kind)):
            track_model(tracker, cfg, category, kind, folder, finished=True)


def train_worker(config: dict[str, Any]) -> None:
    """The TorchTrainer worker: ``train_one`` for each of its (category, kind) jobs, with a
    metrics report to Ray and a tracking update after every checkpoint (runs in a Ray worker)."""
    import ray.train  # lazy: ray only where work is distributed (importing it costs 0.5 s)
    import ray.train.torch

    # lazy: torch and diffusers only inside the worker (the note above CheckpointHook)
    from raydiff.models import checkpoint as ckpt
    from raydiff.train.loop import train_one

    # The driver's Prepared (its Config included), pickled across as it is: validated once.
    prepared: Prepared = config["prepared"]
    cfg = prepared.cfg
    jobs: list[dict[str, str]] = config["jobs"]
    hook: CheckpointHook | None = config.get("hook")
    require_visible(Path(config["probe"]), f"the training worker on {socket.gethostname()}")
    device = ray.train.torch.get_device() if worker_device(cfg) == "cuda" else "cpu"
    where = {"node_id": node_id(), "host": socket.gethostname(), "gpu_ids": assigned_gpus()}
    tracker = _worker_tracker(cfg)
    for job in jobs:
        category, kind = job["category"], job["kind"]
        folder = model_dir(cfg, category, kind)
        if is_complete(folder):  # a packed run restarted after a failure: done before it
            continue
        folder.parent.mkdir(parents=True, exist_ok=True)
        ckpt.recover(folder)  # the model folder is the only checkpoint: train_one resumes from it

        def report(path: Path, step: int, metrics: dict[str, float], category: str = category, kind: str = kind) -> None:
            # No "done" key: Tune ends a trial on done=True, and a packed run goes on after a model.
            ray.train.report({**metrics, "category": category, "kind": kind})
            _track(tracker, cfg, category, kind, path, finished=False)
            if hook is not None:
                hook(path, step, metrics)

        worker_line(f"[train] {category}/{kind}: starting")
        train_one(prepared, category, kind, out_dir=folder,
                  device=device, resume=True, on_checkpoint=report, where=where,
                  progress=lambda line: worker_line(f"[train] {line}"))  # steps/total at log_every
        _track(tracker, cfg, category, kind, folder, finished=True)
        worker_line(f"[train] {category}/{kind}: done")
    if tracker is not None:
        tracker.close()


def _worker_tracker(cfg: Config) -> Tracker | None:
    """The worker's tracker, or None (tracking off, or its store unreachable from this node:
    said once, and the driver fills the curves in from loss.csv after training)."""
    try:
        return open_tracker(cfg)
    except Exception as err:  # noqa: BLE001 - tracking never fails a training
        worker_line(f"[track] cannot log from this training worker: {err}")
        return None


def _track(tracker: Tracker | None, cfg: Config, category: str, kind: str, folder: Path, finished: bool) -> None:
    """``track_model``, where a failure is one progress line: a training never fails for its
    tracking (the next checkpoint, or the driver after training, sends what is missing)."""
    if tracker is None:
        return
    try:
        track_model(tracker, cfg, category, kind, folder, finished)
    except Exception as err:  # noqa: BLE001
        worker_line(f"[track] {category}/{kind}: logging failed ({type(err).__name__}: {err}); training goes on")




def _trial(trial_config: dict[str, Any], prepared: Prepared, hook: CheckpointHook | None) -> None:
    """One Tune trial = the driver of one Train run for (category, kind), or of a pack of them."""
    # lazy: ray only where work is distributed (importing it costs 0.5 s)
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = prepared.cfg
    jobs: list[dict[str, str]] = trial_config["jobs"]
    categories = sorted({j["category"] for j in jobs})
    gpus = gpus_for(cfg, cfg.ray.gpus_per_training)
    use_gpu = gpus > 0
    resources = {"CPU": cfg.ray.cpus_per_training}
    if use_gpu:
        resources["GPU"] = gpus
    if len(jobs) == 1:
        name = run_name(cfg, jobs[0]["category"], jobs[0]["kind"])
    else:  # a pack: named after its jobs, so that a relaunch with the same pending set finds it
        name = f"train-{cfg.dataset.dataset_name}-pack-{_digest_jobs(cfg, jobs)}"
    trainer = TorchTrainer(
        train_worker,
        # nccl needs CUDA: a simulated GPU (ray.device: cpu) trains over gloo.
        torch_config=TorchConfig(backend="nccl" if cfg.ray.torch_device == "cuda" else "gloo"),
        train_loop_config={"prepared": prepared.only(categories), "jobs": jobs, "hook": hook,
                           "probe": str(storage_probe(cfg))},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage_path(cfg)),
            failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures),
            # No checkpoint is reported to Ray (the model folder is the checkpoint, written once);
            # should one ever be, Ray keeps only the latest (it cannot be told to keep none).
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _digest_jobs(cfg: Config, jobs: Sequence[dict[str, str]]) -> str:
    text = ";".join(f"{j['category']}/{j['kind']}/{model_id(cfg, j['kind'], j['category'])}" for j in jobs)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def estimated_cost(cfg: Config, kind: str) -> float:
    """FLOP of one training of ``kind`` (for packing; see ``raydiff.models.flops``)."""
    from raydiff.models.flops import training_flops  # lazy: imports torch (the note above CheckpointHook)

    return training_flops(cfg, kind)


def training_order(cfg: Config, jobs: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The order Train runs are submitted in (Ray grants pending GPU requests roughly in arrival
    order): category by category, so categories become ready one after another and each one's
    fit and scoring overlap the others' training; within a category the longest training first
    (counted FLOPs), so a category's last model does not start late. Longest-first over all jobs
    packs the GPUs no better here and leaves every category's fit and scoring to the end
    (``raydiff bench schedule``, BENCHMARKS.md)."""
    cost = {k: estimated_cost(cfg, k) for k in {j["kind"] for j in jobs}}
    return sorted(jobs, key=lambda j: (j["category"], -cost[j["kind"]], j["kind"]))


def pack_jobs(cfg: Config, jobs: Sequence[dict[str, str]], runs: int) -> list[list[dict[str, str]]]:
    """``jobs`` in category order, cut into at most ``runs`` contiguous groups of similar total cost;
    ``runs`` = 0 → one group per job, in :func:`training_order`. Deterministic."""
    if runs <= 0 or runs >= len(jobs):
        return [[j] for j in training_order(cfg, jobs)]
    ordered = sorted(jobs, key=lambda j: j["category"])  # stable: kinds keep their order
    costs = [estimated_cost(cfg, j["kind"]) for j in ordered]
    target = sum(costs) / runs
    groups: list[list[dict[str, str]]] = [[]]
    done = 0.0
    for job, cost in zip(ordered, costs, strict=True):
        # Start the next group when this job would end nearer the next cut than the current one.
        if groups[-1] and len(groups) < runs and done + cost / 2 > target * len(groups):
            groups.append([])
        groups[-1].append(job)
        done += cost
    return groups


def train_all(
    prepared: Prepared,
    categories: Sequence[str],
    kinds: Sequence[str],
    on_checkpoint: CheckpointHook | None = None,
    verbose: int = 0,
) -> list[Path]:
    """Train every (category, kind) whose folder is not complete; return all folders (category-major).

    Needs ``ray.init`` first. Raises RuntimeError naming the runs that failed after their retries.
    ``on_checkpoint`` (picklable) runs in the worker after every checkpoint report.
    """
    cfg = absolute_output(prepared.cfg)
    jobs = [(c, k) for c in categories for k in kinds]
    folders = [model_dir(cfg, c, k) for c, k in jobs]
    pending = [{"category": c, "kind": k} for (c, k), f in zip(jobs, folders, strict=True) if not is_complete(f)]
    tracker = open_tracker(cfg)  # on the driver first: it creates the tracking store and experiment
    try:
        if pending:
            _train_pending(prepared.only(categories, cfg), pending, folders, on_checkpoint, verbose)
        track_finished(cfg, tracker, dict(zip(jobs, folders, strict=True)))
    finally:
        if tracker is not None:
            tracker.close()
    return folders


class _NoResultFiles(logging.Filter):
    """Drops Tune's "Failed to fetch metrics ...: both result.json and progress.csv were not
    found", which only says that its loggers are off (the sweep reads no metrics from Tune)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to fetch metrics")


@contextmanager
def tune_loggers(keep: bool) -> Iterator[None]:
    """Ray Tune's automatic CSV / JSON / TensorBoard loggers only when ``keep``: Tune adds them
    when a Tuner starts unless ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1`` (read by
    ``ray.tune.utils.callback._create_default_callbacks`` in the driver), set here for the fit."""
    name = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    before = os.environ.get(name)
    analysis, quiet = logging.getLogger("ray.tune.analysis.experiment_analysis"), _NoResultFiles()
    if not keep:
        os.environ[name] = "1"
        analysis.addFilter(quiet)
    try:
        yield
    finally:
        analysis.removeFilter(quiet)
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _train_pending(prepared: Prepared, pending: list[dict[str, str]], folders: list[Path],
                   on_checkpoint: CheckpointHook | None, verbose: int) -> None:
    """One Tune run over the pending trainings (``train_all``)."""
    import ray  # lazy: ray only where work is distributed (importing it costs 0.5 s)
    import ray.tune

    if not ray.is_initialized():
        raise RuntimeError("train_all needs a running Ray: call ray.init() (or ray.init('auto') on a cluster) first")
    cfg = prepared.cfg
    atomic_write_text(storage_probe(cfg), "written by the sweep's driver; every training worker checks it sees this file\n")
    trainable = ray.tune.with_parameters(
        _trial, prepared=prepared, hook=on_checkpoint,
    )
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(trainable, DRIVER_RESOURCES),
        param_space={"jobs": ray.tune.grid_search(pack_jobs(cfg, pending, cfg.ray.training_runs))},
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=cfg.ray.max_concurrent_trainings or None),
        run_config=ray.tune.RunConfig(
            name=f"sweep-{run_id(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}",
            storage_path=str(storage_path(cfg)),
            verbose=verbose,
        ),
    )
    with tune_loggers(cfg.tracking.tune_loggers):
        results = tuner.fit()
    # A trial whose actor died before its first report has no config: name it by its error alone.
    failed = [
        f"{','.join(j['category'] + '/' + j['kind'] for j in (r.config or {}).get('jobs', [])) or 'a training run'}: {r.error}"
        for r in results if r.error
    ]
    incomplete = [str(f) for f in folders if not is_complete(f)]
    if failed or incomplete:
        raise RuntimeError("training failed for " + "; ".join(failed or incomplete))
