"""MVTec AD 2 (layout ``mvtec-ad2``): a tiny tree in the dataset's real folder structure and file
names (tests/datatrees.py ``make_mvtec_ad2``; raydiff/data/manifest.py cites where they come
from) becomes the manifest, fails validation with one line naming the file and the fix, holds
out validation/good, and a run on it exports the private test sets in the folder MVTec's
evaluation server takes (checked with tifffile, as MVTec's checker reads them, and against
``raydiff predict``'s maps of the same images resized independently with PIL).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from datatrees import make_mvtec_ad2, save_image, save_mask

from raydiff.data.manifest import detect_layout, infer_kind, scan_dataset
from raydiff.data.splits import assign_holdout
from raydiff.data.validate import validate_dataset
from raydiff.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]


def test_manifest_of_the_real_folder_structure(tmp_path: Path) -> None:
    root = make_mvtec_ad2(tmp_path, ("can", "vial"))
    assert detect_layout(root) == "mvtec-ad2"
    m = scan_dataset("mvtec-ad2", root)
    assert infer_kind(m) == "mvtec-ad2" and set(m["dataset"]) == {"mvtec-ad2"}
    can = m.filter(pl.col("category") == "can")
    counts = dict(can.group_by("split").len().iter_rows())
    assert counts == {"train": 3, "holdout": 2, "test": 4, "test_private": 2, "test_private_mixed": 2}
    assert can.filter(pl.col("split") == "holdout")["image_id"].to_list() == [
        "validation/good/000_regular.png", "validation/good/001_regular.png"]
    test = can.filter(pl.col("split") == "test").sort("image_id")
    assert test.select("image_id", "label", "defect_type").rows() == [
        ("test_public/bad/000_regular.png", 1, "bad"), ("test_public/bad/000_shift_1.png", 1, "bad"),
        ("test_public/good/000_overexposed.png", 0, "good"), ("test_public/good/000_regular.png", 0, "good")]
    # Each defective image is paired with the mask of its own stem + "_mask"; normal ones have none.
    for image, mask in test.filter(pl.col("label") == 1).select("image_path", "mask_path").iter_rows():
        assert Path(mask) == root / "can/test_public/ground_truth/bad" / f"{Path(image).stem}_mask.png"
    assert test.filter(pl.col("label") == 0)["mask_path"].null_count() == 2
    private = can.filter(pl.col("split").str.starts_with("test_private")).sort("image_id")
    assert private["image_id"].to_list() == ["test_private/000_regular.png", "test_private/001_regular.png",
                                             "test_private_mixed/000_mixed.png", "test_private_mixed/001_mixed.png"]
    assert private.select(pl.col("label", "mask_path", "defect_type").null_count()).row(0) == (4, 4, 4)

    summary = validate_dataset(m, root)
    assert summary.kind == "mvtec-ad2"
    assert summary.describe().startswith("mvtec-ad2 layout, 2 categories, 26 images (holdout 4, test 8, "
                                         "test_private 4, test_private_mixed 4, train 6; 4 defective)")


def test_validation_names_the_file_and_the_fix(tmp_path: Path) -> None:
    root = make_mvtec_ad2(tmp_path)
    gt = root / "can/test_public/ground_truth/bad"

    def fails() -> str:
        with pytest.raises(DatasetError) as err:
            validate_dataset(scan_dataset("mvtec-ad2", root), root)
        return str(err.value)

    (gt / "000_shift_1_mask.png").unlink()
    msg = fails()
    assert msg.startswith(f"{root / 'can/test_public/bad/000_shift_1.png'}: defective image without a mask")
    assert f"(expected {gt / '000_shift_1_mask.png'})" in msg and "Fix: add the mask" in msg
    save_mask(gt / "000_shift_1_mask.png", (24, 16))

    save_mask(gt / "007_regular_mask.png", (24, 16))
    msg = fails()
    assert msg.startswith(f"{gt / '007_regular_mask.png'}: mask without an image: expected the image "
                          "test_public/bad/007_regular.<ext>")
    (gt / "007_regular_mask.png").unlink()

    stray = save_image(root / "can/test_public/000_regular.png", (24, 16))
    assert fails().startswith(f"{stray}: is a file directly in test_public/, outside any class folder")
    stray.unlink()
    nested = save_image(root / "can/test_private/extra/000_regular.png", (24, 16))
    assert fails().startswith(f"{nested.parent}: is a sub-folder of test_private/ with 1 image(s)")


def test_validation_good_is_the_held_out_set(tmp_path: Path) -> None:
    root = make_mvtec_ad2(tmp_path, ("can", "vial"), n_train=6)
    for p in (root / "vial/validation/good").iterdir():  # vial without its own set: drawn from train/good
        p.unlink()
    m = scan_dataset("mvtec-ad2", root)
    once = assign_holdout(m, 0.5, 1, seed=0)
    assert assign_holdout(once, 0.5, 1, seed=0).equals(once)  # idempotent
    held = once.filter(pl.col("split") == "holdout")
    assert held.filter(pl.col("category") == "can")["image_id"].to_list() == [
        "validation/good/000_regular.png", "validation/good/001_regular.png"]
    assert once.filter((pl.col("category") == "can") & (pl.col("split") == "train")).height == 6
    vial = held.filter(pl.col("category") == "vial")["image_id"].to_list()
    assert len(vial) == 3 and all(i.startswith("train/good/") for i in vial)
    # Nothing else moves: the test sets keep their split.
    assert once.filter(pl.col("split").str.starts_with("test")).equals(m.filter(pl.col("split").str.starts_with("test")))


def test_config_lists_the_eight_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    from raydiff.config import load_config
    from raydiff.export_mvtec_ad2 import OFFICIAL_PRIVATE_IMAGES

    monkeypatch.setenv("MVTEC_AD2_ROOT", "/data/mvtec_ad_2")
    cfg = load_config(REPO / "configs/mvtec-ad2.yaml")
    assert cfg.dataset.layout == "mvtec-ad2" and cfg.dataset.root == "/data/mvtec_ad_2"
    assert list(cfg.dataset.categories) == list(OFFICIAL_PRIVATE_IMAGES) == [
        "can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"]


# --------------------------------------------------------------------------------------------
# The export, on a run of a tiny model trained on the fixture
# --------------------------------------------------------------------------------------------

VARIANT = {"method": "no-diffusion", "model": "pixel", "t0": 50, "steps": 3, "sampler": "ddim", "sigma": 1.0}
SIZE = (48, 32)  # non-square, as MVTec AD 2's images are: maps go back to 48x32


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from raydiff.config import config_from_dict
    from raydiff.paths import run_dir
    from raydiff.runs import write_run_metadata
    from raydiff.train.loop import train_one
    from raydiff.workflow import fit_one, prepare

    base = tmp_path_factory.mktemp("ad2")
    root = make_mvtec_ad2(base / "data", ("can",), n_train=6, size=SIZE)
    cfg = config_from_dict({
        "dataset": {"layout": "mvtec-ad2", "root": str(root), "image_size": 32, "categories": ["can"]},
        "models": {"preset": "tiny", "base_channels": 8, "batch_size": 4, "lr": 2e-3, "ema_decay": 0.9,
                   "train_steps": 10, "checkpoint_every": 10, "pixel": {"arch": "pixel"}},
        "variants": {"no-diffusion": VARIANT},
        "output": {"root": str(base / "out")},
        "ray": {"scoring_batch_size": 3},
        "seed": 0,
    })
    prepared = prepare(cfg)  # validates the tree and holds out validation/good
    manifest = prepared.manifest
    train_one(prepared, "can", "pixel", device="cpu")
    write_run_metadata(cfg)
    fit_one(prepared, "can", "cpu")
    return SimpleNamespace(cfg=cfg, dir=run_dir(cfg), manifest=manifest, root=root, base=base)


def _score_public_test(run: SimpleNamespace) -> None:
    """What a sweep stores for test_public (the pipeline's scoring actor and commit), so the run has
    normal-pixel scores for the binary maps' threshold."""
    from raydiff.paths import partition_dir
    from raydiff.pipeline import ScoringActor, category_test_rows
    from raydiff.runs import TABLES, commit_staged, part_name

    rows = category_test_rows(run.manifest, "can")
    items = rows.select("image_id", "defect_type", "label", "image_path",
                        pl.col("mask_path").fill_null("")).with_row_index("index")
    actor = ScoringActor(run.cfg, "can", ["no-diffusion"], "test", 3)
    actor({c: items[c].to_numpy() for c in items.columns})
    size = run.cfg.dataset.image_size
    for table in TABLES:
        per_image = size * size if table == "pixels" else 1
        commit_staged(partition_dir(run.cfg, table, "can", "no-diffusion"), "test", [part_name(0)],
                      items.height * per_image, {})


@pytest.mark.slow
@pytest.mark.trains
def test_export_writes_the_servers_format(run: SimpleNamespace, tmp_path: Path) -> None:
    import tifffile
    from PIL import Image

    from raydiff.export_mvtec_ad2 import BINARY_DIR, MAPS_DIR, export_mvtec_ad2
    from raydiff.predict import predict

    out = tmp_path / "ad2"
    # 1. A run without scored test images: the maps, no binary folder, and the reason.
    first = export_mvtec_ad2(run.dir, out, "no-diffusion")
    sub = first["submission"]
    assert sorted(p.name for p in sub.iterdir()) == [MAPS_DIR]
    assert any(p.startswith(f"no {BINARY_DIR}/") for p in first["problems"])

    # 2. With test_public scored: the binary maps at the run's threshold too (the folder is replaced).
    _score_public_test(run)
    result = export_mvtec_ad2(run.dir, out, "no-diffusion", fpr=0.05)
    assert (out / "_SUCCESS").is_file() and (out / "meta.json").is_file() and (out / "scores.csv").is_file()
    assert sorted(p.name for p in sub.iterdir()) == [MAPS_DIR, BINARY_DIR]  # nothing else: the checker refuses extras
    names = {"test_private": ["000_regular", "001_regular"], "test_private_mixed": ["000_mixed", "001_mixed"]}
    for top, suffix in ((MAPS_DIR, ".tiff"), (BINARY_DIR, ".png")):
        assert [p.name for p in (sub / top).iterdir()] == ["can"]
        for split, stems in names.items():
            assert sorted(p.name for p in (sub / top / "can" / split).iterdir()) == [s + suffix for s in stems]

    # The reference: predict's maps of the same files (32x32 Parquet), resized here with PIL.
    private = [run.root / "can" / split / f"{s}.png" for split, stems in names.items() for s in stems]
    pred = predict(run.dir, private, tmp_path / "pred", variants=["no-diffusion"], fpr=0.05)
    threshold = pred["thresholds"]["threshold"][0]
    assert threshold is not None and result["thresholds"]["threshold"][0] == pytest.approx(threshold)
    pixels = pl.read_parquet(tmp_path / "pred" / "pixels", hive_partitioning=True)
    for split, stems in names.items():
        for stem in stems:
            iid = f"{split}/{stem}.png"
            px = pixels.filter(pl.col("image_id") == iid).sort("y", "x")
            small = px["score"].to_numpy().reshape(32, 32)
            expect = np.asarray(Image.fromarray(small, mode="F").resize(SIZE, Image.Resampling.BILINEAR))
            got = tifffile.imread(sub / MAPS_DIR / "can" / split / f"{stem}.tiff")
            assert got.dtype == np.float16 and got.shape == (SIZE[1], SIZE[0])
            np.testing.assert_allclose(got.astype(np.float32), expect, rtol=1e-3, atol=1e-3)
            binary = np.asarray(Image.open(sub / BINARY_DIR / "can" / split / f"{stem}.png"))
            assert binary.dtype == np.uint8 and binary.ndim == 2 and set(np.unique(binary)) <= {0, 255}
            assert np.array_equal(binary == 255, expect > threshold)
            score = pred["scores"].filter(pl.col("image_id") == iid)["score"][0]
            assert result["scores"].filter(pl.col("image_id") == iid)["score"][0] == pytest.approx(score)
    problems = result["problems"]
    assert problems[0].startswith("objects missing (the server needs all eight): fabric, fruit_jelly")
    assert "can/test_private: 2 images, the server expects 321" in problems


@pytest.mark.slow
@pytest.mark.trains
def test_export_cli_and_its_errors(run: SimpleNamespace, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from raydiff.cli import main

    cli = CliRunner()
    res = cli.invoke(main, ["export-mvtec-ad2", str(run.dir), "--variant", "no-diffusion", "--split", "test_private",
                            "--output", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    assert f"submission: {tmp_path / 'x' / 'submission'}" in res.output
    assert sorted(p.name for p in (tmp_path / "x/submission/anomaly_images/can").iterdir()) == ["test_private"]
    assert "not accepted by the server as it is: test_private_mixed not exported" in res.output
    res = cli.invoke(main, ["export-mvtec-ad2", str(run.dir), "--variant", "nope", "--output", str(tmp_path / "y")])
    assert res.exit_code != 0 and "'nope' is not a variant of this run; its variants: no-diffusion" in res.output
    res = cli.invoke(main, ["export-mvtec-ad2", str(run.dir), "--variant", "no-diffusion", "--split", "test_public",
                            "--output", str(tmp_path / "y")])
    assert res.exit_code != 0 and "'test_public' is not a private test set of MVTec AD 2" in res.output
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "keep.txt").write_text("mine")
    res = cli.invoke(main, ["export-mvtec-ad2", str(run.dir), "--variant", "no-diffusion", "--output", str(tmp_path / "z")])
    assert res.exit_code != 0 and "is not a `raydiff export-mvtec-ad2` output" in res.output
    assert (tmp_path / "z" / "keep.txt").read_text() == "mine"
