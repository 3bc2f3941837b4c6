"""Library entry points behind the CLI and jobs/: each does one whole step for a config.

Every step starts from :func:`prepare`: the dataset scanned and checked once, its held-out
images marked and each category's channel count read (a :class:`Prepared`). The sweep runs one
chain per category, train → fit → score, and every chain at once (``raydiff.chains``):

- the main thread runs every pending training (one Tune run, ``raydiff.train.launch``); each
  Train run asks for the resources the config names, so an autoscaler sees the whole demand;
- one thread per category waits until that category's models are complete, then fits it (a Ray
  task) and scores it (its own Ray Data pipeline, ``raydiff.pipeline``), while other categories
  still train or score. Ray's scheduler shares the GPUs between all of them.

The run folder keeps the manifest the run scored (``manifest.parquet``), so that metrics, the
report and ``raydiff inspect`` need not scan the dataset again. Nothing here prints: progress goes
to a callback, and ``sweep`` returns its tables.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from raydiff.chains import ChainStages, run_chains
from raydiff.config import DEFAULT_CONFIG, Config, check_overrides, config_to_dict, default_textures_root, load_config
from raydiff.data.images import load_image
from raydiff.data.manifest import detect_layout, scan_config
from raydiff.data.prepared import Prepared, categories_of
from raydiff.data.splits import assign_holdout, capped_holdouts
from raydiff.data.textures import make_textures
from raydiff.data.validate import ValidationSummary, check_training_split, validate_dataset
from raydiff.errors import CheckpointError, DatasetError, OutputError, user_error_in
from raydiff.io import atomic_write_text, is_complete
from raydiff.models.checkpoint import META, expected_meta, load_model
from raydiff.models.presets import check_model_sizes
from raydiff.paths import fitted_dir, model_dir, run_dir
from raydiff.pipeline import score_category
from raydiff.placement import (
    check_requests,
    gpus_for,
    launcher_node_types,
    parse_utc,
    stage_summary,
    utc_now,
    where_ran,
    worker_device,
    worker_line,
)
from raydiff.report import write_report
from raydiff.report_tables import metrics_table, with_provenance, with_shared_passes
from raydiff.runs import (
    TABLES,
    output_lock,
    passes_of,
    pending_variants,
    read_manifest,
    require_visible,
    run_probe,
    scan_images,
    scan_pixels,
    write_manifest,
    write_parquet_atomic,
    write_run_metadata,
)
from raydiff.scoring.fit import fit_category
from raydiff.tracking import log_metrics, log_report
from raydiff.train.launch import train_all

# `ray` itself is imported inside the functions that start or use it: `raydiff validate`, an
# in-process `raydiff fit` and the report never need it (0.5 s, and a Ray session's side effects).

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# The dataset, scanned and checked once
# --------------------------------------------------------------------------------------------


def _scan_and_check(cfg: Config, root: Path | None = None, kind: str | None = None) -> tuple[pl.DataFrame, ValidationSummary]:
    """The checks ``validate`` and ``prepare`` share: model sizes, per-category overrides, every
    file, the training / hold-out split. Returns the manifest with its hold-out marked."""
    check_model_sizes(cfg)
    manifest = scan_config(cfg, root, kind)
    _check_overrides_apply(cfg, manifest)
    kind = kind or cfg.dataset.layout
    base = Path(root or cfg.dataset.root)
    ds = cfg.dataset
    summary = validate_dataset(manifest, base, kind=kind, channels=ds.channels, image_size=ds.image_size)
    warn_capped_holdouts(cfg, manifest)
    marked = assign_holdout(manifest, ds.holdout_fraction, ds.holdout_min, cfg.seed)
    check_training_split(marked, base, kind, holdout=ds.holdout_fraction > 0)
    return marked, summary


def validate_dataset_for(cfg: Config, root: Path | None = None, kind: str | None = None) -> ValidationSummary:
    """Scan and validate the dataset a config names (or ``root`` with layout ``kind``, default:
    detected from the folder), with every check the pipeline would fail later: model sizes,
    the training / hold-out split, the configured channel mode."""
    if root is not None and kind is None:
        kind = detect_layout(Path(root))
    return _scan_and_check(cfg, root, kind)[1]


def prepare(cfg: Config) -> Prepared:
    """Check the output folder, scan + validate the dataset, mark the held-out normal images."""
    check_output_persistent(cfg)
    check_output_outside_dataset(cfg)
    manifest, summary = _scan_and_check(cfg)
    return Prepared(cfg, manifest, dict(summary.channels), summary)


def warn_capped_holdouts(cfg: Config, manifest: pl.DataFrame) -> None:
    """Warn, once per config, where ``dataset.holdout_min`` leaves a single training image."""
    capped = capped_holdouts(manifest, cfg.dataset.holdout_fraction, cfg.dataset.holdout_min)
    if capped:
        shown = ", ".join(f"{c} ({k} of {n})" for c, n, k in capped[:6]) + (" …" if len(capped) > 6 else "")
        warnings.warn(
            f"dataset.holdout_min {cfg.dataset.holdout_min} asks for as many held-out images as category "
            f"{capped[0][0]} has training images: held out {shown}, so its models train on one image. Fix: "
            f"lower dataset.holdout_min (or holdout_fraction), or add train/good images.", stacklevel=2)


def _check_overrides_apply(cfg: Config, manifest: pl.DataFrame) -> None:
    """A ``per_category`` override naming none of the categories found is an error (it would
    silently never apply); with ``dataset.categories`` listed the loader already checked it."""
    if not cfg.dataset.categories:
        found = tuple(sorted(manifest["category"].unique().to_list()))
        check_overrides(cfg.variants, cfg.groups, found, f"{cfg.source or 'config'} (categories found in {cfg.dataset.root})")


def demo_config(output_root: Path | None = None, seed: int | None = None) -> Config:
    """The embedded default benchmark's config (configs/textures.yaml), its textures written
    with the config's ``textures`` settings; ``seed`` (default: the config's) draws the images,
    their defects and the models' initialisation and noise alike."""
    overrides: dict[str, Any] = {"output.root": str(output_root)} if output_root else {}
    if seed is not None:
        overrides["seed"] = seed
    cfg = load_config(DEFAULT_CONFIG, overrides)
    write_textures(cfg, Path(cfg.dataset.root))
    return cfg


