"""Report and error analysis on a synthetic run folder (written with the pipeline's own writers)."""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from raydiff.config import config_from_dict, dump_config
from raydiff.inspect_run import inspect_run
from raydiff.metrics import METRIC_COLUMNS, compute_metrics, label_regions
from raydiff.paths import partition_dir, run_dir
from raydiff.runs import IMAGE_SCHEMA, PIXEL_SCHEMA, PartitionWriter, image_table, pixel_table, scan_images, scan_pixels
from raydiff.report import manifest_paths, write_report
from raydiff.report_tables import category_means

SIZE = 64
#: (defect_type, index, boxes (y0, y1, x0, x1)): the GT components of each test image.
TEST_IMAGES: tuple[tuple[str, int, tuple[tuple[int, int, int, int], ...]], ...] = (
    ("good", 0, ()),
    ("good", 1, ()),
    ("good", 2, ()),
    ("crack", 0, ((10, 20, 10, 30),)),
    ("crack", 1, ((5, 15, 5, 15), (40, 44, 40, 60))),  # second component: planted miss
    ("scratch", 0, ((30, 50, 30, 34),)),
)
PLANTED_FP = "test/good/001.png"
PLANTED_MISS = ("test/crack/001.png", 2)


@dataclass
class Run:
    root: Path
    cfg_data: dict
    maps: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)  # (cat, variant) -> id -> map
    gts: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (cat, id) -> gt


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_run(
    tmp_path: Path,
    categories: tuple[str, ...] = ("carpet", "bottle"),
    variants: tuple[str, ...] = ("static-gaussian", "kl"),
    name: str = "mvtec",
    only_good: bool = False,
) -> Run:
    """MVTec-layout PNGs + a run folder whose partitions are written by the pipeline's writers.

    Maps: N(0, 1) noise + ``strength`` on GT pixels (4 for the first variant, 0.7 for the
    second), except the planted missed region (no signal); a +5 blob on the planted normal image.
    """
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    images = [t for t in TEST_IMAGES if t[0] == "good"] if only_good else list(TEST_IMAGES)
    cfg_data = {
        "dataset": {"layout": "mvtec", "name": name, "root": str(data), "image_size": SIZE},
        "output": {"root": str(tmp_path / "out")},
    }
    cfg = config_from_dict(cfg_data)
    run = Run(run_dir(cfg), cfg_data)
    for cat in categories:
        write_png(data / cat / "train" / "good" / "000.png", rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        ids, defects, labels, gts = [], [], [], []
        for defect, i, boxes in images:
            image_id = f"test/{defect}/{i:03d}.png"
            gt = np.zeros((SIZE, SIZE), np.uint8)
            for y0, y1, x0, x1 in boxes:
                gt[y0:y1, x0:x1] = 1
            write_png(data / cat / image_id, rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
            if boxes:
                write_png(data / cat / "ground_truth" / defect / f"{i:03d}_mask.png", gt * 255)
            ids.append(image_id)
            defects.append(defect)
            labels.append(int(bool(boxes)))
            gts.append(gt)
            run.gts[(cat, image_id)] = gt
        batch = {
            "image_id": np.array(ids, dtype=object),
            "defect_type": np.array(defects, dtype=object),
            "label": np.array(labels, np.int8),
            "gt": np.stack(gts).astype(np.int8),
            "region": np.stack([label_regions(g) for g in gts]),
        }
        for k, variant in enumerate(variants):
            maps = rng.normal(0.0, 1.0, (len(ids), SIZE, SIZE)).astype(np.float32)
            strength = 4.0 if k == 0 else 0.7
            for n, image_id in enumerate(ids):
                gt = batch["gt"][n].astype(bool)
                if image_id == PLANTED_MISS[0]:
                    gt = gt & (batch["region"][n] != PLANTED_MISS[1])  # the planted region gets no signal
                maps[n][gt] += strength
                if image_id == PLANTED_FP:
                    maps[n][20:30, 20:30] += 5.0
            batch[f"map:{variant}"] = maps
            batch[f"score:{variant}"] = maps.reshape(len(ids), -1).max(axis=1)
            batch[f"forwards:{variant}"] = np.full(len(ids), 5.0 * (k + 1), np.float32)
            batch[f"seconds:{variant}"] = np.full(len(ids), 0.1 * (k + 1), np.float32)
            run.maps[(cat, variant)] = dict(zip(ids, maps, strict=True))
            for table, schema, build in (("pixels", PIXEL_SCHEMA, pixel_table), ("images", IMAGE_SCHEMA, image_table)):
                w = PartitionWriter(partition_dir(cfg, table, cat, variant), schema)
                w.write(build(batch, variant))
                w.commit({"images": len(ids)})
    (run.root / "config.yaml").write_text(dump_config(cfg))
    return run


def test_report_files_and_numbers(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    report = write_report(run.root)
    assert report == run.root / "report.html" and report.is_file()
    text = report.read_text()
    for word in ("carpet", "bottle", "static-gaussian", "kl", "textures", "objects"):
        assert word in text
    # Published numbers appear for a dataset named mvtec, labelled and with caveats.
    assert "Published numbers (mvtec)" in text and "Fučka Gaussian" in text and "nearest-neighbour" in text
    # Paired only with a variant that reproduces the paper's setting: this run has none.
    assert "none (no variant of this run has reproduces: fucka-gaussian)" in text
    assert "Reconstructions are not stored" in text
    assert "Input images not shown" not in text

    expected = compute_metrics(scan_pixels(run.root), scan_images(run.root)).sort("dataset", "category", "variant")
    for name in ("metrics.csv", "metrics.parquet"):
        path = run.root / name
        got = (pl.read_csv(path) if name.endswith(".csv") else pl.read_parquet(path)).sort("dataset", "category", "variant")
        assert got.height == 4
        for col in expected.columns:
            if col in METRIC_COLUMNS:
                np.testing.assert_allclose(got[col].to_numpy(), expected[col].to_numpy(), rtol=1e-12)
            else:
                assert got[col].cast(pl.String).to_list() == expected[col].cast(pl.String).to_list()
    metrics = pl.read_parquet(run.root / "metrics.parquet")
    cost = dict(zip(metrics["variant"], metrics["seconds_per_image"], strict=True))
    assert cost["static-gaussian"] == pytest.approx(0.1) and cost["kl"] == pytest.approx(0.2)
    forwards = dict(zip(metrics["variant"], metrics["unet_forwards_per_image"], strict=True))
    assert forwards == {"static-gaussian": 5.0, "kl": 10.0}
    by_defect = pl.read_parquet(run.root / "metrics_by_defect.parquet")
    assert set(by_defect["defect_type"]) == {"crack", "scratch"} and by_defect.height == 8
    expected_by_defect = compute_metrics(scan_pixels(run.root), scan_images(run.root), by_defect=True)
    assert by_defect.sort("category", "variant", "defect_type")["aupro"].to_list() == pytest.approx(
        expected_by_defect.sort("category", "variant", "defect_type")["aupro"].to_list()
    )

    pngs = sorted(p.name for p in (run.root / "report").glob("*.png"))
    # cost scatter, per category: every variant side by side and the curves, examples per category × variant
    assert len(pngs) == 1 + 2 + 2 + 4
    assert sum(p.startswith("side-") for p in pngs) == 2
    assert all((run.root / "report" / p).stat().st_size > 1000 for p in pngs)
    for p in pngs:
        assert f"report/{p}" in text
    # A table of contents whose links all land on an anchor, one per category; the units explained.
    links = set(re.findall(r"href='#([^']+)'", text))
    anchors = set(re.findall(r"id='([^']+)'", text))
    assert {"mvtec-bottle", "mvtec-carpet"} <= links and links <= anchors
    assert "Score units" in text and "pixel FPR 0.01" in text

    # Precomputed tables (as the sweep has them) give the same files, in another folder.
    other = write_report(run.root, out=tmp_path / "elsewhere", metrics=expected, by_defect=expected_by_defect)
    assert other == tmp_path / "elsewhere" / "report.html" and other.is_file()
    assert pl.read_parquet(tmp_path / "elsewhere" / "metrics.parquet").equals(metrics)
    assert len(list((tmp_path / "elsewhere" / "report").glob("*.png"))) == len(pngs)

    # Mean rows: plain means over the categories of each group (carpet = texture, bottle = object).
    means = category_means(metrics)
    for row in means.iter_rows(named=True):
        cats = {"all": ["bottle", "carpet"], "textures": ["carpet"], "objects": ["bottle"]}[row["group"]]
        sub = metrics.filter((pl.col("variant") == row["variant"]) & pl.col("category").is_in(cats))
        assert row["aupro"] == pytest.approx(float(np.mean(sub["aupro"].to_numpy())))
    # The manifest resolves every scored image to its file (the examples show the inputs).
    paths, why = manifest_paths(config_from_dict(run.cfg_data), ["bottle", "carpet"])
    assert why is None and all(((c, i) in paths) for (c, i) in run.gts)


def test_report_single_category_subset_of_variants_and_undefined_metrics(tmp_path: Path) -> None:
    run = make_run(tmp_path, categories=("grass",), variants=("trend",), name="textures", only_good=True)
    (run.root / "config.yaml").unlink()
    text = write_report(run.root).read_text()
    assert "grass" in text and "trend" in text
    assert "Published numbers" not in text  # no published numbers for another dataset
    assert "n/a" in text and "Input images not shown" in text
    metrics = pl.read_csv(run.root / "metrics.csv")
    assert metrics.height == 1 and metrics["i_auroc"].is_null().all() and metrics["aupro"].is_null().all()
    assert len(list((run.root / "report").glob("*.png"))) == 4


def test_inspect_matches_hand_computed_answers(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    fpr = 0.01
    res = inspect_run(run.root, fpr=fpr, top=2, coverage_below=0.1)
    assert set(res) == {"thresholds", "false_positives", "missed_regions", "missed_summary", "score_distributions"}

    thr = {(r["category"], r["variant"]): r["threshold"] for r in res["thresholds"].iter_rows(named=True)}
    for (cat, variant), maps in run.maps.items():
        normal = np.concatenate([m[run.gts[(cat, i)] == 0] for i, m in maps.items()])
        t = np.quantile(normal, 1 - fpr, method="higher")
        assert thr[(cat, variant)] == pytest.approx(float(t))
        assert (normal > t).mean() <= fpr

    fp = res["false_positives"]
    for variant in ("static-gaussian", "kl"):
        rows = fp.filter(pl.col("variant") == variant).sort("rank")
        assert rows.height == 2  # top per variant, over both categories
        counts = sorted(
            (int((m > thr[(cat, v)]).sum()), cat, i)
            for (cat, v), maps in run.maps.items()
            if v == variant
            for i, m in maps.items()
            if i.startswith("test/good")
        )[::-1]
        assert rows["fp_pixels"].to_list() == [c for c, _, _ in counts[:2]]
        assert rows["image_id"].to_list() == [PLANTED_FP, PLANTED_FP]  # the planted blob in both categories

    missed = res["missed_regions"]
    sg = missed.filter(pl.col("variant") == "static-gaussian")
    assert set(zip(sg["category"], sg["image_id"], sg["region"], strict=True)) == {
        (c, PLANTED_MISS[0], PLANTED_MISS[1]) for c in ("carpet", "bottle")
    }
    for row in missed.iter_rows(named=True):
        m = run.maps[(row["category"], row["variant"])][row["image_id"]]
        region = label_regions(run.gts[(row["category"], row["image_id"])]) == row["region"]
        assert row["size"] == region.sum()
        assert row["coverage"] == pytest.approx((m[region] > thr[(row["category"], row["variant"])]).mean())
        assert row["coverage"] < 0.1
    planted = sg.row(0, named=True)
    assert planted["defect_type"] == "crack" and planted["size"] == 80 and planted["size_bin"] == "1-10%"
    summary = res["missed_summary"].filter((pl.col("variant") == "static-gaussian") & (pl.col("category") == "carpet"))
    assert summary["n_regions"].sum() == 4 and summary["n_missed"].sum() == 1

    dist = res["score_distributions"]
    for (cat, variant), maps in run.maps.items():
        for kind, sel in (("normal", 0), ("anomalous", 1)):
            vals = np.concatenate([m[run.gts[(cat, i)] == sel] for i, m in maps.items()])
            sel_row = (pl.col("category") == cat) & (pl.col("variant") == variant) & (pl.col("pixels") == kind)
            row = dist.filter(sel_row).row(0, named=True)
            assert row["n"] == vals.size
            assert row["q0.99"] == pytest.approx(float(np.quantile(vals, 0.99)), rel=1e-6)
            assert row["q0.5"] == pytest.approx(float(np.quantile(vals, 0.5)), rel=1e-6, abs=1e-7)


def test_side_by_side_picks_the_same_images_for_every_variant() -> None:
    from raydiff.report import side_by_side_picks

    images = pl.DataFrame({
        "variant": ["a"] * 4 + ["b"] * 4,
        "image_id": ["n0", "n1", "d0", "d1"] * 2,
        "label": [0, 0, 1, 1] * 2,
        "defect_type": ["good", "good", "crack", "crack"] * 2,
        "score": [0.1, 0.9, 0.8, 0.2, 1.0, 3.0, 5.0, 2.0],
    })
    picks = side_by_side_picks(images)
    # mean rank: d0 (0.75, 1.0) highest anomalous, d1 lowest, n1 the highest normal
    assert [(role.split(",")[0], row["image_id"]) for role, row in picks] == [
        ("anomalous", "d0"), ("anomalous", "d1"), ("normal", "n1")]


def test_cost_plot_labels_do_not_overlap() -> None:
    """Ten variants at nearly the same point: every label is readable (no two text boxes overlap)."""
    import matplotlib.pyplot as plt
    import matplotlib.text

    from raydiff.config import BUILTIN_VARIANTS

    VARIANT_IDS = tuple(BUILTIN_VARIANTS)
    from raydiff.report_figures import cost_figure

    points = pl.DataFrame({
        "variant": list(VARIANT_IDS),
        "seconds_per_image": [1.0 + 0.001 * i for i in range(len(VARIANT_IDS))],
        "unet_forwards_per_image": [37.0] * len(VARIANT_IDS),
        "aupro": [0.5] * len(VARIANT_IDS),
        "i_auroc": [0.7 + 0.001 * i for i in range(len(VARIANT_IDS))],
    })
    fig = cost_figure(points, "t")
    fig.canvas.draw()  # lays the text out
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.findobj(matplotlib.text.Text) if any(v in t.get_text() for v in VARIANT_IDS)]
    assert len(labels) == len(VARIANT_IDS)  # each variant named once
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)
    plt.close(fig)
