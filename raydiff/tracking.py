"""Experiment tracking: each model's loss curve and each (category, variant)'s metrics, sent to
MLflow or TensorBoard as the config's ``tracking`` section says (docs/usage.md, "Tracking").

What goes where (MLflow: one experiment, ``tracking.experiment``; TensorBoard: folders under
``tracking.uri``, each a TensorBoard "run"):

- a model (category, model name): MLflow run ``<category>/<model>`` (tag ``raydiff.model_key`` =
  model id/dataset/category/model) / folder ``models/<model_id>/<dataset>/<category>/<model>``;
  one series per model, never mixed. Its loss curve: metrics (scalars) ``loss``, ``loss_vlb``,
  ``lr`` at every step of its loss.csv. Its config: params (the model's settings, the dataset
  settings in its id, seed, model id) / text ``config``; versions and placement: tags
  ``versions.*``, ``placement.*`` and artefacts meta.json, loss.png / text ``versions``,
  ``placement``.
- a run (run id): MLflow run ``run <run_id>`` with artefacts config.yaml, versions.json,
  metrics*.csv, report.html + report/ / folder ``runs/<run_id>`` with a text naming them.
- a (category, variant): MLflow run ``<category>/<variant>`` nested under it, metrics.csv's numeric
  columns (the four metrics and the cost) as metrics and its text columns as tags / folder
  ``runs/<run_id>/<category>/<variant>`` with scalars ``metrics/<column>`` at step 0.

Who logs what: a model's curve comes from its training worker (``raydiff.train.launch``: the
TorchTrainer's only worker, rank 0) after every checkpoint, from the rows of ``loss.csv`` that the
backend does not hold yet (it is asked once per process, so a restarted worker neither repeats
nor skips a step); the driver logs the metrics after ``metrics`` and the report after it is
written, and fills in models trained while tracking was off. MLflow through its client API
(``MlflowClient``), not Ray's ``setup_mlflow`` or ``MLflowLoggerCallback``: ``setup_mlflow`` opens
one active run per Train worker through MLflow's process-global fluent API, and a packed worker
trains several models that each need their own run; the Tune callback logs what trials report
(one point per checkpoint, one run per trial: the mixed series these runs replace).

MLflow's embedded default is SQLite under the output root: MLflow 3 refuses its file store
(``./mlruns``) unless ``MLFLOW_ALLOW_FILE_STORE`` is set and will not develop it further. The
driver creates the database and the experiment before any worker starts (two workers creating
one SQLite schema at once would collide). On a cluster, every node must reach ``tracking.uri``:
the output root is shared storage, but SQLite over NFS locks badly, so point it at an MLflow
server there. mlflow and tensorboard are imported only when a backend asks for them.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from raydiff.config import Config, config_to_dict, model_id, run_id
from raydiff.errors import ConfigError, OutputError

INSTALL = "pip install 'raydiff[tracking]'"
#: Columns of a loss row that are not logged as metrics (the step is the x axis, seconds the time).
NOT_METRICS = ("step", "seconds")
#: Columns of metrics.csv that name a row (the rest are its metrics and cost, or text tags).
RESULT_KEYS = ("dataset", "category", "variant")


@dataclass(frozen=True)
class ModelRef:
    """One trained model: what names its tracking run (the model id already covers the config)."""

    dataset: str
    category: str
    model: str
    model_id: str

    @property
    def key(self) -> str:
        return f"{self.model_id}/{self.dataset}/{self.category}/{self.model}"

    @property
    def name(self) -> str:
        return f"{self.category}/{self.model}"


def model_ref(cfg: Config, category: str, model: str) -> ModelRef:
    return ModelRef(cfg.dataset.dataset_name, category, model, model_id(cfg, model, category))


def model_params(cfg: Config, category: str, model: str) -> dict[str, str]:
    """A model's config as flat string params: its spec, the dataset settings its id covers (not
    the root or the category list), seed and ids."""
    dataset = {k: v for k, v in config_to_dict(cfg.dataset).items() if k not in ("root", "categories")}
    flat = _flatten({"model": config_to_dict(cfg.models.spec(model)), "dataset": dataset})
    return {"model_id": model_id(cfg, model, category), "category": category, "model": model,
            "seed": str(cfg.seed), **flat}


def finished_tags(meta: Mapping[str, Any]) -> dict[str, str]:
    """Tags of a finished model from its meta.json: package versions and where it trained."""
    segments = list(meta.get("segments", []))

    def joined(key: str) -> str:
        values = {str(v) for s in segments for v in (s.get(key) if isinstance(s.get(key), list) else [s.get(key)])
                  if v not in (None, "")}
        return ",".join(sorted(values))

    tags = {f"versions.{k}": str(v) for k, v in meta.get("versions", {}).items()}
    tags.update({"placement.segments": str(len(segments)), "placement.hosts": joined("host"),
                 "placement.node_ids": joined("node_id"), "placement.devices": joined("device"),
                 "placement.gpu_ids": joined("gpu_ids"), "steps": str(meta.get("step", ""))})
    return tags


class Tracker(Protocol):
    def log_model(self, ref: ModelRef, rows: Sequence[Mapping[str, float]], params: Mapping[str, str],
                  finished: Path | None = None) -> int:
        """Log the rows past the last step the backend holds (first call: it is asked); with
        ``finished`` (the model's folder, complete) also its meta.json and mark it finished.
        Returns the number of rows logged."""

    def model_finished(self, ref: ModelRef) -> bool:
        """Whether the backend holds the model's whole curve and its finished marks."""

    def log_results(self, run: str, rows: Sequence[Mapping[str, Any]], params: Mapping[str, Mapping[str, str]],
                    run_params: Mapping[str, str], artefacts: Sequence[Path]) -> None:
        """The (category, variant) rows of metrics.csv under run ``run``, replacing what it
        held; ``params``: per variant; ``artefacts``: files or folders to attach to the run."""

    def log_artefacts(self, run: str, artefacts: Sequence[Path]) -> None:
        """Attach more files or folders to run ``run`` (the report, once written)."""

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Opening a tracker
# --------------------------------------------------------------------------------------------


def embedded_uri(cfg: Config) -> str:
    """Where ``tracking.uri: null`` logs: ``sqlite:///OUT/mlflow/mlflow.db`` or ``OUT/tensorboard``."""
    root = Path(cfg.output.root).expanduser().resolve()
    if cfg.tracking.backend == "mlflow":
        return "sqlite:///" + str(root / "mlflow" / "mlflow.db")
    return str(root / "tensorboard")


def resolved_uri(cfg: Config) -> str:
    """The URI every process uses: the embedded default, or ``tracking.uri`` with a relative
    folder (TensorBoard) or SQLite file made absolute from this process's working directory."""
    uri = cfg.tracking.uri
    if uri is None:
        return embedded_uri(cfg)
    if cfg.tracking.backend == "tensorboard":
        return str(Path(uri).expanduser().resolve())
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())
    return uri


