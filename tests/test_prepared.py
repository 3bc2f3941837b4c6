"""``workflow.prepare``: the dataset scanned and checked once (a ``Prepared``), and the manifest the
run folder records so that metrics and the report do not scan the dataset again."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from datatrees import make_mvtec
from raydiff.config import config_from_dict
from raydiff.data.images import dataset_channels
from raydiff.data.prepared import Prepared
from raydiff.data.manifest import scan_config
from raydiff.errors import DatasetError, OutputError
from raydiff.paths import run_dir
from raydiff.report import manifest_paths
from raydiff.runs import MANIFEST, read_manifest, write_manifest, write_run_metadata
from raydiff.workflow import expected_categories, prepare, validate_dataset_for


def _cfg(root: Path, out: Path, **dataset: object) -> object:
    return config_from_dict({
        "dataset": {"layout": "mvtec", "root": str(root), "image_size": 16, "holdout_fraction": 0.34,
                    "holdout_min": 1, **dataset},
        "models": {"preset": "tiny", "base_channels": 8, "pixel": {"arch": "pixel"}},
        "variants": {"nd": {"method": "no-diffusion", "model": "pixel", "t0": 10, "steps": 2}},
        "output": {"root": str(out)},
    })


def _tree(tmp_path: Path) -> Path:
    root = make_mvtec(tmp_path / "data", ("bottle",), n_train=3)
    return make_mvtec(root, ("carpet",), n_train=3, mode="L")


def test_prepare_computes_the_split_the_channels_and_the_summary_once(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    cfg = _cfg(root, tmp_path / "out")
    prepared = prepare(cfg)
    assert prepared.cfg is cfg and prepared.categories == ["bottle", "carpet"]
    # The channel counts are those the files' headers give (the rule of data.images.dataset_channels).
    scanned = scan_config(cfg)
    for cat in prepared.categories:
        assert prepared.channels[cat] == dataset_channels(scanned.filter(pl.col("category") == cat))
    assert prepared.channels == {"bottle": 3, "carpet": 1}
    # One of the three training images of each category is held out; rows() filters and sorts.
    for cat in prepared.categories:
        assert prepared.rows(cat, "holdout").height == 1 and prepared.rows(cat, "train").height == 2
        assert prepared.rows(cat)["image_id"].to_list() == sorted(prepared.rows(cat)["image_id"].to_list())
    # `raydiff validate` runs the same checks and reports the same summary.
    summary = validate_dataset_for(cfg)
    assert summary.describe() == prepared.summary.describe() and summary.table().equals(prepared.summary.table())
    # A manifest made elsewhere: channels read from its files, no summary.
    other = Prepared.of(cfg, prepared.manifest)
    assert other.channels == prepared.channels and other.summary is None
    # dataset.channels decides when set.
    assert prepare(_cfg(root, tmp_path / "out", channels="rgb")).channels == {"bottle": 3, "carpet": 3}


def test_prepare_fails_on_a_category_that_mixes_modes(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    shutil.copy(root / "bottle" / "train" / "good" / "000.png", root / "carpet" / "train" / "good" / "009.png")
    with pytest.raises(DatasetError, match="mixes channel counts"):
        prepare(_cfg(root, tmp_path / "out"))


def test_the_run_folder_records_its_manifest_and_extends_it(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    cfg = _cfg(root, tmp_path / "out")
    prepared = prepare(cfg)
    folder = write_run_metadata(cfg)
    bottle = prepared.manifest.filter(pl.col("category") == "bottle")
    write_manifest(folder, prepared.manifest)
    assert read_manifest(folder).sort(["category", "split", "image_id"]).equals(
        prepared.manifest.sort(["category", "split", "image_id"]))
    # A later run of one category replaces that category's rows and keeps the others.
    changed = bottle.with_columns(pl.lit("elsewhere.png").alias("image_path"))
    write_manifest(folder, changed)
    recorded = read_manifest(folder)
    assert set(recorded.filter(pl.col("category") == "bottle")["image_path"]) == {"elsewhere.png"}
    assert recorded.filter(pl.col("category") == "carpet").height == prepared.rows("carpet").height
    # A damaged record is derived data: read as absent, rewritten whole by the next run.
    (folder / MANIFEST).write_bytes(b"not parquet")
    assert read_manifest(folder) is None
    write_manifest(folder, bottle)
    assert read_manifest(folder)["category"].unique().to_list() == ["bottle"]


def test_metrics_and_the_report_read_the_recorded_manifest_when_the_dataset_moved(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    cfg = _cfg(root, tmp_path / "out")
    prepared = prepare(cfg)
    folder = write_run_metadata(cfg)
    write_manifest(folder, prepared.manifest)
    shutil.rmtree(root)  # the dataset is gone (moved, unmounted)
    assert expected_categories(cfg, run_dir(cfg)) == ["bottle", "carpet"]
    paths, why = manifest_paths(cfg, ["carpet"], folder)
    assert why is None
    assert paths == {(r["category"], r["image_id"]): r["image_path"]
                     for r in prepared.rows("carpet").iter_rows(named=True)}
    # Without the record, the report says why it shows no inputs (the scan fails).
    (folder / MANIFEST).unlink()
    paths, why = manifest_paths(cfg, ["carpet"], folder)
    assert paths == {} and "could not be read" in why


def test_an_unwritable_run_folder_gets_one_error_naming_the_manifest(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / MANIFEST).mkdir()  # a folder where the file goes: the rename fails
    (folder / MANIFEST / "keep").write_text("x")
    with pytest.raises(OutputError, match=MANIFEST):
        write_manifest(folder, prepare(_cfg(root, tmp_path / "out")).manifest)
    assert (folder / MANIFEST / "keep").read_text() == "x"  # nothing of what was there is lost