def write_embedded_data(cfg: Config, progress: Progress | None = None) -> Path | None:
    """The default config's textures, written when missing (the bytes ``raydiff demo`` writes
    for the config's seed), so that a sweep of the default config needs no ``make demo`` first.
    Only the default location (``OUTPUT_ROOT/data/textures``) is filled: a dataset root given by
    ``--dataset-root`` or ``$RAYDIFF_TEXTURES`` is the user's and stays as it is. Returns the
    folder written, else None."""
    root = Path(cfg.dataset.root)
    if (cfg.source is None or Path(cfg.source) != DEFAULT_CONFIG.resolve()
            or root != default_textures_root(cfg.output.root, cfg.seed) or is_complete(root)):
        return None
    (progress or _quiet)(f"[data] texture benchmark -> {root}")
    # The file's own textures and image size, whatever --set changed: the data `raydiff demo` draws.
    return write_textures(load_config(DEFAULT_CONFIG, {"seed": cfg.seed, "dataset.root": str(root)}), root)


def write_textures(cfg: Config, out: Path, size: int | None = None, seed: int | None = None) -> Path:
    """Write the texture benchmark to ``out`` as ``cfg`` draws it: its ``textures`` section, and
    its image size and seed unless ``size`` / ``seed`` are given."""
    # TexturesConfig's fields are make_textures' keyword arguments (tests/test_textures_visibility.py).
    return make_textures(out, size=cfg.dataset.image_size if size is None else size,
                         seed=cfg.seed if seed is None else seed, **config_to_dict(cfg.textures))


# --------------------------------------------------------------------------------------------
# The sweep: prepare → train → fit → score → metrics (→ report)
# --------------------------------------------------------------------------------------------


def job_working_dir() -> Path | None:
    """The working directory when this process is a ``ray job submit --working-dir`` entrypoint:
    Ray unpacks the job's files into a per-job folder under ``runtime_resources`` and deletes it
    with the job. None otherwise."""
    try:  # what Ray's job supervisor hands its entrypoint (ray.dashboard.modules.job.job_supervisor)
        runtime_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env") or {}
    except (ValueError, AttributeError):
        runtime_env = {}
    cwd = Path.cwd()
    return cwd if runtime_env.get("working_dir") or "runtime_resources" in cwd.parts else None


