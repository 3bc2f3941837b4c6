"""The run-folder format: result schemas, the partition commit protocol, readers, run metadata.

No Ray here: the scoring actors (``raydiff.pipeline``) write through these functions, and
metrics, report and inspect read through them.

    OUT/<run_id>/
      config.yaml, versions.json                          what produced the run
      pixels/dataset=<d>/category=<c>/variant=<v>/        one row per pixel
        part-<first>.parquet ..., _SUCCESS                one file per scored batch, marker last
      images/dataset=<d>/category=<c>/variant=<v>/        one row per image (same layout)

      .staging/<attempt>/pixels/dataset=<d>/category=<c>/variant=<v>/   parts in flight

Commit protocol (workers write, the driver commits). For one scoring attempt of a category,
every (table, variant) partition gets a staging folder under ``RUN/.staging/<attempt>/``, the
same path as its final folder below that: outside the hive trees ``pixels/`` and ``images/``, so
a tool that globs them (DuckDB, polars, pyarrow) never meets an attempt in flight or one that
was killed, and on the same file system, so the commit stays a rename. A worker writes each batch as ``part-<first>.parquet``, where
``<first>`` is the position of the batch's first image in the category's sorted test list:
under a temporary name, then renamed, so a file is either whole or absent, and a retried batch
replaces its own file instead of adding rows. When every batch has reported, the driver keeps
exactly the files the successful batches named (a killed attempt's leftovers are deleted),
checks the row count, renames the staging folder into place and writes the success marker
last. Readers see only partitions with a marker. All of it needs a POSIX file system that
every node mounts at the same path (local disk on one node; NFS, EFS, FSx, Lustre on many):
renames within a folder are atomic there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata as md
import json
import os
import platform
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raydiff.config import Config, config_from_dict, dump_config, model_id, run_id, yaml_load
from raydiff.errors import OutputError
from raydiff.io import MARKER, atomic_write_text, is_complete, write_marker
from raydiff.paths import partition_dir, run_dir

PIXEL_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("defect_type", pa.string()),
        ("label", pa.int8()),
        ("y", pa.int16()),
        ("x", pa.int16()),
        ("score", pa.float32()),
        ("gt", pa.int8()),
        ("region", pa.int32()),
    ]
)
IMAGE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("defect_type", pa.string()),
        ("label", pa.int8()),
        ("score", pa.float32()),
        ("forwards_per_image", pa.float32()),
        ("seconds_per_image", pa.float32()),
    ]
)
TABLES = ("pixels", "images")
#: The hive partition columns' types, pinned: inferred, BTAD's category ``01`` would become the
#: integer 1. Every reader passes them (docs/usage.md shows the options for polars, pyarrow, DuckDB).
HIVE_SCHEMA: dict[str, type[pl.DataType]] = {"dataset": pl.String, "category": pl.String, "variant": pl.String}
#: Where scoring attempts stage their parts, in the run folder beside the hive trees.
STAGING = ".staging"
#: Parquet dictionary-encodes the string columns on disk (pyarrow's default), so a repeated image id
#: costs a few bits per row.
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd"}

Progress = Callable[[str], None]


def versions() -> dict[str, str]:
    """Installed versions of the packages that determine results (for run and model metadata)."""
    out = {"python": platform.python_version()}
    for pkg in ("raydiff", "torch", "diffusers", "ray", "polars", "pyarrow", "faiss-cpu", "faiss-gpu-cu12", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------------------------
# Tables from whole arrays (no per-pixel Python objects)
# --------------------------------------------------------------------------------------------


def _repeat_strings(values: Any, times: int) -> pa.Array:
    """``values`` (B strings) each repeated ``times`` times, gathered in Arrow from B strings."""
    small = pa.array([str(v) for v in values], pa.string())
    return pc.take(small, pa.array(np.repeat(np.arange(len(small), dtype=np.int32), times)))


def pixel_table(batch: dict[str, np.ndarray], variant: str) -> pa.Table:
    """One row per pixel for one variant: maps ``map:<variant>`` (B,H,W), gt (B,H,W), region (B,H,W)."""
    maps = batch[f"map:{variant}"]
    b, h, w = maps.shape
    hw = h * w
    yy, xx = np.indices((h, w), dtype=np.int16)
    return pa.Table.from_arrays(
        [
            _repeat_strings(batch["image_id"], hw),
            _repeat_strings(batch["defect_type"], hw),
            pa.array(np.repeat(np.asarray(batch["label"]).astype(np.int8), hw)),
            pa.array(np.tile(yy.ravel(), b)),
            pa.array(np.tile(xx.ravel(), b)),
            pa.array(maps.reshape(-1).astype(np.float32)),
            pa.array(np.asarray(batch["gt"]).reshape(-1).astype(np.int8)),
            pa.array(np.asarray(batch["region"]).reshape(-1).astype(np.int32)),
        ],
        schema=PIXEL_SCHEMA,
    )


def image_table(batch: dict[str, np.ndarray], variant: str) -> pa.Table:
    """One row per image for one variant (score, UNet forwards and seconds per image)."""
    return pa.Table.from_arrays(
        [
            _repeat_strings(batch["image_id"], 1),
            _repeat_strings(batch["defect_type"], 1),
            pa.array(np.asarray(batch["label"]).astype(np.int8)),
            pa.array(np.asarray(batch[f"score:{variant}"], np.float32)),
            pa.array(np.asarray(batch[f"forwards:{variant}"], np.float32)),
            pa.array(np.asarray(batch[f"seconds:{variant}"], np.float32)),
        ],
        schema=IMAGE_SCHEMA,
    )


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` under a temporary sibling name, then rename it to ``path``."""
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        pq.write_table(table, tmp, **PARQUET_OPTIONS)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


