"""``raydiff predict`` on a small run folder: the run's own test images get the run's stored scores.

The run: the session's tiny ``pixel`` model (tests/conftest.py ``texture_models``) copied to the
run's model folder, fitted in process, and its test images scored by the pipeline's own
``ScoringActor`` (called directly, without Ray Data) and committed through ``raydiff.runs``, so
the stored rows are what a sweep writes. Predict then scores the same files in other batches
(all at once, plus a resized copy of one): same models, fitted statistics and per-image seeds →
same numbers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.trains]

VARIANTS = {
    "no-diffusion": {"method": "no-diffusion", "model": "pixel", "t0": 50, "steps": 3, "sampler": "ddim", "sigma": 1.0},
    "kl": {"method": "kl", "model": "pixel", "timesteps": [20, 200], "feature_weight": 0.0, "sigma": 1.0},
}


@pytest.fixture(scope="module")
def run(texture_models, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:  # noqa: ANN001
    from raydiff.config import config_from_dict, config_to_dict
    from raydiff.io import is_complete
    from raydiff.paths import model_dir, partition_dir, run_dir
    from raydiff.pipeline import ScoringActor, category_test_rows
    from raydiff.runs import TABLES, commit_staged, part_name, write_run_metadata
    from raydiff.workflow import fit_one, prepare

    out = tmp_path_factory.mktemp("predict-run") / "out"
    data = config_to_dict(texture_models.cfg)
    data["output"] = {"root": str(out)}
    data["variants"] = {**VARIANTS, "enabled": list(VARIANTS)}
    data["ray"] = {**data["ray"], "scoring_batch_size": 2}
    cfg = config_from_dict(data).with_models(("pixel",), train_steps=150, checkpoint_every=150)
    shutil.copytree(texture_models.path("pixel"), model_dir(cfg, "brick", "pixel"))
    assert is_complete(model_dir(cfg, "brick", "pixel"))
    prepared = prepare(cfg)
    manifest = prepared.manifest
    write_run_metadata(cfg)
    fit_one(prepared, "brick", "cpu")

    # The pipeline's scoring step, batch by batch (what Ray Data's actor pool runs), then its commit.
    rows = category_test_rows(manifest, "brick")
    items = rows.select("image_id", "defect_type", "label", "image_path", pl.col("mask_path").fill_null("")).with_row_index("index")
    actor = ScoringActor(cfg, "brick", list(VARIANTS), "test", 1)
    size = cfg.dataset.image_size
    parts = []
    for first in range(0, items.height, 2):
        batch = {c: items[c].to_numpy()[first:first + 2] for c in items.columns}
        actor(batch)
        parts.append(part_name(first))
    for table in TABLES:
        for v in VARIANTS:
            per_image = size * size if table == "pixels" else 1
            commit_staged(partition_dir(cfg, table, "brick", v), "test", parts, items.height * per_image, {})
    return SimpleNamespace(cfg=cfg, dir=run_dir(cfg), rows=rows, out=out)


def test_predict_reproduces_the_runs_scores_and_writes_overlays(run: SimpleNamespace, tmp_path: Path) -> None:
    from raydiff.predict import overlay_name, predict
    from raydiff.runs import scan_images, scan_pixels

    test_dir = Path(run.cfg.dataset.root) / "brick" / "test"
    big = tmp_path / "new" / "big.png"  # a new image of another size: scored after resizing as the run did
    big.parent.mkdir()
    Image.open(run.rows["image_path"][0]).resize((80, 48)).save(big)
    result = predict(run.dir, [test_dir, big], tmp_path / "pred", fpr=0.05)
    out = tmp_path / "pred"
    assert (out / "_SUCCESS").is_file() and (out / "meta.json").is_file()

    got = pl.read_parquet(out / "scores.parquet")
    assert pl.read_csv(out / "scores.csv").height == got.height == (run.rows.height + 1) * len(VARIANTS)
    stored = scan_images(run.dir).select("variant", "image_id", "score").collect()
    both = stored.join(got, on=["variant", "image_id"], suffix="_predict")
    assert both.height == run.rows.height * len(VARIANTS)  # the run's ids: relative to the category folder
    np.testing.assert_allclose(both["score_predict"], both["score"], rtol=1e-5, atol=1e-6)

    pixels = pl.read_parquet(out / "pixels" / "category=brick" / "variant=kl")
    assert pixels.columns == ["image_id", "y", "x", "score"]
    ref = scan_pixels(run.dir).filter(pl.col("variant") == "kl").select("image_id", "y", "x", "score").collect()
    joined = ref.join(pixels, on=["image_id", "y", "x"], suffix="_predict")
    assert joined.height == ref.height
    np.testing.assert_allclose(joined["score_predict"], joined["score"], rtol=1e-5, atol=1e-6)

    # Threshold: the (1 - fpr) quantile of the run's normal test images' pixels, per variant.
    normal = scan_pixels(run.dir).filter((pl.col("label") == 0) & (pl.col("variant") == "kl")).collect()
    expected = normal["score"].quantile(0.95, interpolation="higher")
    thr = result["thresholds"].filter(pl.col("variant") == "kl")["threshold"].item()
    assert thr == pytest.approx(expected)
    assert got.filter(pl.col("variant") == "kl")["pixel_threshold"].unique().to_list() == [pytest.approx(expected)]

    png = out / "overlays" / "kl" / overlay_name("big.png")
    assert Image.open(png).size == (80, 48)
    first = run.rows["image_id"][0]
    assert Image.open(out / "overlays" / "kl" / overlay_name(first)).size == Image.open(run.rows["image_path"][0]).size


def test_predict_one_variant_and_bad_input_in_one_line(run: SimpleNamespace, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from raydiff.cli import main

    runner = CliRunner()
    image = run.rows["image_path"][0]

    def fails(*args: str) -> str:
        result = runner.invoke(main, ["predict", *args])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1, result.output
        return lines[0]

    ok = runner.invoke(main, ["predict", str(run.dir), image, "--output", str(tmp_path / "one"), "--variant", "kl"])
    assert ok.exit_code == 0, ok.output
    assert pl.read_csv(tmp_path / "one" / "scores.csv")["variant"].to_list() == ["kl"]

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    assert str(bad) in fails(str(run.dir), str(bad), "--output", str(tmp_path / "o1"))
    assert "not a raydiff run folder" in fails(str(tmp_path), image, "--output", str(tmp_path / "o2"))
    assert "its variants: no-diffusion, kl" in fails(str(run.dir), image, "--output", str(tmp_path / "o3"), "--variant", "nope")
    assert "only ray.* keys" in fails(str(run.dir), image, "--output", str(tmp_path / "o5"), "--set", "dataset.image_size=64")

    moved = tmp_path / "moved-models"
    shutil.move(str(run.out / "models"), moved)  # a run folder whose models are gone
    try:
        line = fails(str(run.dir), image, "--output", str(tmp_path / "o4"))
        assert "run `raydiff sweep" in line and "pixel" in line
    finally:
        shutil.move(str(moved), str(run.out / "models"))


@pytest.mark.ray
def test_predict_on_ray_writes_what_the_in_process_path_writes(run: SimpleNamespace, tmp_path: Path) -> None:
    """``--ray`` (a Ray of this test's own, ``ray.address=local``): actors score, the driver
    writes; same files, same scores and maps as in process. 5 images (the test set and an image
    of another size) in batches of 2: the driver regroups what the actors return into the
    in-process path's batches (part files)."""
    import json

    from click.testing import CliRunner

    from raydiff.cli import main

    big = tmp_path / "new" / "big.png"
    big.parent.mkdir()
    Image.open(run.rows["image_path"][1]).resize((80, 48)).save(big)
    images = [str(Path(run.cfg.dataset.root) / "brick" / "test"), str(big)]
    runner = CliRunner()
    local = runner.invoke(main, ["predict", str(run.dir), *images, "--output", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    on_ray = runner.invoke(main, ["predict", str(run.dir), *images, "--output", str(tmp_path / "ray"),
                                  "--ray", "--set", "ray.address=local"])
    assert on_ray.exit_code == 0, on_ray.output

    def files(folder: Path) -> list[str]:
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    assert files(tmp_path / "ray") == files(tmp_path / "local")
    assert "pixels/category=brick/variant=kl/part-000004.parquet" in files(tmp_path / "local")
    keys = ["variant", "image_id"]
    a = pl.read_parquet(tmp_path / "local" / "scores.parquet").sort(keys)
    b = pl.read_parquet(tmp_path / "ray" / "scores.parquet").sort(keys)
    assert a.height == 5 * len(VARIANTS) and a.select(keys).equals(b.select(keys))
    # float32 sums in another order (a 1-CPU actor vs the driver's threads): up to ~1e-4 of a map's
    # scale in make test; a wrong image or order differs by O(1).
    np.testing.assert_allclose(b["score"], a["score"], rtol=1e-4, atol=1e-4 * float(np.abs(a["score"]).max()))
    # A pixel within float32 rounding of the threshold may count on one side only (1e-6 differences
    # from thread counts, seen once in make test): at most one pixel per image and variant.
    above = np.abs(np.array(a["pixels_above"].to_list()) - np.array(b["pixels_above"].to_list()))
    assert above.max() <= 1 and (above == 0).mean() >= 0.9, above
    for v in VARIANTS:
        part = Path("pixels") / "category=brick" / f"variant={v}"
        pa_, pb = (pl.read_parquet(tmp_path / d / part).sort("image_id", "y", "x") for d in ("local", "ray"))
        assert pa_.select("image_id", "y", "x").equals(pb.select("image_id", "y", "x"))
        np.testing.assert_allclose(pb["score"], pa_["score"], rtol=1e-4, atol=1e-4 * float(np.abs(pa_["score"]).max()))
    ran = json.loads((tmp_path / "ray" / "meta.json").read_text())["ran"]
    assert ran["on"] == "ray" and ran["placement"] and all(r["device"] == "cpu" for r in ran["placement"])
    assert json.loads((tmp_path / "local" / "meta.json").read_text())["ran"]["on"] == "in-process"