def experiment_name(cfg: Config) -> str:
    return cfg.tracking.experiment or cfg.dataset.dataset_name


def open_tracker(cfg: Config) -> Tracker | None:
    """The configured tracker (None for ``backend: none``). ConfigError when its package is not
    installed; OutputError when its store cannot be opened."""
    backend = cfg.tracking.backend
    if backend == "none":
        return None
    uri = resolved_uri(cfg)
    if backend == "mlflow":
        return MlflowTracker(uri, experiment_name(cfg))
    return TensorBoardTracker(Path(uri))


def _missing(backend: str, err: ImportError) -> ConfigError:
    return ConfigError(f"tracking.backend: {backend}", f"needs a package that is not installed ({err.name or err}).",
                       f"{INSTALL} (or set tracking.backend: none).")


# --------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------

#: MLflow's limits per log_batch call (metrics, params, tags).
_BATCH = 1000
_PARAMS = 100


class MlflowTracker:
    """Runs in one MLflow experiment, found again by their ``raydiff.*`` tags."""

    def __init__(self, uri: str, experiment: str) -> None:
        try:
            from mlflow.tracking import MlflowClient  # optional: raydiff[tracking], only when used
        except ImportError as err:
            raise _missing("mlflow", err) from None
        self.uri = uri
        try:
            with warnings.catch_warnings():  # MLflow's SQL store on SQLAlchemy 2.1: its own deprecations
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\.")
                self.client = MlflowClient(tracking_uri=uri)
                self.experiment_id = self._experiment(experiment)
        except Exception as err:  # noqa: BLE001 - any store failure is the URI's: one line naming it
            raise OutputError(uri, f"cannot open the MLflow tracking store ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}).",
                              "check tracking.uri (a reachable server, or a writable sqlite:/// path), or set "
                              "tracking.backend: none.") from None
        self._steps: dict[ModelRef, int] = {}
        self._runs: dict[str, Any] = {}

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException  # optional: raydiff[tracking], only when used

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        artefacts = None
        if self.uri.startswith("sqlite:///"):  # else MLflow would put them in ./mlruns of the caller's cwd
            artefacts = (Path(self.uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
        try:
            return str(self.client.create_experiment(name, artifact_location=artefacts))
        except MlflowException:  # created meanwhile by another process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _search(self, tags: Mapping[str, str]) -> list[Any]:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], query, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _run(self, tags: Mapping[str, str], name: str, params: Mapping[str, str],
             extra_tags: Mapping[str, str] | None = None) -> Any:
        """The run with ``tags`` (the oldest, should two exist), else a new one with ``params``."""
        key = json.dumps(sorted(tags.items()))
        if key not in self._runs:
            found = sorted(self._search(tags), key=lambda r: r.info.start_time)
            if found:
                self._runs[key] = found[0]
            else:
                from mlflow.entities import Param  # optional: raydiff[tracking], only when used

                run = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, **(extra_tags or {})})
                items = [Param(k, _param_text(v)) for k, v in params.items()]
                for chunk in _chunks(items, _PARAMS):
                    self.client.log_batch(run.info.run_id, params=chunk)
                self._runs[key] = run
        return self._runs[key]

    # ---- models ----

    def _model_run(self, ref: ModelRef, params: Mapping[str, str]) -> Any:
        tags = {"raydiff.kind": "model", "raydiff.model_key": ref.key}
        return self._run(tags, ref.name, params, {"raydiff.model_id": ref.model_id, "raydiff.dataset": ref.dataset,
                                                  "raydiff.category": ref.category, "raydiff.model": ref.model})

    def model_finished(self, ref: ModelRef) -> bool:
        found = self._search({"raydiff.kind": "model", "raydiff.model_key": ref.key})
        return any(r.info.status == "FINISHED" for r in found)

    def log_model(self, ref: ModelRef, rows: Sequence[Mapping[str, float]], params: Mapping[str, str],
                  finished: Path | None = None) -> int:
        from mlflow.entities import Metric, RunTag  # optional: raydiff[tracking], only when used

        run = self._model_run(ref, params)
        run_id_ = run.info.run_id
        if ref not in self._steps:
            history = self.client.get_metric_history(run_id_, "loss")
            self._steps[ref] = max((m.step for m in history), default=0)
        new = [r for r in rows if int(r["step"]) > self._steps[ref]]
        start = int(run.info.start_time or time.time() * 1000)
        metrics = [Metric(k, float(v), start + int(1000 * float(r.get("seconds", 0.0))), int(r["step"]))
                   for r in new for k, v in r.items() if k not in NOT_METRICS]
        try:
            for chunk in _chunks(metrics, _BATCH):
                self.client.log_batch(run_id_, metrics=chunk)
        except BaseException:
            self._steps.pop(ref, None)  # ask the store again next time: part of the batch may be in
            raise
        if new:
            self._steps[ref] = int(new[-1]["step"])
        if finished is not None:
            meta = _read_meta(finished)
            tags = [RunTag(k, _param_text(v)) for k, v in finished_tags(meta).items()]
            for chunk in _chunks(tags, _PARAMS):
                self.client.log_batch(run_id_, tags=chunk)
            for name in ("meta.json", "loss.png"):
                if (finished / name).is_file():
                    self.client.log_artifact(run_id_, str(finished / name))
            self.client.set_terminated(run_id_, "FINISHED")
        return len(new)

    # ---- runs and their metrics ----

    def _parent(self, run: str, run_params: Mapping[str, str]) -> Any:
        return self._run({"raydiff.kind": "run", "raydiff.run_id": run}, f"run {run}", run_params)

    def log_results(self, run: str, rows: Sequence[Mapping[str, Any]], params: Mapping[str, Mapping[str, str]],
                    run_params: Mapping[str, str], artefacts: Sequence[Path]) -> None:
        from mlflow.entities import Metric, RunTag  # optional: raydiff[tracking], only when used

        parent = self._parent(run, run_params)
        now = int(time.time() * 1000)
        for row in rows:
            tags = {"raydiff.kind": "variant", "raydiff.run_id": run, "raydiff.category": str(row["category"]),
                    "raydiff.variant": str(row["variant"])}
            child = self._run(tags, f"{row['category']}/{row['variant']}", params.get(str(row["variant"]), {}),
                              {"mlflow.parentRunId": parent.info.run_id})
            values, text = _split_row(row)
            self.client.log_batch(child.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()],
                                  tags=[RunTag(k, _param_text(v)) for k, v in text.items()])
            self.client.set_terminated(child.info.run_id, "FINISHED")
        self.log_artefacts(run, artefacts)

    def log_artefacts(self, run: str, artefacts: Sequence[Path]) -> None:
        parent = self._parent(run, {})
        for path in artefacts:
            if path.is_dir():
                self.client.log_artifacts(parent.info.run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(parent.info.run_id, str(path))
        self.client.set_terminated(parent.info.run_id, "FINISHED")

    def close(self) -> None:
        self._runs.clear()


# --------------------------------------------------------------------------------------------
# TensorBoard
# --------------------------------------------------------------------------------------------

#: File a model's TensorBoard folder gets once its whole curve and text are written.
TB_FINISHED = ".raydiff-finished"


class TensorBoardTracker:
    """Event files through torch's ``SummaryWriter``, one folder (a TensorBoard "run") per model
    and per (category, variant); the steps already written are read back with tensorboard's
    ``EventAccumulator``."""

    def __init__(self, root: Path) -> None:
        try:
            # optional: raydiff[tracking], only when used; checked here, imported where used
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as err:
            raise _missing("tensorboard", err) from None
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(self.root, f"cannot create the TensorBoard folder ({err.strerror or err}).",
                              "check tracking.uri and its permissions.") from None
        self._writers: dict[ModelRef, Any] = {}
        self._steps: dict[ModelRef, int] = {}

    def model_dir(self, ref: ModelRef) -> Path:
        return self.root / "models" / ref.model_id / ref.dataset / ref.category / ref.model

    def run_dir(self, run: str) -> Path:
        return self.root / "runs" / run

    def model_finished(self, ref: ModelRef) -> bool:
        return (self.model_dir(ref) / TB_FINISHED).is_file()

    def _last_step(self, folder: Path) -> int:
        # optional: raydiff[tracking], only when used
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        if not folder.is_dir():
            return 0
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        if "loss" not in events.Tags().get("scalars", []):
            return 0
        return max((e.step for e in events.Scalars("loss")), default=0)

    def log_model(self, ref: ModelRef, rows: Sequence[Mapping[str, float]], params: Mapping[str, str],
                  finished: Path | None = None) -> int:
        from torch.utils.tensorboard import SummaryWriter  # optional: raydiff[tracking], only when used

        folder = self.model_dir(ref)
        if ref not in self._steps:
            self._steps[ref] = self._last_step(folder)
        writer = self._writers.get(ref)
        if writer is None:
            writer = self._writers[ref] = SummaryWriter(log_dir=str(folder))
        new = [r for r in rows if int(r["step"]) > self._steps[ref]]
        try:
            if finished is not None:  # the text first: a retry after a failure writes the scalars once
                meta = _read_meta(finished)
                writer.add_text("config", _markdown(params), 0)
                tags = finished_tags(meta)
                versions = {k: v for k, v in tags.items() if k.startswith("versions.")}
                writer.add_text("versions", _markdown(versions), 0)
                writer.add_text("placement", _markdown({k: v for k, v in tags.items() if k not in versions}), 0)
            for r in new:
                for k, v in r.items():
                    if k not in NOT_METRICS:
                        writer.add_scalar(k, float(v), int(r["step"]))
            writer.flush()
        except BaseException:
            self._steps.pop(ref, None)
            raise
        if new:
            self._steps[ref] = int(new[-1]["step"])
        if finished is not None:
            writer.close()
            self._writers.pop(ref)
            (folder / TB_FINISHED).write_text(json.dumps({"steps": self._steps[ref]}) + "\n")
        return len(new)

    def log_results(self, run: str, rows: Sequence[Mapping[str, Any]], params: Mapping[str, Mapping[str, str]],
                    run_params: Mapping[str, str], artefacts: Sequence[Path]) -> None:
        for row in rows:
            values, text = _split_row(row)
            with self._fresh_writer(self.run_dir(run) / str(row["category"]) / str(row["variant"])) as writer:
                for k, v in values.items():
                    writer.add_scalar(f"metrics/{k}", v, 0)
                writer.add_text("params", _markdown({**params.get(str(row["variant"]), {}), **text}), 0)
        self._list_artefacts(run, run_params, artefacts)

    def log_artefacts(self, run: str, artefacts: Sequence[Path]) -> None:
        self._list_artefacts(run, {}, artefacts)

    def _list_artefacts(self, run: str, run_params: Mapping[str, str], artefacts: Sequence[Path]) -> None:
        """TensorBoard keeps no files: the run's folder gets a text naming them (added to what
        an earlier call listed)."""
        folder = self.run_dir(run)
        listed = folder / ".raydiff-artefacts.json"
        known = json.loads(listed.read_text()) if listed.is_file() else {"params": {}, "artefacts": []}
        known["params"].update(run_params)
        known["artefacts"] = sorted(set(known["artefacts"]) | {str(p.resolve()) for p in artefacts if p.exists()})
        with self._fresh_writer(folder) as writer:
            writer.add_text("run", _markdown({**known["params"], **{f"artefact {i + 1}": p for i, p in
                                                                    enumerate(known["artefacts"])}}), 0)
        listed.write_text(json.dumps(known, indent=1) + "\n")

    @staticmethod
    def _fresh_writer(folder: Path) -> Any:
        """A writer on ``folder`` after its own earlier event files are removed (its subfolders
        are other TensorBoard runs): a second ``raydiff metrics`` replaces the values instead of
        adding a second point at step 0."""
        from torch.utils.tensorboard import SummaryWriter  # optional: raydiff[tracking], only when used

        if folder.is_dir():
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
        return closing(SummaryWriter(log_dir=str(folder)))

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


# --------------------------------------------------------------------------------------------
# What the workflow calls (driver side)
# --------------------------------------------------------------------------------------------


def log_metrics(cfg: Config, table: Any, artefacts: Sequence[Path], tracker: Tracker | None = None) -> None:
    """The (category, variant) rows of a metrics table (polars DataFrame, as metrics.csv) and the
    run's files, under the config's run id. Nothing when tracking is off."""
    tracker = tracker or open_tracker(cfg)
    if tracker is None:
        return
    rows = list(table.iter_rows(named=True))
    params = {}
    for v in {str(r["variant"]) for r in rows}:
        inst = cfg.variants.instances.get(v)
        if inst is not None:
            cats = sorted({str(r["category"]) for r in rows if r["variant"] == v})
            params[v] = {"variant": v, "method": inst.method, "model": inst.model,
                         "model_ids": ",".join(f"{c}:{model_id(cfg, inst.model, c)}" for c in cats)}
    run_params = {"run_id": run_id(cfg), "dataset": cfg.dataset.dataset_name, "seed": str(cfg.seed),
                  "config": str(cfg.source or "")}
    try:
        tracker.log_results(run_id(cfg), rows, params, run_params, artefacts)
    finally:
        tracker.close()


def log_report(cfg: Config, artefacts: Sequence[Path]) -> None:
    tracker = open_tracker(cfg)
    if tracker is None:
        return
    try:
        tracker.log_artefacts(run_id(cfg), artefacts)
    finally:
        tracker.close()


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta: dict[str, Any] = json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta


def _split_row(row: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """A metrics row → (finite numbers, non-empty text) without its key columns."""
    values, text = {}, {}
    for k, v in row.items():
        if k in RESULT_KEYS or v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if str(v):
                text[k] = str(v)
        elif math.isfinite(float(v)):
            values[k] = float(v)
    return values, text


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 6000 else text[:5997] + "..."  # MLflow's limit on a param value


def _markdown(items: Mapping[str, Any]) -> str:
    """A two-column markdown table (TensorBoard renders text summaries as markdown)."""
    lines = ["| key | value |", "|---|---|"]
    lines += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in items.items()]
    return "\n".join(lines)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