def check_output_persistent(cfg: Config) -> None:
    """A relative output root inside a Ray job's temporary working dir would vanish with the job:
    OutputError saying what to pass instead."""
    job_dir = job_working_dir()
    if job_dir is not None and not Path(cfg.output.root).expanduser().is_absolute():
        raise OutputError(cfg.output.root, f"a relative output root, and this Ray job runs in Ray's per-job working "
                          f"dir {job_dir}, deleted when the job ends (with every result in it).",
                          "pass --output /an/absolute/path that outlives the job (shared storage on a cluster), "
                          "e.g. --output /mnt/shared/raydiff-out.")


def check_output_outside_dataset(cfg: Config) -> None:
    """The output root may not be the dataset root or lie inside it: a later scan would read the
    run's own files (fitted states, reports) as category folders."""
    out, data = Path(cfg.output.root).expanduser().resolve(), Path(cfg.dataset.root).expanduser().resolve()
    if out.is_relative_to(data):
        raise OutputError(out, f"the output root is inside the dataset root {data}.",
                          "pick an --output outside the dataset folder (e.g. its sibling raydiff-out/).")


def require_trained(cfg: Config, category: str) -> None:
    """CheckpointError naming the first model or fitted state of ``category`` that is missing,
    before any Ray is started (scoring needs both)."""
    for name in cfg.models_needed():
        if not is_complete(model_dir(cfg, category, name)):
            raise CheckpointError(model_dir(cfg, category, name), f"model '{name}' of category {category} is not trained.",
                                  f"run `raydiff train --category {category}` and `raydiff fit --category {category}` "
                                  "with this config first (or `raydiff sweep`).")
    if not is_complete(fitted_dir(cfg, category)):
        raise CheckpointError(fitted_dir(cfg, category), f"category {category} is not fitted.",
                              f"run `raydiff fit --category {category}` with this config first.")