#: The images a run folder's scores came from (``raydiff.workflow.prepare``'s manifest: path,
#: split, defect type, mask of every image), so that metrics, the report and ``inspect`` need not
#: scan the dataset again (which may have moved or changed since).
MANIFEST = "manifest.parquet"


def read_manifest(folder: Path) -> pl.DataFrame | None:
    """The run folder's recorded manifest; None when there is none or it cannot be read (it is
    derived data: the next sweep writes it again from the dataset)."""
    try:
        return pl.read_parquet(folder / MANIFEST)
    except (OSError, pl.exceptions.PolarsError):
        return None


def write_manifest(folder: Path, manifest: pl.DataFrame) -> None:
    """Record ``manifest`` in the run folder: its categories' rows replace the recorded ones, other
    categories' rows stay (a run of fewer categories extends the record, never shrinks it)."""
    recorded = read_manifest(folder)
    if recorded is not None:
        others = recorded.filter(~pl.col("category").is_in(manifest["category"].unique().to_list()))
        manifest = pl.concat([others, manifest], how="diagonal_relaxed")
    try:
        write_parquet_atomic(manifest.sort(["category", "split", "image_id"]).to_arrow(), folder / MANIFEST)
    except OSError as err:
        raise OutputError(folder / MANIFEST, f"cannot write the run's manifest ({err.strerror or err}).",
                          "check free space and permissions, or pick another --output.") from None


# --------------------------------------------------------------------------------------------
# Partitions written by one process (tests, synthetic runs)
# --------------------------------------------------------------------------------------------


class PartitionWriter:
    """Writes one partition under a temporary sibling name; ``commit`` renames and marks it."""

    def __init__(self, final: Path, schema: pa.Schema) -> None:
        self.final = final
        self.tmp = staging_dir(final, f"tmp-{uuid.uuid4().hex[:8]}")
        self.tmp.mkdir(parents=True)
        self.writer = pq.ParquetWriter(self.tmp / "part-0.parquet", schema, **PARQUET_OPTIONS)
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self, info: dict[str, Any]) -> None:
        self.writer.close()
        _replace_dir(self.tmp, self.final)
        _prune_staging(self.tmp)
        write_marker(self.final, {**info, "rows": self.rows, "files": 1, "parts": ["part-0.parquet"]})

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            _prune_staging(self.tmp)


