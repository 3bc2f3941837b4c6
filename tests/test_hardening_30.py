"""Issue 30: the cases that still lost data or gave a wrong number, each one clear line now."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from clitools import cli, one_error_line
from datatrees import make_mvtec, make_visa, save_image, write_visa_csv

from raydiff.config import config_from_dict
from raydiff.data.manifest import scan_dataset, scan_visa
from raydiff.data.prepared import Prepared
from raydiff.data.validate import validate_dataset
from raydiff.errors import CheckpointError, DatasetError, OutputError
from raydiff.io import MARKER
from raydiff.paths import fitted_dir, model_dir, partition_dir, run_dir
from raydiff.runs import (
    IMAGE_SCHEMA,
    PIXEL_SCHEMA,
    PartitionWriter,
    commit_staged,
    image_set_digest,
    image_table,
    pending_variants,
    pixel_table,
    scan_images,
    scan_pixels,
    staging_dir,
    write_part,
    write_run_metadata,
)




# --------------------------------------------------------------------------------------------
# A tiny run folder written with the pipeline's own writers
# --------------------------------------------------------------------------------------------


def _batch(variant: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = np.zeros((2, 4, 4), np.int8)
    gt[1, 1:3, 1:3] = 1
    return {"image_id": np.array(["test/good/0.png", "test/crack/0.png"], dtype=object),
            "defect_type": np.array(["good", "crack"], dtype=object), "label": np.array([0, 1], np.int8),
            "gt": gt, "region": gt.astype(np.int32), f"map:{variant}": rng.random((2, 4, 4)).astype(np.float32),
            f"score:{variant}": np.array([0.1, 0.9], np.float32), f"forwards:{variant}": np.full(2, 3, np.float32),
            f"seconds:{variant}": np.full(2, 0.5, np.float32)}


def fake_run(tmp_path: Path, categories: tuple[str, ...] = ("brick",), tables: tuple[str, ...] = ("pixels", "images"),
             variants: tuple[str, ...] = ("kl",)) -> object:
    cfg = config_from_dict({"output": {"root": str(tmp_path / "out")},
                            "dataset": {"name": "tex", "root": str(tmp_path / "nodata"), "categories": list(categories)},
                            "variants": {"enabled": list(variants)}})
    write_run_metadata(cfg)
    for cat in categories:
        for variant in variants:
            for table, schema, build in (("pixels", PIXEL_SCHEMA, pixel_table), ("images", IMAGE_SCHEMA, image_table)):
                if table in tables:
                    w = PartitionWriter(partition_dir(cfg, table, cat, variant), schema)
                    w.write(build(_batch(variant), variant))
                    w.commit({"images": 2})
    return cfg


# --------------------------------------------------------------------------------------------
# 1. csv object names; folders replaced atomically stay inside their parent
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [".", "", "brick/Data", "..", "a=b"])
def test_visa_object_names_go_through_the_plain_name_check(tmp_path: Path, bad: str) -> None:
    root = make_visa(tmp_path / "visa")
    save_image(root / "candle" / "Data" / "Images" / "Normal" / "x.JPG", (24, 16))
    rows = [["candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""],
            [bad, "train", "normal", "candle/Data/Images/Normal/x.JPG", ""]]
    write_visa_csv(root, rows)
    with pytest.raises(DatasetError, match=r"line 3: object name .* is not a plain category name"):
        scan_visa(root)


@pytest.mark.parametrize("bad", [".", "", "..", "brick/Data", "a/../b"])
def test_folders_replaced_atomically_must_be_inside_their_parent(tmp_path: Path, bad: str) -> None:
    cfg = config_from_dict({"output": {"root": str(tmp_path)}, "dataset": {"name": "visa"}})
    keep = fitted_dir(cfg, "brick")
    for build in (lambda: fitted_dir(cfg, bad), lambda: model_dir(cfg, bad, "pixel"),
                  lambda: partition_dir(cfg, "pixels", bad, "kl")):
        with pytest.raises(OutputError, match="does not name a folder inside"):
            build()
    assert keep.parent.name == "visa" and keep.name == "brick"


# --------------------------------------------------------------------------------------------
# 5. category folders found on disk are name-checked
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a=b", "x%41", "café", "c" * 250])
def test_category_folders_on_disk_are_name_checked(tmp_path: Path, name: str) -> None:
    root = make_mvtec(tmp_path / "data", categories=("bottle",))
    shutil.copytree(root / "bottle", root / name)
    with pytest.raises(DatasetError, match="not a plain category name") as err:
        scan_dataset("mvtec", root)
    assert name[:40] in str(err.value) and "rename it" in str(err.value)
    code, out = cli("validate", str(root))
    assert code == 2 and "not a plain category name" in one_error_line(out)


# --------------------------------------------------------------------------------------------
# 4. symlinks out of the dataset root; leakage through a link
# --------------------------------------------------------------------------------------------


def test_a_training_image_linked_to_a_file_outside_the_root_is_refused(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data")
    outside = save_image(tmp_path / "secret" / "x.png")
    (root / "bottle" / "train" / "good" / "009.png").symlink_to(outside)
    with pytest.raises(DatasetError, match="outside the dataset root"):
        validate_dataset(scan_dataset("mvtec", root), root)


def test_a_test_image_linked_to_a_training_image_is_leakage(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data")
    (root / "bottle" / "test" / "good" / "009.png").symlink_to(root / "bottle" / "train" / "good" / "000.png")
    with pytest.raises(DatasetError, match="both the train and the test split"):
        validate_dataset(scan_dataset("mvtec", root), root)


# --------------------------------------------------------------------------------------------
# 2. report --output never deletes what raydiff did not write
# --------------------------------------------------------------------------------------------


def test_report_output_refuses_a_users_folder_unless_overwrite(tmp_path: Path) -> None:
    cfg = fake_run(tmp_path)
    run = run_dir(cfg)
    out = tmp_path / "mine"
    (out / "report").mkdir(parents=True)
    (out / "report" / "notes.txt").write_text("mine")
    code, text = cli("report", str(run), "--output", str(out))
    line = one_error_line(text)
    assert code == 2 and str(out / "report") in line and "--overwrite" in line
    assert (out / "report" / "notes.txt").read_text() == "mine"

    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.csv").write_text("a,b\n1,2\n")
    code, text = cli("report", str(run), "--output", str(other))
    assert code == 2 and "metrics.csv" in one_error_line(text)
    assert (other / "metrics.csv").read_text() == "a,b\n1,2\n"

    fresh = tmp_path / "fresh"
    assert cli("report", str(run), "--output", str(fresh))[0] == 0
    assert cli("report", str(run), "--output", str(fresh))[0] == 0  # its own report: replaced
    assert cli("report", str(run), "--output", str(out), "--overwrite")[0] == 0


def test_report_output_that_is_a_file_or_read_only_is_one_line(tmp_path: Path) -> None:
    cfg = fake_run(tmp_path)
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    code, text = cli("report", str(run_dir(cfg)), "--output", str(a_file))
    assert code == 2 and "Traceback" not in text and "f.txt" in text
    code, text = cli("report", str(run_dir(cfg)), "--output", str(a_file / "sub"))  # mkdir fails: OSError
    assert code == 2 and "cannot write the report" in one_error_line(text)
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, text = cli("report", str(run_dir(cfg)), "--output", str(ro / "sub"))
        assert code == 2 and "cannot write the report" in one_error_line(text)
    finally:
        ro.chmod(0o700)


# --------------------------------------------------------------------------------------------
# 7. readers read exactly the files the marker lists
# --------------------------------------------------------------------------------------------


def test_a_stray_parquet_copy_in_a_committed_partition_is_not_counted(tmp_path: Path) -> None:
    cfg = fake_run(tmp_path)
    run = run_dir(cfg)
    before = scan_images(run).collect().height
    for table in ("pixels", "images"):
        folder = partition_dir(cfg, table, "brick", "kl")
        shutil.copy(folder / "part-0.parquet", folder / "part-000000 (1).parquet")
    assert scan_images(run).collect().height == before == 2
    assert scan_pixels(run).collect().height == 2 * 16


def test_pipeline_commit_records_its_parts_and_readers_use_them(tmp_path: Path) -> None:
    cfg = fake_run(tmp_path, tables=())
    final = partition_dir(cfg, "images", "brick", "kl")
    write_part(final, "a1", 0, image_table(_batch("kl"), "kl"))
    commit_staged(final, "a1", ["part-000000.parquet"], 2, {"images": 2})
    assert json.loads((final / MARKER).read_text())["parts"] == ["part-000000.parquet"]
    shutil.copy(final / "part-000000.parquet", final / "part-000000 (1).parquet")
    from raydiff.runs import partition_files

    assert [p.name for p in partition_files(final)] == ["part-000000.parquet"]


def test_an_old_marker_whose_file_count_differs_is_refused(tmp_path: Path) -> None:
    cfg = fake_run(tmp_path)
    folder = partition_dir(cfg, "images", "brick", "kl")
    (folder / MARKER).write_text(json.dumps({"rows": 2, "files": 1}))  # before markers listed their parts
    shutil.copy(folder / "part-0.parquet", folder / "part-000000 (1).parquet")
    with pytest.raises(OutputError, match="holds 2 Parquet files, but its _SUCCESS records 1"):
        scan_images(run_dir(cfg))


def test_a_garbage_parquet_part_is_named(tmp_path: Path) -> None:
    cfg = fake_run(tmp_path)
    part = partition_dir(cfg, "images", "brick", "kl") / "part-0.parquet"
    part.write_bytes(b"not parquet at all" * 10)
    code, text = cli("inspect", str(run_dir(cfg)))
    line = one_error_line(text)
    assert code == 2 and str(part) in line and "not a readable Parquet file" in line


# --------------------------------------------------------------------------------------------
# 12. inspect and report say which partitions are incomplete; NaN options
# --------------------------------------------------------------------------------------------


def test_inspect_and_report_name_incomplete_pairs_as_metrics_does(tmp_path: Path) -> None:
    cfg = fake_run(tmp_path, categories=("brick", "grass"), variants=("kl", "trend"))
    run = run_dir(cfg)
    shutil.rmtree(partition_dir(cfg, "images", "grass", "trend"))  # scores in one table only
    (partition_dir(cfg, "pixels", "brick", "trend") / MARKER).unlink()  # no marker
    for command in (["inspect", str(run)], ["report", str(run)]):
        code, text = cli(*command)
        line = one_error_line(text)
        assert code == 2 and "brick/trend, grass/trend" in line, line
    from raydiff.workflow import evaluate

    with pytest.raises(OutputError, match="brick/trend, grass/trend"):
        evaluate(cfg)


@pytest.mark.parametrize("args", [["--coverage-below", "nan"], ["--fpr", "nan"]])
def test_inspect_refuses_nan(tmp_path: Path, args: list[str]) -> None:
    cfg = fake_run(tmp_path)
    code, out = cli("inspect", str(run_dir(cfg)), *args)
    assert code == 2 and "Invalid value" in out and "Traceback" not in out


# --------------------------------------------------------------------------------------------
# 9. --limit
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "-5"])
@pytest.mark.parametrize("command", ["score", "sweep"])
def test_limit_takes_positive_integers_only(command: str, value: str) -> None:
    code, out = cli(command, "--limit", value)
    assert code == 2 and "Invalid value for '--limit'" in out and "Traceback" not in out


def test_a_limited_partition_is_not_complete_for_the_full_set(tmp_path: Path) -> None:
    import polars as pl

    from raydiff.pipeline import category_test_rows

    cfg = fake_run(tmp_path, tables=())
    manifest = pl.DataFrame({"category": ["brick"] * 4, "split": ["test"] * 4, "label": [0, 0, 1, 1],
                             "image_id": ["a", "b", "c", "d"]})
    with pytest.raises(ValueError, match="positive"):
        category_test_rows(manifest, "brick", -1)
    subset = category_test_rows(manifest, "brick", 2)["image_id"].to_list()
    assert subset == ["a", "c"]
    for table, schema, build in (("pixels", PIXEL_SCHEMA, pixel_table), ("images", IMAGE_SCHEMA, image_table)):
        w = PartitionWriter(partition_dir(cfg, table, "brick", "kl"), schema)
        w.write(build(_batch("kl"), "kl"))
        w.commit({"images": 2, "image_set": image_set_digest(subset), "limit": 2})
    assert pending_variants(cfg, "brick", ["kl"], image_set_digest(subset)) == []
    assert pending_variants(cfg, "brick", ["kl"], image_set_digest(["a", "b", "c", "d"])) == ["kl"]
    # metrics of it are computed, and said to be of a subset
    from raydiff.runs import limited_pairs

    assert limited_pairs(run_dir(cfg)) == {"brick/kl": 2}
    assert limited_pairs(run_dir(fake_run(tmp_path / "full"))) == {}  # markers without a limit
    code, text = cli("metrics", "--config", str(run_dir(cfg) / "config.yaml"))
    assert code == 0, text
    assert "scored with --limit" in text and "brick/kl (2 images)" in text, text


# --------------------------------------------------------------------------------------------
# Disk full: nothing partial visible, the folder named, a re-run completes
# --------------------------------------------------------------------------------------------


def _enospc(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_a_part_leaves_nothing_and_a_rerun_completes(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import raydiff.runs as runs

    cfg = fake_run(tmp_path, tables=())
    final = partition_dir(cfg, "images", "brick", "kl")
    with monkeypatch.context() as m:
        m.setattr(runs.pq, "write_table", _enospc)
        with pytest.raises(OutputError, match="No space left") as err:
            write_part(final, "a1", 0, image_table(_batch("kl"), "kl"))
    assert str(final.parent) in str(err.value)
    assert not final.exists() and not list(staging_dir(final, "a1").glob("*"))
    write_part(final, "a2", 0, image_table(_batch("kl"), "kl"))
    commit_staged(final, "a2", ["part-000000.parquet"], 2, {})
    assert pq.read_table(final / "part-000000.parquet").num_rows == 2


def test_disk_full_while_writing_text_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raydiff.io import atomic_write_text

    target = tmp_path / "metrics.csv"
    with monkeypatch.context() as m:
        m.setattr(os, "replace", _enospc)  # the temporary is written, the rename fails
        with pytest.raises(OSError):
            atomic_write_text(target, "a\n")
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(target, "a\n")
    assert target.read_text() == "a\n"


# --------------------------------------------------------------------------------------------
# 8. a checkpoint must be the config's model; disk full while checkpointing
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object, Path]:
    from raydiff.train.loop import train_one

    base = tmp_path_factory.mktemp("trained30")
    root = make_mvtec(base / "data", n_train=4)
    cfg = config_from_dict({"dataset": {"layout": "mvtec", "root": str(root), "image_size": 16, "holdout_min": 1,
                                        "categories": ["bottle"]},
                            "models": {"preset": "tiny", "train_steps": 2, "checkpoint_every": 2, "batch_size": 2},
                            "variants": {"enabled": ["static-gaussian"]},
                            "output": {"root": str(base / "out")}})
    manifest = scan_dataset("mvtec", root)
    kind = cfg.models_needed()[0]
    folder = train_one(Prepared.of(cfg, manifest), "bottle", kind, device="cpu")
    return cfg, manifest, folder


@pytest.mark.slow
@pytest.mark.trains
@pytest.mark.parametrize("key,value", [("noise_kind", "simplex"), ("seed", 12345), ("model_id", "0123abcd"),
                                       ("schedule", {"kind": "cosine", "timesteps": 1000, "beta_start": 1e-4,
                                                     "beta_end": 0.02})])
def test_an_edited_meta_json_is_refused(trained: tuple, key: str, value: object) -> None:
    from raydiff.models.checkpoint import expected_meta, load_model

    cfg, _, folder = trained
    kind = cfg.models_needed()[0]
    meta_path = folder / "meta.json"
    original = meta_path.read_text()
    load_model(folder, expect=expected_meta(cfg, kind, "bottle"))  # the untouched checkpoint is accepted
    meta = json.loads(original)
    meta[key] = value
    meta_path.write_text(json.dumps(meta))
    try:
        with pytest.raises(CheckpointError, match=f"records {key} = .*this is not the config's model") as err:
            load_model(folder, expect=expected_meta(cfg, kind, "bottle"))
        assert str(folder) in str(err.value) and "re-train" in str(err.value)
    finally:
        meta_path.write_text(original)


@pytest.mark.slow
@pytest.mark.trains
def test_fit_refuses_an_edited_checkpoint(trained: tuple) -> None:
    from raydiff.data.splits import assign_holdout
    from raydiff.workflow import fit_one

    cfg, manifest, folder = trained
    meta_path = folder / "meta.json"
    original = meta_path.read_text()
    meta_path.write_text(json.dumps({**json.loads(original), "noise_kind": "gmm"}))
    try:
        with pytest.raises(CheckpointError, match="noise_kind"):
            fit_one(Prepared.of(cfg, assign_holdout(manifest, 0.2, 1, 0)), "bottle", "cpu")
        assert not fitted_dir(cfg, "bottle").exists()
    finally:
        meta_path.write_text(original)


@pytest.mark.slow
@pytest.mark.trains
def test_fit_reports_its_passes_over_the_held_out_images(trained: tuple) -> None:
    """Issue 31 item 7: the fit says images done / total with an ETA (the CLI and a Ray fit task
    pass their own channel: click.echo, ``placement.worker_line``)."""
    from raydiff.data.splits import assign_holdout
    from raydiff.workflow import fit_one

    cfg, manifest, _ = trained
    lines: list[str] = []
    try:
        fit_one(Prepared.of(cfg, assign_holdout(manifest, 0.5, 2, 0)), "bottle", "cpu", progress=lines.append)
    finally:
        shutil.rmtree(fitted_dir(cfg, "bottle"), ignore_errors=True)
    assert [ln.split(", ETA")[0] for ln in lines] == [
        "[fit] bottle: component statistics (pass 1 of 2): 2/2 images",
        "[fit] bottle: final-map statistics (pass 2 of 2): 2/2 images",
    ], lines


@pytest.mark.slow
@pytest.mark.trains
def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(trained: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    import raydiff.models.checkpoint as ckpt

    cfg, _, folder = trained
    state = ckpt.load_training_state(folder)
    before = sorted(p.name for p in folder.iterdir())
    with monkeypatch.context() as m:
        m.setattr(ckpt, "save_file", _enospc)
        with pytest.raises(CheckpointError, match="No space left") as err:
            ckpt.save_checkpoint(folder, state.unet, state.ema_unet, torch_adam(state.unet), 3, state.meta)
    assert str(folder) in str(err.value)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert not list(folder.parent.glob(f".tmp-{folder.name}-*"))


def torch_adam(unet: object) -> object:
    import torch

    opt = torch.optim.Adam(unet.parameters())  # type: ignore[attr-defined]
    for p in unet.parameters():  # type: ignore[attr-defined]
        p.grad = torch.zeros_like(p)
    opt.step()
    return opt


# --------------------------------------------------------------------------------------------
# One line owed: score without a model, output inside the dataset, advice naming a real option
# --------------------------------------------------------------------------------------------


def test_score_without_a_trained_model_is_one_line_before_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raydiff import workflow

    monkeypatch.setattr(workflow, "init_ray", lambda *_a, **_k: pytest.fail("Ray started"))
    root = make_mvtec(tmp_path / "data", n_train=4)
    code, out = cli("score", "--dataset-root", str(root), "--output", str(tmp_path / "out"),
                    "--set", "dataset.image_size=16", "--set", "models.preset=tiny")
    line = one_error_line(out)
    assert code == 2 and "is not trained" in line and "raydiff train --category bottle" in line


@pytest.mark.parametrize("inside", [".", "o"])
def test_output_inside_the_dataset_is_refused(tmp_path: Path, inside: str) -> None:
    root = make_mvtec(tmp_path / "data", n_train=4)
    code, out = cli("fit", "--dataset-root", str(root), "--output", str(root / inside),
                    "--set", "dataset.image_size=16", "--set", "models.preset=tiny")
    line = one_error_line(out)
    assert code == 2 and "inside the dataset root" in line
    assert sorted(p.name for p in root.iterdir()) == ["bottle"]


def test_the_overwrite_advice_names_the_command_that_has_it(tmp_path: Path) -> None:
    from dataclasses import replace

    cfg = fake_run(tmp_path)
    other = replace(cfg, seed=cfg.seed + 1)
    run_dir(other).mkdir(parents=True)
    shutil.copy(run_dir(cfg) / "config.yaml", run_dir(other) / "config.yaml")
    with pytest.raises(OutputError, match=r"raydiff sweep --overwrite"):
        write_run_metadata(other)


# --------------------------------------------------------------------------------------------
# Warnings owed: an image size far above the images', a hold-out that leaves one training image
# --------------------------------------------------------------------------------------------


def test_an_image_size_many_times_the_images_is_warned_about(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data", size=(4, 4))
    code, out = cli("validate", str(root), "--set", "dataset.image_size=512")
    assert code == 0, out
    warned = [ln for ln in out.splitlines() if "dataset.image_size 512 is 128x" in ln]
    assert len(warned) == 1 and "bottle" in warned[0] and "4 px" in warned[0], out
    code, out = cli("validate", str(root), "--set", "dataset.image_size=16")  # 4x: a plain resize
    assert code == 0 and "image_size" not in out, out


def test_a_holdout_min_that_leaves_one_training_image_is_warned_about(tmp_path: Path) -> None:
    from raydiff.data.splits import capped_holdouts

    root = make_mvtec(tmp_path / "data", categories=("bottle", "cable"), n_train=5)
    manifest = scan_dataset("mvtec", root)
    assert capped_holdouts(manifest, 0.1, 3) == []  # 3 of 5 held out, 2 left to train on
    assert capped_holdouts(manifest, 0.1, 10) == [("bottle", 5, 4), ("cable", 5, 4)]
    assert capped_holdouts(manifest, 0.0, 10) == []  # no hold-out at all: nothing is capped
    code, out = cli("validate", str(root), "--set", "dataset.holdout_min=10")
    assert code == 0, out
    assert "dataset.holdout_min 10" in out and "bottle (4 of 5), cable (4 of 5)" in out, out
    code, out = cli("validate", str(root), "--set", "dataset.holdout_min=2")
    assert code == 0 and "holdout_min" not in out, out