def init_ray(cfg: Config, progress: Progress | None = None) -> bool:
    """Connect to the configured cluster or start a local Ray (dashboard on 127.0.0.1).

    - Inside ``ray job submit`` (``RAY_ADDRESS`` is set) or with ``ray.address`` configured:
      a plain connect; the job's runtime environment (``--working-dir``) applies as submitted.
      ``ray.address: local`` always starts a Ray of this process's own.
    - Otherwise a local Ray with its dashboard on ``ray.dashboard_host``; when a local Ray that
      another user or tool started is running, Ray joins it: ``progress`` is told its address
      before any work starts. The dashboard is not optional: Ray Train frees a finished run's
      placement group through a cleaner that asks the dashboard's State API, and without it the
      next runs wait for CPUs forever.

    Returns True when this call started (or joined) Ray (the caller then shuts the connection down).
    """
    import ray

    say = progress or _quiet
    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        say(f"[ray] joining the cluster at {address}")
        ray.init(address=cfg.ray.address or None, log_to_driver=True)
        _checked(cfg, launched=True)  # a launched cluster grows by its node types: checked against them
        return True
    running = None if address == "local" else running_local_ray()
    if running is not None:
        say(f"[ray] joining the Ray already running on this machine at {running} (set ray.address: local "
            "to start one of your own)")
        ray.init(address=running, log_to_driver=True)
        return True
    env = {"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}}
    ray.init(address="local" if address == "local" else None, include_dashboard=True,
             dashboard_host=cfg.ray.dashboard_host, runtime_env=env, log_to_driver=True)
    _checked(cfg, launched=False)  # the Ray started here cannot grow: fail now, not after Ray's retries
    return True


def _checked(cfg: Config, launched: bool) -> None:
    """``check_cluster_fits``, disconnecting from Ray when it fails."""
    import ray

    try:
        check_cluster_fits(cfg, launched)
    except BaseException:
        ray.shutdown()
        raise


@contextmanager
def ray_session(cfg: Config, progress: Progress | None = None) -> Iterator[bool]:
    """``init_ray`` for the length of a ``with`` block, shut down after it when this call started
    (or joined) Ray; a Ray already initialised in this process is left running. Yields whether
    this call started it. Every entry point that needs Ray goes through here."""
    started = init_ray(cfg, progress)
    try:
        yield started
    finally:
        if started:
            import ray

            ray.shutdown()


def running_local_ray() -> str | None:
    """The address of a Ray that is running on this machine (started by ``ray start``, another
    user or tool), which a plain ``ray.init()`` would join; None when there is none."""
    from ray._private import services

    try:  # what ray.init() does without an address: the cluster `ray start` recorded, if alive
        return services.canonicalize_bootstrap_address(None)
    except Exception:  # a stale record, or a Ray layout change: start our own
        return None


def check_cluster_fits(cfg: Config, launched: bool = False) -> None:
    """Refuse a request no node can ever meet, naming the config key
    (``raydiff.placement.check_requests``): on a Ray that cannot grow (one this process started),
    against its nodes; on a joined cluster (``launched``), against its nodes and the node types
    of its launcher's bootstrap config, and not at all without one (an autoscaler whose node
    types cannot be read may add any node)."""
    import ray

    node_types = launcher_node_types() if launched else None
    if launched and node_types is None:
        return
    check_requests(cfg, [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")], node_types)


def load_images(cfg: Config, rows: pl.DataFrame, channels: int) -> Any:
    """Images of manifest rows as one tensor (N,C,H,W) in [-1, 1] (datasets are small)."""
    size = cfg.dataset.image_size
    if rows.height == 0:
        return torch.zeros((0, channels, size, size))
    arrays = [load_image(p, size, channels, cfg.dataset.resize) for p in rows["image_path"]]  # type: ignore[arg-type]
    return torch.from_numpy(np.stack(arrays))


def fit_one(prepared: Prepared, category: str, device: str | None = None, progress: Progress | None = None) -> Path:
    """Fit the KNN prior and normalisation statistics of one category (skipped when complete).

    ``device``: what torch computes on (default: the config's ``ray.device``, checked).
    ``progress``: told the images done / total of each pass over the held-out images, with an ETA.
    """
    cfg = prepared.cfg
    folder = fitted_dir(cfg, category)
    if is_complete(folder):
        return folder
    dev = torch.device(device or worker_device(cfg))
    channels = prepared.channels_of(category)
    models = {k: load_model(model_dir(cfg, category, k), dev, expect=expected_meta(cfg, k, category),
                            vae_path=cfg.models.spec(k).vae.vae_path)
              for k in cfg.models_needed()}
    train = prepared.rows(category, "train")
    holdout = prepared.rows(category, "holdout")
    if cfg.dataset.holdout_fraction == 0:  # nothing held out: the statistics come from the training images
        holdout = train
    if holdout.height == 0:
        raise DatasetError(
            Path(cfg.dataset.root) / category,
            "no held-out normal images for the normalisation statistics.",
            "raise dataset.holdout_fraction / holdout_min, or add train/good images.",
        )
    state = fit_category(
        cfg,
        category,
        models,
        load_images(cfg, train, channels),
        load_images(cfg, holdout, channels),
        holdout["image_id"].to_list(),
        list(cfg.variants.enabled),
        device=dev,
        batch_size=cfg.ray.scoring_batch_size,
        progress=None if progress is None else (lambda line: progress(f"[fit] {line}")),
    )
    try:
        state.save(folder)  # atomic: nothing partial becomes visible
    except OSError as err:
        raise OutputError(folder, f"cannot write the fitted state ({err.strerror or err}).",
                          "free space (or fix permissions) under the output root and re-run `raydiff fit`.") from None
    return folder


def fit_task(prepared: Prepared, category: str) -> dict[str, Any]:
    """``fit_one`` as a Ray task body: checks the worker, returns where it ran ({} if already fitted)."""
    cfg = prepared.cfg
    if is_complete(fitted_dir(cfg, category)):
        return {}
    require_visible(run_probe(cfg), f"the fit task on {socket.gethostname()}")
    started, device = utc_now(), worker_device(cfg)
    fit_one(prepared, category, device, progress=worker_line)  # the driver's console shows it
    return where_ran(device, started)


def _ray_fit(cfg: Config) -> Any:
    import ray

    return ray.remote(fit_task).options(
        num_cpus=1, num_gpus=gpus_for(cfg, cfg.ray.gpus_per_scoring_actor), max_retries=2
    )


def _get(ray: Any, refs: Any) -> Any:
    """``ray.get`` that raises a worker's RaydiffError as itself (one line, not a traceback)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        cause = user_error_in(err)
        if cause is not None:
            raise cause from None
        raise


def check_storage(cfg: Config) -> int:
    """Every live node must see the run folder the driver just wrote (``config.yaml``); nodes an
    autoscaler adds later check it when their first worker starts. Returns the nodes checked."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(require_visible)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(run_probe(cfg), f"Ray node {n}")
        for n in nodes
    ]
    _get(ray, refs)
    return len(nodes)


def expected_categories(cfg: Config, folder: Path) -> list[str]:
    """The categories a run folder should have scores for: the config's list; else those of the
    manifest the runs of the folder recorded; else the dataset's category folders when the
    dataset is there; else every category some partition names."""
    if cfg.dataset.categories:
        return list(cfg.dataset.categories)
    recorded = read_manifest(folder)
    if recorded is not None:
        return categories_of(recorded)
    if Path(cfg.dataset.root).is_dir():
        try:
            return categories_of(scan_config(cfg))
        except DatasetError:
            pass
    name = cfg.dataset.dataset_name
    found = {p.name.removeprefix("category=") for t in TABLES for p in (folder / t / f"dataset={name}").glob("category=*")}
    return sorted(found)


def missing_scores(cfg: Config, categories: list[str]) -> list[str]:
    """``category/variant`` pairs of the config whose pixel or image partition is not complete."""
    return [f"{c}/{v}" for c in categories for v in pending_variants(cfg, c, list(cfg.variants.enabled))]


def evaluate(cfg: Config, categories: list[str] | None = None,
             allow_incomplete: bool = False) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Exact metrics of the run folder, with the cost columns → metrics.parquet / metrics.csv
    (+ per defect type). The report reuses these tables instead of writing them again.

    Every (category, variant) the config names must have complete scores (``categories``:
    default ``expected_categories``); otherwise ``OutputError`` lists the missing ones, unless
    ``allow_incomplete`` (then they are left out and returned). With ``tracking`` on, the rows
    and the run's files are logged too (``raydiff.tracking.log_metrics``).

    Returns (per category × variant, per category × variant × defect type, missing pairs).
    """
    folder = run_dir(cfg)
    missing = missing_scores(cfg, categories if categories is not None else expected_categories(cfg, folder))
    if missing and not allow_incomplete:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        raise OutputError(
            folder,
            f"scores are missing or incomplete for {len(missing)} (category, variant) pair(s): {shown}.",
            "finish them with `raydiff sweep` (complete parts are kept), or pass --allow-incomplete "
            "to compute metrics of the complete ones only.",
        )
    pixels, images = scan_pixels(folder), scan_images(folder)
    passes = passes_of(folder)
    table = with_shared_passes(with_provenance(metrics_table(pixels, images), cfg), passes)
    by_defect = with_shared_passes(metrics_table(pixels, images, by_defect=True), passes)
    for name, df in (("metrics", table), ("metrics_by_defect", by_defect)):
        write_parquet_atomic(df.to_arrow(), folder / f"{name}.parquet")
        atomic_write_text(folder / f"{name}.csv", df.write_csv())
    files = ("config.yaml", "versions.json", "metrics.csv", "metrics_by_defect.csv")
    log_metrics(cfg, table, [folder / name for name in files])
    return table, by_defect, missing


def _models_ready(cfg: Config, category: str) -> bool:
    return all(is_complete(model_dir(cfg, category, k)) for k in cfg.models_needed())


def training_records(cfg: Config, categories: list[str], since: str) -> list[dict[str, Any]]:
    """Placement records of the training segments that started at or after ``since`` (ISO UTC)."""
    out = []
    for c in categories:
        for k in cfg.models_needed():
            try:
                meta = json.loads((model_dir(cfg, c, k) / META).read_text())
            except (OSError, ValueError):
                continue
            out.extend(seg for seg in meta.get("segments", []) if seg.get("started")
                       and seg.get("ended") and parse_utc(seg["started"]) >= parse_utc(since))
    return out


def run_sweep_chains(prepared: Prepared, limit: int | None = None, progress: Progress = _quiet,
                     bars: bool = True) -> dict[str, Any]:
    """Train, fit and score every category, each category's chain starting as soon as it can
    (``raydiff.chains``). Needs a running Ray.

    Returns ``{"scoring": [summary per category], "placement": {stage: [records]}}``.
    """
    import ray

    cfg, categories = prepared.cfg, prepared.categories
    since = utc_now()
    fit = _ray_fit(cfg)

    def train() -> None:
        t0 = time.perf_counter()
        train_all(prepared, categories, list(cfg.models_needed()))
        progress(f"[train] done in {time.perf_counter() - t0:.0f} s")

    def fit_category(category: str) -> dict[str, Any]:
        rows = prepared.rows(category, "train", "holdout")
        t0 = time.perf_counter()
        progress(f"[fit] {category}: {rows.height} normal images (training + held out), "
                 f"{len(cfg.variants.enabled)} variants")
        record = _get(ray, fit.remote(prepared, category))
        progress(f"[fit] {category}: " + (f"done in {time.perf_counter() - t0:.0f} s" if record else "already fitted"))
        return record

    def score(category: str) -> dict[str, Any]:
        s = score_category(prepared, category, limit=limit, progress=bars, say=progress)
        if s["images"]:
            progress(f"[score] {category}: {s['images']} images, {len(s['written'])} variants, "
                     f"{s['seconds']:.1f} s, {s['images_per_s']:.2f} images/s")
        else:
            progress(f"[score] {category}: all {len(s['skipped'])} variants already complete, skipped")
        return s

    kinds = cfg.models_needed()
    progress(f"[train] {len(categories)} categories x {len(kinds)} models ({', '.join(kinds)}); "
             "each category is fitted and scored as soon as its models exist")
    stages = ChainStages(
        train=train,
        ready=lambda c: _models_ready(cfg, c),
        fit=fit_category,
        score=score,
    )
    out = run_chains(categories, stages)
    placement = {
        "train": training_records(cfg, categories, since),
        "fit": out["fits"],
        "score": [r for s in out["scoring"] for r in s["placement"]],
    }
    return {"scoring": out["scoring"], "placement": placement}


#: Test images per category a ``--smoke-test`` scores (unless ``limit`` says otherwise).
SMOKE_LIMIT = 4


def sweep(cfg: Config, limit: int | None = None, report: bool = True, overwrite: bool = False,
          progress: Progress = _quiet, bars: bool = True, smoke_test: bool = False) -> dict[str, Any]:
    """Everything for a config on the current (or a local) Ray: train → fit → score → metrics → report.

    The default config's textures are written first when missing (``write_embedded_data``).
    ``smoke_test``: the config was loaded with ``--smoke-test``'s budget; the sweep then scores
    ``SMOKE_LIMIT`` test images (unless ``limit``) of the first category (unless the config
    lists its categories). Idempotent: finished trainings, fitted states and (category, variant)
    partitions are skipped. Returns paths, per-category scoring summaries, per-stage placement
    (tasks, nodes, GPUs, GPU busy fraction) and ``tables`` (the metrics DataFrame) for the
    caller to show.
    """
    start = time.perf_counter()
    check_output_persistent(cfg)  # before anything is written into a folder that would vanish
    write_embedded_data(cfg, progress)
    if smoke_test:
        limit = limit or SMOKE_LIMIT
        if not cfg.dataset.categories:
            cfg = replace(cfg, dataset=replace(cfg.dataset, categories=tuple(categories_of(scan_config(cfg))[:1])))
    prepared = prepare(cfg)
    with output_lock(cfg):
        return _locked_sweep(prepared, start, limit, report, overwrite, progress, bars)


def _locked_sweep(prepared: Prepared, start: float, limit: int | None, report: bool, overwrite: bool,
                  progress: Progress, bars: bool) -> dict[str, Any]:
    cfg, categories = prepared.cfg, prepared.categories
    folder = write_run_metadata(cfg, overwrite=overwrite, progress=progress, categories=categories)
    write_manifest(folder, prepared.manifest)
    with ray_session(cfg, progress):
        nodes = check_storage(cfg)
        progress(f"[storage] run folder {folder} visible from {nodes} node(s)")
        t0 = time.perf_counter()
        chains = run_sweep_chains(prepared, limit=limit, progress=progress, bars=bars)
        t1 = time.perf_counter()
    metrics, by_defect, _ = evaluate(cfg, categories)
    result: dict[str, Any] = {
        "run_dir": str(folder),
        "categories": categories,
        "scoring": chains["scoring"],
        "stages": {stage: stage_summary(records) for stage, records in chains["placement"].items()},
        "metrics": str(folder / "metrics.csv"),
        "seconds": round(time.perf_counter() - start, 1),
        "chains_seconds": round(t1 - t0, 1),
        "tables": {"metrics": metrics},
    }
    if report:
        result["report"] = str(write_report(folder, metrics=metrics, by_defect=by_defect))
        log_report(cfg, [Path(result["report"]), folder / "report"])  # report.html and its figures
    return result


def describe_stages(stages: dict[str, dict[str, Any]]) -> list[str]:
    """One line per stage: tasks, nodes, GPUs and their busy fraction."""
    lines = []
    for stage, s in stages.items():
        busy = "n/a" if s["gpu_busy_fraction"] is None else f"{100 * s['gpu_busy_fraction']:.0f} %"
        lines.append(f"{stage:>5}: {s['tasks']} tasks on {s['nodes']} node(s), {s['gpus']} GPU(s), "
                     f"{s['seconds']:.0f} s wall, GPUs busy {busy}")
    return lines