def _replace_dir(src: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, final)


# --------------------------------------------------------------------------------------------
# Partitions written by many workers (the scoring pipeline): staging, parts, commit
# --------------------------------------------------------------------------------------------


def _table_dir(final: Path) -> Path:
    """The folder above a partition's ``key=value`` folders (``RUN/pixels``, ``RUN/images``)."""
    table = final.parent
    while "=" in table.name:
        table = table.parent
    return table


def staging_dir(final: Path, attempt: str) -> Path:
    """The folder that one scoring attempt fills with the parts of partition ``final``:
    ``RUN/.staging/<attempt>/<table>/dataset=…/category=…/variant=…``, beside the hive tree
    (never inside it, where globbing readers would take it for a partition) and on its file
    system (the commit is a rename)."""
    table = _table_dir(final)
    return table.parent / STAGING / attempt / table.name / final.relative_to(table)


def _prune_staging(folder: Path) -> None:
    """Remove the empty folders above a committed or discarded staging folder, up to and with
    its ``<attempt>`` folder (``.staging`` itself stays: another attempt may be creating in it)."""
    for parent in folder.parents:
        if parent.name == STAGING:
            return
        try:
            parent.rmdir()
        except FileNotFoundError:  # already gone
            continue
        except OSError:  # not empty: another partition of the attempt
            return


def part_name(first: int) -> str:
    """File of the batch whose first image is number ``first`` of the category's sorted test list."""
    return f"part-{first:06d}.parquet"


def write_part(final: Path, attempt: str, first: int, table: pa.Table) -> str:
    """Write one batch's rows of partition ``final`` into the attempt's staging folder (atomic)."""
    folder = staging_dir(final, attempt)
    name = part_name(first)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table, folder / name)
    except OSError as err:  # disk full, read-only: the partition stays uncommitted, a re-run redoes it
        raise OutputError(final.parent, f"cannot write the scores of {final.name} ({err.strerror or err}).",
                          "free space (or fix permissions) under the output root and re-run: complete partitions are kept.") from None
    return name


def commit_staged(final: Path, attempt: str, parts: Sequence[str], rows: int, info: dict[str, Any]) -> None:
    """Make the staged partition visible: keep exactly ``parts``, check ``rows``, rename, mark.

    Raises OutputError (nothing renamed) when a part is missing or the row count differs.
    """
    folder = staging_dir(final, attempt)
    keep = set(parts)
    missing = sorted(p for p in keep if not (folder / p).is_file())
    if missing:
        raise OutputError(folder, f"scored parts {missing[:3]} are missing (written on another file system?).",
                          "make output.root storage that every node sees at the same path.")
    for p in folder.iterdir():  # a killed attempt's temporaries or batches no successful task reported
        if p.name not in keep:
            p.unlink()
    found = sum(pq.ParquetFile(folder / p).metadata.num_rows for p in keep)
    if found != rows:
        raise OutputError(folder, f"holds {found} rows, expected {rows}.", "re-run: the partition is recomputed.")
    _replace_dir(folder, final)
    _prune_staging(folder)
    write_marker(final, {**info, "rows": rows, "files": len(keep), "parts": sorted(keep)})


def discard_staged(final: Path, attempt: str) -> None:
    folder = staging_dir(final, attempt)
    shutil.rmtree(folder, ignore_errors=True)
    _prune_staging(folder)


def remove_stale(cfg: Config, category: str) -> None:
    """Delete what killed runs left of a category's partitions: their staging folders (every
    attempt's), and the temporaries and ``.staging-*`` folders that earlier versions of raydiff
    kept inside the hive tree."""
    for table in TABLES:
        parent = partition_dir(cfg, table, category, "x").parent
        for attempt in (run_dir(cfg) / STAGING).glob("*"):
            staged = attempt / parent.relative_to(run_dir(cfg))
            if staged.is_dir():
                shutil.rmtree(staged, ignore_errors=True)
                _prune_staging(staged / "x")
        if parent.is_dir():
            for p in [*parent.glob(".tmp-*"), *parent.glob(".staging-*")]:
                shutil.rmtree(p, ignore_errors=True)


