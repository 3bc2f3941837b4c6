"""The whole sweep on a real local Ray: train (Ray Train) → fit → score (Ray Data) → Parquet →
metrics → report, then re-runs: skipping, repairing a lost partition, a killed scoring actor.

One module-scoped Ray (2 CPUs, dashboard on 127.0.0.1) and one tiny texture dataset (brick,
32 px, 3 good + 3 defective test images), tiny models trained for a few steps: the numbers are not
about detection quality but about the plumbing: every pixel of every image once per variant,
nothing duplicated, re-runs bit-identical.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.trains]

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
N_TEST = 6


def _markers(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("_SUCCESS")}


def _scores(folder: Path, table: str) -> pl.DataFrame:
    from raydiff.runs import scan_images, scan_pixels

    if table == "pixels":
        return scan_pixels(folder).select("variant", "image_id", "y", "x", "score", "gt", "region").collect().sort(
            "variant", "image_id", "y", "x")
    return scan_images(folder).select("variant", "image_id", "label", "score").collect().sort("variant", "image_id")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    import ray

    from raydiff import workflow
    from raydiff.config import load_config
    from raydiff.data.textures import make_textures

    base = tmp_path_factory.mktemp("e2e")
    root = make_textures(base / "data", size=SIZE, n_train=12, n_test_good=3, n_test_defect=3, categories=("brick",))
    overrides = {
        "dataset.root": str(root), "output.root": str(base / "out"), "dataset.image_size": SIZE,
        "models.train_steps": 4, "models.checkpoint_every": 4, "models.batch_size": 4,
        "models.latent.vae.vae_train_steps": 2, "ray.scoring_batch_size": 2, "ray.training_runs": 1,
    }
    cfg = load_config(REPO / "configs" / "textures.yaml", overrides)
    killed = base / "killed-once"  # the dying actor's flag (tests/faults.py)
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    try:
        first = workflow.sweep(cfg, limit=2)  # a debugging subset first: the full run must redo it
        limited = _scores(Path(first["run_dir"]), "images")
        result = workflow.sweep(cfg)
        yield SimpleNamespace(cfg=cfg, base=base, root=root, killed=killed, result=result, limited=limited,
                              folder=Path(result["run_dir"]), overrides=overrides)
    finally:
        ray.shutdown()


def test_sweep_writes_every_pixel_once_per_variant(run: SimpleNamespace) -> None:
    from raydiff.data.images import load_mask

    variants = list(run.cfg.variants.enabled)
    assert run.limited.group_by("variant").len()["len"].to_list() == [2] * len(variants)
    pixels, images = _scores(run.folder, "pixels"), _scores(run.folder, "images")
    assert sorted(pixels["variant"].unique().to_list()) == sorted(variants)
    assert pixels.height == len(variants) * N_TEST * SIZE * SIZE
    assert pixels.unique(["variant", "image_id", "y", "x"]).height == pixels.height  # no duplicates
    assert images.height == len(variants) * N_TEST and images["label"].sum() == len(variants) * 3
    assert pixels["score"].is_finite().all() and images["score"].is_finite().all()
    # The gt column is the mask on disk, pixel for pixel.
    one = pixels.filter(pl.col("variant") == variants[0])
    for image_id, rows in one.group_by("image_id"):
        image_id = image_id[0]
        mask = run.root / "brick" / "ground_truth" / Path(image_id).parent.name / f"{Path(image_id).stem}_mask.png"
        expected = load_mask(mask, SIZE, run.cfg.dataset.resize) if mask.exists() else np.zeros((SIZE, SIZE), np.uint8)
        got = np.zeros((SIZE, SIZE), np.int8)
        got[rows["y"].to_numpy(), rows["x"].to_numpy()] = rows["gt"].to_numpy()
        np.testing.assert_array_equal(got, expected.astype(np.int8), err_msg=image_id)
        assert (rows["region"].to_numpy() > 0).sum() == expected.sum()


def test_metrics_and_report_written(run: SimpleNamespace) -> None:
    metrics = pl.read_csv(run.result["metrics"])
    assert sorted(metrics["variant"].to_list()) == sorted(run.cfg.variants.enabled)
    for col in ("i_auroc", "p_auroc", "p_ap", "aupro", "unet_forwards_per_image"):
        assert metrics[col].null_count() == 0 and metrics[col].is_finite().all(), col
    assert metrics["i_auroc"].is_between(0, 1).all()
    # Provenance: no RESNET34_WEIGHTS and no vae_path, so φ is random and the VAE trained here;
    # each column is set only for the variants it applies to.
    cfg = run.cfg
    for row in metrics.iter_rows(named=True):
        uses_features = cfg.variants.method(row["variant"]).uses_features
        latent = cfg.model_spec(cfg.variants.model(row["variant"])).is_latent
        assert row["feature_weights"] == ("random-init" if uses_features else None), row["variant"]
        assert row["vae"] == ("trained" if latent else None), row["variant"]
    assert 0 <= metrics["argmax_on_border"].min() and metrics["argmax_on_border"].max() <= 1
    assert "Provenance: feature extractor" in Path(run.result["report"]).read_text()
    assert Path(run.result["report"]).is_file()
    assert (run.folder / "config.yaml").is_file() and (run.folder / "versions.json").is_file()


def test_rerun_skips_then_repairs_a_lost_partition(run: SimpleNamespace) -> None:
    from raydiff import workflow
    from raydiff.paths import partition_dir

    out = Path(run.cfg.output.root)
    before, reference = _markers(out), _scores(run.folder, "pixels")
    quality = ["category", "variant", "i_auroc", "p_auroc", "p_ap", "aupro"]  # not the measured seconds
    metrics_before = pl.read_csv(run.folder / "metrics.csv").select(quality)
    again = workflow.sweep(run.cfg)
    assert _markers(out) == before  # nothing trained, fitted or scored twice
    assert all(s["images"] == 0 for s in again["scoring"])

    lost = partition_dir(run.cfg, "pixels", "brick", "kl")
    shutil.rmtree(lost)
    workflow.sweep(run.cfg)
    assert (lost / "_SUCCESS").is_file()
    after = _scores(run.folder, "pixels")
    assert after.height == reference.height
    assert after.equals(reference)  # recomputed bit for bit (seeded per image)
    assert pl.read_csv(run.folder / "metrics.csv").select(quality).equals(metrics_before)


def test_killed_scoring_actor_same_parquet_any_batch_size(run: SimpleNamespace) -> None:
    from faults import dying_scoring_actor

    from raydiff.config import load_config
    from raydiff.pipeline import score_category
    from raydiff.workflow import prepare

    reference_pixels, reference_images = _scores(run.folder, "pixels"), _scores(run.folder, "images")
    for table in ("pixels", "images"):
        shutil.rmtree(run.folder / table)
    cfg = load_config(REPO / "configs" / "textures.yaml", {**run.overrides, "ray.scoring_batch_size": 3})
    dying = dying_scoring_actor(after_batches=0, flag=run.killed)  # exits hard after writing its first batch, once
    summary = score_category(prepare(cfg), "brick", progress=False, actor=dying)
    assert run.killed.read_text() == "killed", "the kill hook did not fire"
    assert summary["images"] == N_TEST
    # Same rows, no duplicates, no partial partition. The scores equal the batch-2 reference to
    # float32 rounding only: torch's CPU convolutions pick kernels by batch size, so a batch of 3
    # and a batch of 2 differ in the last bits (same batch size: bit for bit, as the repair test
    # checks). Every other column is exact.
    for table, reference in (("pixels", reference_pixels), ("images", reference_images)):
        got = _scores(run.folder, table)
        assert got.height == reference.height
        assert got.drop("score").equals(reference.drop("score")), table
        np.testing.assert_allclose(got["score"].to_numpy(), reference["score"].to_numpy(), rtol=1e-4, atol=1e-5)
    assert not [p for p in run.folder.rglob("*") if p.name.startswith(".tmp")]  # no temporaries left


def test_cli_commands_one_category_on_tiny_models(run: SimpleNamespace, tmp_path: Path) -> None:
    """train (in process) → fit → score (--limit, on this module's Ray) → metrics → report → inspect."""
    from click.testing import CliRunner

    from raydiff.cli import main

    runner = CliRunner()
    common = ["--config", str(REPO / "configs" / "textures.yaml"), "--dataset-root", str(run.root),
              "--output", str(tmp_path / "out"), "--set", f"dataset.image_size={SIZE}",
              "--set", "models.train_steps=2", "--set", "models.checkpoint_every=2",
              "--set", "variants.enabled=[kl, no-diffusion]", "--set", "ray.scoring_batch_size=2"]

    def ok(*args: str) -> str:
        result = runner.invoke(main, list(args))
        assert result.exit_code == 0, (args, result.output)
        return result.output

    ok("train", *common, "--category", "brick")
    assert list((tmp_path / "out" / "models").rglob("pixel/_SUCCESS"))
    ok("fit", *common, "--category", "brick")
    out = ok("score", *common, "--category", "brick", "--limit", "2")
    assert "brick" in out
    out = ok("metrics", *common)
    assert "kl" in out and "no-diffusion" in out
    run_dir = next(p.parent for p in (tmp_path / "out").glob("*/metrics.csv"))
    ok("report", str(run_dir))
    assert (run_dir / "report.html").is_file()
    ok("inspect", str(run_dir), "--top", "2", "--output", str(tmp_path / "tables"))
    assert list((tmp_path / "tables").glob("*.parquet"))
    images = pl.read_csv(run_dir / "metrics.csv")
    assert sorted(images["variant"].to_list()) == ["kl", "no-diffusion"]
