"""Experiment tracking (``tracking`` section, raydiff.tracking), read back through the backends'
own readers: MLflow's ``MlflowClient`` and TensorBoard's ``EventAccumulator``.

The end-to-end module: one local Ray, the embedded textures (brick and grass, 32 px, 2 + 2 test
images), one tiny ``pixel`` model per category trained in ONE packed Train run (the case where
Tune's automatic logger put six models on one "loss" series), two variants on it. The MLflow sweep
is checked against the run folder's own loss.csv and metrics.csv; the TensorBoard training has a
worker killed after its first checkpoint, so its curves also show that a restarted worker neither
repeats nor skips a step (it resumes from raydiff's model folder: Ray holds no checkpoint).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ("brick", "grass")
VARIANTS = ("no-diffusion", "static-gaussian")


def _loss_rows(folder: Path) -> list[dict[str, float]]:
    with (folder / "loss.csv").open() as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _overrides(root: Path, out: Path, backend: str) -> dict[str, object]:
    return {"dataset.root": str(root), "output.root": str(out), "dataset.image_size": 32,
            "models.train_steps": 4, "models.checkpoint_every": 2, "models.batch_size": 4,
            "variants.enabled": list(VARIANTS), "ray.scoring_batch_size": 2, "ray.training_runs": 1,
            "tracking.backend": backend}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    import ray

    from raydiff import workflow
    from raydiff.config import load_config
    from raydiff.data.textures import make_textures

    base = tmp_path_factory.mktemp("tracking")
    root = make_textures(base / "data", size=32, n_train=10, n_test_good=2, n_test_defect=2, categories=CATEGORIES)
    cfg = load_config(REPO / "configs" / "textures.yaml", _overrides(root, base / "out", "mlflow"))
    # address="local": a Ray of this module's own, even while another one runs on the machine.
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    try:
        result = workflow.sweep(cfg)
        yield SimpleNamespace(cfg=cfg, base=base, root=root, result=result, folder=Path(result["run_dir"]))
    finally:
        ray.shutdown()


def _client(cfg):  # noqa: ANN001, ANN202
    from mlflow.tracking import MlflowClient

    from raydiff.tracking import experiment_name, resolved_uri

    client = MlflowClient(tracking_uri=resolved_uri(cfg))
    return client, client.get_experiment_by_name(experiment_name(cfg)).experiment_id


def _runs(client, experiment: str, kind: str) -> list:  # noqa: ANN001
    return client.search_runs([experiment], f"tags.`raydiff.kind` = '{kind}'", max_results=1000)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.trains
def test_mlflow_holds_each_models_curve_and_each_variants_metrics(run: SimpleNamespace) -> None:
    from raydiff.config import model_id
    from raydiff.paths import model_dir

    from raydiff.tracking import resolved_uri

    cfg = run.cfg
    db = Path(cfg.output.root).resolve() / "mlflow" / "mlflow.db"
    assert resolved_uri(cfg) == f"sqlite:///{db}" and db.is_file()  # the embedded default, under the output root
    client, experiment = _client(cfg)

    # One run per (category, model): its loss history is loss.csv's, step for step.
    models = {r.info.run_name: r for r in _runs(client, experiment, "model")}
    assert sorted(models) == [f"{c}/pixel" for c in CATEGORIES]
    for category in CATEGORIES:
        r = models[f"{category}/pixel"]
        rows = _loss_rows(model_dir(cfg, category, "pixel"))
        for name in ("loss", "loss_vlb", "lr"):
            history = sorted(client.get_metric_history(r.info.run_id, name), key=lambda m: m.step)
            assert [m.step for m in history] == [int(row["step"]) for row in rows] == [1, 2, 3, 4], name
            assert [m.value for m in history] == pytest.approx([row[name] for row in rows], rel=1e-12), name
        assert r.info.status == "FINISHED"
        # Logged by the training worker while it trained (not filled in by the driver afterwards).
        assert r.info.start_time / 1000 < (model_dir(cfg, category, "pixel") / "_SUCCESS").stat().st_mtime
        assert r.data.params["model_id"] == model_id(cfg, "pixel", category)
        assert r.data.params["category"] == category and r.data.params["model.train_steps"] == "4"
        assert r.data.tags["versions.torch"] and r.data.tags["placement.hosts"]  # trained on a Ray worker
        assert r.data.tags["placement.segments"] == "1"
        assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"meta.json", "loss.png"}

    # One run per (category, variant), nested under the run id's run: metrics.csv's numbers.
    parents = _runs(client, experiment, "run")
    assert [p.info.run_name for p in parents] == [f"run {run.folder.name}"]
    variants = {r.info.run_name: r for r in _runs(client, experiment, "variant")}
    table = pl.read_csv(run.folder / "metrics.csv")
    assert sorted(variants) == sorted(f"{c}/{v}" for c, v in zip(table["category"], table["variant"], strict=True))
    assert table.height == len(CATEGORIES) * len(VARIANTS)
    for row in table.iter_rows(named=True):
        r = variants[f"{row['category']}/{row['variant']}"]
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        for column in ("i_auroc", "p_auroc", "p_ap", "aupro", "unet_forwards_per_image", "seconds_per_image"):
            assert r.data.metrics[column] == pytest.approx(row[column], rel=1e-12), column
        assert r.data.params["method"] == cfg.variants.instances[row["variant"]].method
    files = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert files >= {"report.html", "report", "metrics.csv", "metrics_by_defect.csv", "config.yaml"}
    assert {a.path.split("/")[-1] for a in client.list_artifacts(parents[0].info.run_id, "report")} == {
        p.name for p in (run.folder / "report").iterdir()}

    # A second `metrics` updates the same runs (no duplicates).
    from raydiff.workflow import evaluate

    evaluate(cfg)
    assert len(_runs(client, experiment, "variant")) == table.height and len(_runs(client, experiment, "run")) == 1


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.trains
def test_checkpoints_written_once_and_tune_loggers_off(run: SimpleNamespace) -> None:
    results = Path(run.cfg.output.root) / "ray_results"
    assert results.is_dir()
    assert not list(results.rglob("checkpoint_*")), "Ray kept a second copy of a checkpoint"
    auto = [p for p in results.rglob("*") if p.name in ("progress.csv", "result.json")
            or p.name.startswith("events.out.tfevents")]
    assert not auto, f"Tune's automatic loggers wrote {auto[:3]}"


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.trains
def test_tensorboard_one_series_per_model_across_a_worker_restart(run: SimpleNamespace, tmp_path: Path) -> None:
    """A packed Train run (both categories in one worker) with TensorBoard; the worker fails once
    right after its first checkpoint and resumes from the model folder."""
    from faults import fail_once_after_checkpoint
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from raydiff.config import load_config
    from raydiff.paths import model_dir
    from raydiff.tracking import TensorBoardTracker, log_metrics, model_ref
    from raydiff.train.launch import train_all
    from raydiff.workflow import prepare

    cfg = load_config(REPO / "configs" / "textures.yaml", _overrides(run.root, tmp_path / "out", "tensorboard"))
    prepared = prepare(cfg)
    flag = tmp_path / "failed-once"
    train_all(prepared, list(CATEGORIES), ["pixel"], on_checkpoint=fail_once_after_checkpoint(flag))
    assert flag.is_file()
    board = TensorBoardTracker(tmp_path / "out" / "tensorboard")
    for category in CATEGORIES:
        folder = model_dir(cfg, category, "pixel")
        rows = _loss_rows(folder)
        events = EventAccumulator(str(board.model_dir(model_ref(cfg, category, "pixel"))), size_guidance={"scalars": 0})
        events.Reload()
        assert sorted(events.Tags()["scalars"]) == ["loss", "loss_vlb", "lr"]
        loss = events.Scalars("loss")
        assert [e.step for e in loss] == [1, 2, 3, 4]  # once each, across the restart
        assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)  # float32 on disk
        assert "config/text_summary" in events.Tags()["tensors"]
        # Written by the training workers while they trained (the failed one's restart: 2 files).
        files = sorted(board.model_dir(model_ref(cfg, category, "pixel")).glob("events.out.tfevents.*"))
        assert min(int(f.name.split(".")[3]) for f in files) < (folder / "_SUCCESS").stat().st_mtime
    starts = sorted(len(json.loads((model_dir(cfg, c, "pixel") / "meta.json").read_text())["segments"])
                    for c in CATEGORIES)
    assert starts == [1, 2]  # the failed model resumed (from its folder), the other trained once

    # The metrics of a (category, variant): scalars in their own folder, replaced on a second call.
    table = pl.read_csv(run.folder / "metrics.csv")
    for _ in range(2):
        log_metrics(cfg, table, [run.folder / "metrics.csv"])
    for row in table.iter_rows(named=True):
        events = EventAccumulator(str(board.run_dir(run.folder.name) / row["category"] / row["variant"]))
        events.Reload()
        for column in ("i_auroc", "p_auroc", "p_ap", "aupro"):
            (point,) = events.Scalars(f"metrics/{column}")
            assert point.step == 0 and point.value == pytest.approx(row[column], rel=1e-6)


def test_a_missing_tracking_package_is_one_line_naming_the_extra(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from raydiff.config import config_from_dict
    from raydiff.errors import ConfigError
    from raydiff.tracking import open_tracker

    for name in ("mlflow", "mlflow.tracking"):  # `from mlflow.tracking import ...` raises ImportError
        monkeypatch.setitem(sys.modules, name, None)
    cfg = config_from_dict({"output": {"root": str(tmp_path)}, "tracking": {"backend": "mlflow"}})
    with pytest.raises(ConfigError, match=r"pip install 'raydiff\[tracking\]'"):
        open_tracker(cfg)
    assert open_tracker(config_from_dict({"output": {"root": str(tmp_path)}})) is None  # off: nothing imported


def test_tune_loggers_are_off_for_the_fit_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from raydiff.train.launch import tune_loggers

    name = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    monkeypatch.delenv(name, raising=False)
    with tune_loggers(keep=False):
        assert os.environ[name] == "1"
    assert name not in os.environ
    with tune_loggers(keep=True):
        assert name not in os.environ


def test_tracking_is_no_part_of_any_id() -> None:
    from raydiff.config import config_from_dict, model_id, run_id

    plain = config_from_dict({})
    tracked = config_from_dict({"tracking": {"backend": "tensorboard", "uri": "/tmp/tb", "tune_loggers": True}})
    assert run_id(plain) == run_id(tracked) and model_id(plain, "pixel", "a") == model_id(tracked, "pixel", "a")


def test_tracking_uri_expands_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tracking.uri`` is read like the other locations: ``${VAR}``, ``${VAR:-default}`` and ``~``;
    a URI keeps its ``//``; an unset variable without a default is one error naming it."""
    from raydiff.config import load_config
    from raydiff.errors import ConfigError

    monkeypatch.setenv("TRACK_HOST", "tracker.example:5000")
    monkeypatch.setenv("TB_DIR", str(tmp_path / "tb"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tracking: {backend: mlflow, uri: 'http://${TRACK_HOST}'}\n")
    assert load_config(cfg).tracking.uri == "http://tracker.example:5000"
    cfg.write_text("tracking: {backend: mlflow, uri: 'sqlite:///${DB_DIR:-/var/db}/mlflow.db'}\n")
    assert load_config(cfg).tracking.uri == "sqlite:////var/db/mlflow.db"
    cfg.write_text("tracking: {backend: tensorboard, uri: '${TB_DIR}/runs'}\n")
    assert load_config(cfg).tracking.uri == str(tmp_path / "tb" / "runs")
    cfg.write_text("tracking: {backend: tensorboard, uri: '${NOT_SET_ANYWHERE}/runs'}\n")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        load_config(cfg)