def image_set_digest(image_ids: Sequence[str]) -> str:
    """A short digest of which test images a partition holds (a ``--limit`` subset differs)."""
    return hashlib.sha256("\n".join(sorted(image_ids)).encode()).hexdigest()[:16]


def marker_info(folder: Path) -> dict[str, Any]:
    """The JSON a success marker holds ({} when absent or unreadable)."""
    try:
        return json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def pending_variants(cfg: Config, category: str, variants: Sequence[str], image_set: str | None = None) -> list[str]:
    """Variants whose pixel or image partition is not complete (for this set of test images) yet."""

    def done(folder: Path) -> bool:
        if not is_complete(folder):
            return False
        return image_set is None or marker_info(folder).get("image_set") == image_set

    return [v for v in variants if not all(done(partition_dir(cfg, t, category, v)) for t in TABLES)]


# --------------------------------------------------------------------------------------------
# Run metadata and the shared-storage check
# --------------------------------------------------------------------------------------------


def write_run_metadata(cfg: Config, overwrite: bool = False, progress: Progress | None = None,
                       categories: Sequence[str] | None = None) -> Path:
    """Write config.yaml + versions.json into the run folder; refuse a folder of another config
    (``overwrite``: delete that folder's scores first).

    versions.json's ``model_ids`` (model → category → id) cover ``categories`` (those the run
    found on disk when the config discovers them; default: ``dataset.categories``) and the ones an
    earlier run of this folder recorded (a run with fewer categories extends, never shrinks, it)."""
    folder = run_dir(cfg)
    existing = folder / "config.yaml"
    if existing.is_file():
        try:
            other = config_from_dict(yaml_load(existing.read_text()), where=str(existing), upgrade=True)
        except Exception as err:  # a damaged or foreign file: never mix outputs
            raise OutputError(existing, f"cannot be read as a raydiff config ({err}).", "pick a new --output.") from None
        if run_id(other) != run_id(cfg) and overwrite:
            if progress is not None:
                progress(f"--overwrite: deleting {folder} (written by another config)")
            shutil.rmtree(folder)
        elif run_id(other) != run_id(cfg):
            raise OutputError(
                folder,
                "this output folder was written by a different config.",
                "pick a new --output, or run `raydiff sweep --overwrite` with this config to delete it.",
            )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(existing, dump_config(cfg))
        cats = list(dict.fromkeys([*cfg.dataset.categories, *(categories or ())]))
        ids = _recorded_model_ids(folder / "versions.json")
        for m in cfg.models_needed():
            ids[m] = {**ids.get(m, {}), **{c: model_id(cfg, m, c) for c in cats}}
        meta = {"versions": versions(), "seed": cfg.seed, "run_id": run_id(cfg), "model_ids": ids}
        atomic_write_text(folder / "versions.json", json.dumps(meta, indent=2))
    except OSError as err:
        raise OutputError(folder, f"cannot write the output folder ({err.strerror}).", "check free space and permissions, or pick another --output.") from None
    return folder


def _recorded_model_ids(path: Path) -> dict[str, dict[str, str]]:
    """versions.json's model_ids ({} when absent or unreadable)."""
    try:
        ids = json.loads(path.read_text()).get("model_ids")
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(m): dict(c) for m, c in ids.items() if isinstance(c, dict)} if isinstance(ids, dict) else {}


