"""The embedded texture benchmark: layout, determinism, exact masks, disjoint regions, atomicity.

The clean crop of every image is rebuilt here from the box recorded in textures.json with PIL
directly, so mask exactness is checked on the written files, not on the generator's own arrays.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raydiff.data import textures
from raydiff.data.textures import DEFECT_TYPES, PHOTOS, compose, make_textures
from raydiff.errors import ConfigError, DatasetError
from raydiff.io import MARKER

DEFAULTS = {"size": 64, "n_train": 60, "n_test_good": 15, "n_test_defect": 15}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def clean_crop(photo: str, box: list[int], size: int) -> np.ndarray:
    import skimage.data

    y, x, s = box
    src = np.asarray(getattr(skimage.data, photo)())[y : y + s, x : x + s]
    return np.asarray(Image.fromarray(src).resize((size, size), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("tex") / "textures"
    t0 = time.perf_counter()
    make_textures(out)  # the defaults
    return out, time.perf_counter() - t0


@pytest.fixture(scope="module")
def meta(dataset: tuple[Path, float]) -> dict:
    return json.loads((dataset[0] / "textures.json").read_text())


def test_photos_load_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in PHOTOS:
        photo = textures.load_photo(name)
        assert photo.shape == (512, 512) and photo.dtype == np.uint8 and photo.std() > 10


def test_defaults_are_fast(dataset: tuple[Path, float]) -> None:
    out, seconds = dataset
    print(f"make_textures defaults: {seconds:.2f} s")
    assert seconds < 10


def test_layout_and_counts(dataset: tuple[Path, float], meta: dict) -> None:
    out, _ = dataset
    assert (out / MARKER).is_file()
    expected_params = {**DEFAULTS, "seed": 0, "categories": list(PHOTOS), "defects": list(DEFECT_TYPES), "rgb": False,
                       "crop": 112, "min_stroke_px": 0.0, "min_contrast_sd": 0.0, "patch_match": 0.5,
                       "defect_scale": 1.0, "patch_tone_sd": 0.0}
    assert meta["params"] == expected_params
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "textures.json", *PHOTOS])
    per_defect = DEFAULTS["n_test_defect"] // len(DEFECT_TYPES)
    for cat in PHOTOS:
        expected = {f"train/good/{i:03d}.png" for i in range(DEFAULTS["n_train"])}
        expected |= {f"test/good/{i:03d}.png" for i in range(DEFAULTS["n_test_good"])}
        for d in DEFECT_TYPES:
            expected |= {f"test/{d}/{i:03d}.png" for i in range(per_defect)}
            expected |= {f"ground_truth/{d}/{i:03d}_mask.png" for i in range(per_defect)}
        found = {str(p.relative_to(out / cat)) for p in (out / cat).rglob("*") if p.is_file()}
        assert found == expected
        assert sum(k.startswith(f"{cat}/") for k in meta["images"]) == sum(DEFAULTS[k] for k in DEFAULTS if k != "size")


def test_images_and_masks(dataset: tuple[Path, float]) -> None:
    out, _ = dataset
    for image_path in out.glob("*/*/*/*.png"):
        if "ground_truth" in image_path.parts:
            continue
        image = read(image_path)
        assert image.shape == (64, 64) and image.dtype == np.uint8
        split, defect = image_path.parts[-3], image_path.parts[-2]
        mask_path = image_path.parents[2] / "ground_truth" / defect / f"{image_path.stem}_mask.png"
        if defect == "good":
            assert not mask_path.exists()
            continue
        assert split == "test"
        mask = read(mask_path)
        assert mask.shape == image.shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}


def test_masks_are_exact(dataset: tuple[Path, float], meta: dict) -> None:
    """image != clean crop exactly on the mask, for every pixel of every image (good: nowhere)."""
    out, _ = dataset
    changes = []
    for image_id, record in meta["images"].items():
        image = read(out / image_id).astype(np.int16)
        clean = clean_crop(record["photo"], record["box"], 64).astype(np.int16)
        changed = image != clean
        if "defect" not in record:
            assert not changed.any(), image_id
            continue
        mask = read(out / record["photo"] / record["mask"]) > 0
        np.testing.assert_array_equal(changed, mask, err_msg=image_id)
        changes.append(np.abs(image - clean)[mask].mean())
    # A range of contrasts: some defects are subtle, some obvious.
    assert min(changes) < 8 and max(changes) > 50, (min(changes), max(changes))


def test_train_and_test_regions_are_disjoint(meta: dict) -> None:
    boxes = {"train": [], "test": []}
    for image_id, record in meta["images"].items():
        boxes[image_id.split("/")[1]].append((record["photo"], *record["box"]))
    for split, rows in (("train", meta["regions"]["train_rows"]), ("test", meta["regions"]["test_rows"])):
        for _, y, x, s in boxes[split]:
            assert any(a <= y and y + s <= b for a, b in rows) and 0 <= x and x + s <= 512
    for photo, y, x, s in boxes["train"]:
        for photo2, y2, x2, s2 in boxes["test"]:
            if photo == photo2:
                assert y + s <= y2 or y2 + s2 <= y or x + s <= x2 or x2 + s2 <= x


def test_deterministic_and_seeded(dataset: tuple[Path, float], tmp_path: Path) -> None:
    again = make_textures(tmp_path / "again")
    assert files(again) == files(dataset[0])
    other = make_textures(tmp_path / "seed1", n_train=2, n_test_good=1, n_test_defect=5, seed=1)
    assert read(other / "brick/test/hole/000.png").tobytes() != read(dataset[0] / "brick/test/hole/000.png").tobytes()


def test_categories_and_counts_are_independent(dataset: tuple[Path, float], tmp_path: Path) -> None:
    """One category alone, with fewer images, gives the same bytes for the images it shares."""
    small = make_textures(tmp_path / "grass", n_train=7, n_test_good=2, n_test_defect=10, categories=("grass",))
    full = files(dataset[0] / "grass")
    mine = files(small / "grass")
    assert len(mine) == 7 + 2 + 10 + 10
    assert all(full[k] == v for k, v in mine.items())


def test_rgb_tints_the_same_images(dataset: tuple[Path, float], tmp_path: Path) -> None:
    out = make_textures(tmp_path / "rgb", n_train=1, n_test_good=1, n_test_defect=5, rgb=True)
    for cat in PHOTOS:
        full_channel = int(np.argmax(textures.TINTS[cat]))
        for d in DEFECT_TYPES:
            rgb = read(out / cat / "test" / d / "000.png")
            assert rgb.shape == (64, 64, 3)
            grey = read(dataset[0] / cat / "test" / d / "000.png")
            np.testing.assert_array_equal(rgb[..., full_channel], grey)


def test_rerun_returns_at_once(dataset: tuple[Path, float]) -> None:
    out, _ = dataset
    before = (out / MARKER).stat().st_mtime_ns
    t0 = time.perf_counter()
    assert make_textures(out) == out
    assert time.perf_counter() - t0 < 0.5
    assert (out / MARKER).stat().st_mtime_ns == before


def test_parameter_clash(dataset: tuple[Path, float]) -> None:
    with pytest.raises(DatasetError, match=r"size=64 \(asked 32\).*Fix: choose another folder"):
        make_textures(dataset[0], size=32)
    assert (dataset[0] / MARKER).is_file()


def test_foreign_folder_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DatasetError, match="not a texture dataset"):
        make_textures(tmp_path / "mine", n_train=1, n_test_good=1, n_test_defect=1)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = textures.render_image

    def crash_after_five(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(textures, "render_image", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        make_textures(tmp_path / "out", n_train=10, n_test_good=1, n_test_defect=1)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(textures, "render_image", real)
    out = make_textures(tmp_path / "out", n_train=10, n_test_good=1, n_test_defect=1)
    assert (out / MARKER).is_file() and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_unfinished_dataset_is_rewritten(tmp_path: Path) -> None:
    out = make_textures(tmp_path / "out", n_train=2, n_test_good=1, n_test_defect=1)
    (out / MARKER).unlink()  # as if killed between the rename and the marker
    (out / "brick" / "train" / "good" / "000.png").write_bytes(b"half")
    make_textures(out, n_train=2, n_test_good=1, n_test_defect=1)
    assert (out / MARKER).is_file() and read(out / "brick" / "train" / "good" / "000.png").shape == (64, 64)


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 8}, {"n_train": 0}, {"n_test_defect": -1}, {"categories": ("brick", "wood")},
     {"categories": ("grass", "grass")}, {"defects": ()}, {"size": 64.0}],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="make_textures"):
        make_textures(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_compose_rule_on_extremes() -> None:
    """mask == alpha > 0 == (image != clean), also where rounding, clipping or equal values hide a change."""
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, size=(64, 64)).astype(np.uint8)
    clean[:8] = 0
    clean[8:16] = 255
    alpha = rng.uniform(-1, 1, size=(64, 64)).clip(0, 1)
    alpha[:, :4] = 1e-3  # designed change far below one level
    for target in (clean.astype(float), np.zeros((64, 64)), np.full((64, 64), 255.0), rng.normal(128, 80, (64, 64))):
        image, mask = compose(clean, target, alpha)
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(mask, alpha > 0)
        np.testing.assert_array_equal(image != clean, mask)
        # Where the blend itself rounds to a change, it is kept as is.
        blend = np.clip(np.rint(clean + alpha * (target - clean)), 0, 255)
        visible = mask & (blend != clean)
        np.testing.assert_array_equal(image[visible], blend[visible])
        assert np.abs(image.astype(int) - blend)[mask & ~visible].max(initial=0) <= 1