LOCK = ".raydiff.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def output_lock(cfg: Config) -> Iterator[Path]:
    """Hold ``OUT/.raydiff.lock`` (host, pid, start time) while a sweep writes to the output root.

    A second sweep on the same root refuses with one line naming the holder. A lock left by a
    process that is gone (same host, dead pid) is taken over; one from another host is not (its
    pid cannot be checked from here): the message says how to remove it.
    """
    root = Path(cfg.output.root).expanduser()
    path = root / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": dt.datetime.now(dt.timezone.utc).isoformat()}
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(root, f"cannot create the output root ({err.strerror or err}).",
                          "check permissions, or pick another --output.") from None
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}
            host, pid = holder.get("host"), holder.get("pid")
            if host == me["host"] and isinstance(pid, int) and not _pid_alive(pid):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise OutputError(
                path,
                f"another raydiff sweep (pid {pid} on {host}, since {holder.get('started')}) is writing to this "
                "output root.",
                "wait for it to finish or pick another --output; if that process is gone, delete the lock file.",
            ) from None
        except OSError as err:
            raise OutputError(root, f"cannot write to the output root ({err.strerror or err}).",
                              "check free space and permissions, or pick another --output.") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me) + "\n")
        break
    try:
        yield path
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == me["pid"]:
                path.unlink()
        except (OSError, ValueError):
            pass


def run_probe(cfg: Config) -> Path:
    """The file that shows a worker the run folder: the driver writes ``config.yaml`` into it
    before any scoring work starts (``write_run_metadata``)."""
    return run_dir(cfg) / "config.yaml"


def require_visible(probe: Path, where: str) -> None:
    """Fail with one clear line when this process (a worker on ``where``) cannot see ``probe``, a
    file the driver wrote before starting the work: then the worker's node does not share the
    driver's storage at the output root's path."""
    if not Path(probe).is_file():
        raise OutputError(
            probe,
            f"not visible from {where}: the output root is not storage that every node sees.",
            "set output.root (or --output) to a path on shared storage (NFS/EFS/FSx) mounted at the same path on every node.",
        )


# --------------------------------------------------------------------------------------------
# Readers: only complete partitions
# --------------------------------------------------------------------------------------------


def partition_files(folder: Path) -> list[Path]:
    """The Parquet files of a complete partition: exactly those its success marker lists.

    A file the marker does not list (a copy such as ``part-000000 (1).parquet``, a file dropped in
    by hand) is never read; a listed file that is missing or not Parquet raises OutputError naming
    it. Markers written before the list was recorded hold only a count, which must match.
    """
    folder = Path(folder)
    info = marker_info(folder)
    found = sorted(folder.glob("*.parquet"))
    if isinstance(info.get("parts"), list):
        files = [folder / str(name) for name in info["parts"]]
        for f in files:
            if f.parent != folder or not f.name.endswith(".parquet") or not f.is_file():
                raise OutputError(f, f"is listed in {MARKER} but is not a Parquet file of this folder.",
                                  f"delete {folder} and re-run `raydiff sweep` (or `raydiff score`): the partition is recomputed.")
    elif isinstance(info.get("files"), int) and info["files"] != len(found):
        raise OutputError(folder, f"holds {len(found)} Parquet files, but its {MARKER} records {info['files']}.",
                          f"delete {folder} and re-run `raydiff sweep` (or `raydiff score`): the partition is recomputed.")
    else:
        files = found
    for f in files:
        try:
            pq.read_metadata(f)
        except (OSError, pa.ArrowException) as err:
            raise OutputError(f, f"is not a readable Parquet file ({str(err).splitlines()[0][:160]}).",
                              f"delete {folder} and re-run `raydiff sweep` (or `raydiff score`): the partition is recomputed.") from None
    return files


def complete_files(root: Path, table: str) -> list[str]:
    """Every file of every complete partition of ``table`` (``partition_files``)."""
    base = Path(root) / table
    files: list[str] = []
    for marker in sorted(base.glob(f"dataset=*/category=*/variant=*/{MARKER}")):
        files.extend(str(p) for p in partition_files(marker.parent))
    return files


def incomplete_partitions(root: Path, variants: Sequence[str] = ()) -> list[str]:
    """``category/variant`` pairs of a run folder that are not complete in both tables: a
    partition folder without its marker, a pair in one table only, or one of ``variants`` (the
    run config's enabled variants) missing for a category that has scores. Sorted."""
    root = Path(root)
    done: dict[str, set[str]] = {t: set() for t in TABLES}
    seen: set[str] = set()
    categories: set[str] = set()
    for table in TABLES:
        for folder in (root / table).glob("dataset=*/category=*/variant=*"):
            if not folder.is_dir():
                continue
            cat = folder.parent.name.removeprefix("category=")
            pair = f"{cat}/{folder.name.removeprefix('variant=')}"
            categories.add(cat)
            seen.add(pair)
            if is_complete(folder):
                done[table].add(pair)
    seen |= {f"{c}/{v}" for c in categories for v in variants}
    return sorted(p for p in seen if not all(p in done[t] for t in TABLES))


def limited_pairs(root: Path) -> dict[str, int]:
    """``category/variant`` → N for the complete partitions scored with ``--limit N`` (their
    markers record it): metrics of those pairs cover a subset of the test set, not the benchmark."""
    limited: dict[str, int] = {}
    for marker in sorted(Path(root).glob(f"images/dataset=*/category=*/variant=*/{MARKER}")):
        limit = marker_info(marker.parent).get("limit")
        if limit is not None:
            folder = marker.parent
            limited[f"{folder.parent.name.removeprefix('category=')}/{folder.name.removeprefix('variant=')}"] = int(limit)
    return limited


def require_complete(root: Path, variants: Sequence[str] = (), command: str = "this command") -> None:
    """OutputError listing the incomplete ``category/variant`` pairs of a run folder (as
    ``raydiff metrics`` does), so no reader silently drops one or fails on it.

    A pair is incomplete when a partition folder of it lacks its marker or it has scores in one
    table only; ``variants``: variants every category with scores must also have.
    """
    missing = incomplete_partitions(root, variants)
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        raise OutputError(
            root,
            f"scores are missing or incomplete for {len(missing)} (category, variant) pair(s): {shown}.",
            f"finish them with `raydiff sweep` (complete parts are kept) before {command}.",
        )


def _no_scores(root: Path, table: str) -> OutputError:
    """Why a folder has no scores to read, and which folder the user probably meant."""
    root = Path(root)
    runs = sorted(p.parent.name for p in root.glob("*/config.yaml") if (p.parent / "versions.json").is_file())
    if runs:
        return OutputError(root, f"is an output root, not a run folder (it holds {len(runs)} run folder(s)).",
                           f"pass a run folder, e.g. {root / runs[0]}.")
    if (root / "config.yaml").is_file():
        return OutputError(root / table, "no complete scores yet in this run folder.",
                           "run `raydiff sweep` (or `raydiff score`) for its config first.")
    return OutputError(root, "is not a raydiff run folder (no config.yaml, no scores).",
                       "pass OUT/<run_id>, the folder `raydiff sweep` prints as 'run folder'.")


def _scan(root: Path, table: str) -> pl.LazyFrame:
    files = complete_files(root, table)
    if not files:
        raise _no_scores(root, table)
    return pl.scan_parquet(files, hive_partitioning=True, hive_schema=HIVE_SCHEMA)


def passes_of(root: Path) -> pl.DataFrame:
    """Per (dataset, category, variant) of the images table: ``unet_pass_of``, the variant whose
    UNet pass its forwards count (itself unless it rode on another's; null for partitions written
    before raydiff recorded it). From the partitions' success markers."""
    rows = []
    for marker in sorted((Path(root) / "images").glob(f"dataset=*/category=*/variant=*/{MARKER}")):
        keys = [p.name.partition("=")[2] for p in (marker.parents[2], marker.parents[1], marker.parent)]
        rows.append([*keys, marker_info(marker.parent).get("pass_of")])
    return pl.DataFrame(rows, schema={"dataset": pl.String, "category": pl.String, "variant": pl.String,
                                      "unet_pass_of": pl.String}, orient="row")


def scan_pixels(root: Path) -> pl.LazyFrame:
    """The per-pixel table of a run folder (complete partitions only), with hive columns."""
    return _scan(root, "pixels")


def scan_images(root: Path) -> pl.LazyFrame:
    """The per-image table of a run folder (complete partitions only), with hive columns."""
    return _scan(root, "images")
