"""The texture generator's zoom, defect size and visibility floors (``crop``, ``defect_scale``,
``min_stroke_px``, ``min_contrast_sd``, ``patch_match``, ``patch_tone_sd``): each floor holds on
every drawn defect, the mask rule still holds exactly, the defaults are the generator's earlier
behaviour, and bad values get one clear error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from test_textures import clean_crop, read

from raydiff.config import TexturesConfig
from raydiff.data import textures
from raydiff.data.textures import CROP_OCTAVES, PHOTOS, TextureParams, make_textures
from raydiff.errors import ConfigError

SIZE = 32
FLOORS = {"min_stroke_px": 2.0, "min_contrast_sd": 3.0, "patch_tone_sd": 2.0}


@pytest.fixture(scope="module")
def floored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = make_textures(tmp_path_factory.mktemp("tex") / "floored", size=SIZE, n_train=2, n_test_good=2,
                        n_test_defect=40, seed=3, crop=64, patch_match=0.0, **FLOORS)
    return out, json.loads((out / "textures.json").read_text())


def test_every_defect_respects_the_floors(floored: tuple[Path, dict]) -> None:
    out, meta = floored
    seen = set()
    for image_id, record in meta["images"].items():
        d = record.get("defect")
        if d is None:
            continue
        seen.add(d["type"])
        # Contrasts are recomputed here from the clean crop (rounded to 3 decimals in the JSON).
        sd = clean_crop(record["photo"], record["box"], SIZE).astype(np.float64).std()
        floor = FLOORS["min_contrast_sd"] * sd - 1e-2
        if d["type"] in ("scratch", "blob", "spot"):
            assert abs(d["contrast"]) >= floor, (image_id, d, sd)
        if d["type"] == "hole":
            assert d["depth"] >= floor, (image_id, d, sd)
        if d["type"] == "scratch":
            assert d["width_px"] >= FLOORS["min_stroke_px"] - 1e-3, (image_id, d)
        if d["type"] == "spot":
            assert min(d["radii_px"]) >= FLOORS["min_stroke_px"] / 2 - 1e-3, (image_id, d)
        if d["type"] == "patch":
            assert d["matched"] is False, image_id  # patch_match = 0
            assert abs(d["tone"]) >= FLOORS["patch_tone_sd"] * sd - 1e-2, (image_id, d, sd)
    assert seen == set(textures.DEFECT_TYPES)


def test_masks_stay_exact_and_crops_follow_the_zoom(floored: tuple[Path, dict]) -> None:
    out, meta = floored
    lo, hi = 64 * 2.0**-CROP_OCTAVES, 64 * 2.0**CROP_OCTAVES
    for image_id, record in meta["images"].items():
        assert lo - 1 <= record["box"][2] <= hi + 1, (image_id, record["box"])
        image = read(out / image_id).astype(np.int16)
        changed = image != clean_crop(record["photo"], record["box"], SIZE).astype(np.int16)
        if "defect" not in record:
            assert not changed.any(), image_id
            continue
        np.testing.assert_array_equal(changed, read(out / record["photo"] / record["mask"]) > 0, err_msg=image_id)


def test_floors_only_raise_faint_defects(tmp_path: Path) -> None:
    """Same seed with and without floors: the same crops, and a defect already above the floors is
    drawn byte for byte as before (the floors clamp; they draw nothing extra)."""
    kw = dict(size=SIZE, n_train=1, n_test_good=1, n_test_defect=20, seed=5, categories=("gravel",))
    mild = {"min_stroke_px": 1.0, "min_contrast_sd": 1.0}
    plain = make_textures(tmp_path / "plain", **kw)
    floor = make_textures(tmp_path / "floor", **kw, **mild)
    a, b = (json.loads((p / "textures.json").read_text())["images"] for p in (plain, floor))
    assert {k: v["box"] for k, v in a.items()} == {k: v["box"] for k, v in b.items()}
    same = raised = 0
    for key, rec in a.items():
        d = rec.get("defect")
        if d is None or d["type"] == "patch":
            continue
        sd = clean_crop(rec["photo"], rec["box"], SIZE).astype(np.float64).std()
        level = abs(d.get("contrast", d.get("depth", 0.0)))
        thin = d.get("width_px", min(d.get("radii_px", [99.0])) * 2)
        if level > mild["min_contrast_sd"] * sd + 0.01 and thin > mild["min_stroke_px"] + 0.01:
            assert read(plain / key).tobytes() == read(floor / key).tobytes(), key
            same += 1
        else:
            raised += 1
    assert same >= 1 and raised >= 1, (same, raised)


def test_defect_scale_scales_every_defect_and_nothing_else(tmp_path: Path) -> None:
    """Same seed at defect_scale 1 and 1.5: the same crops and the same draws, every defect's
    linear size times 1.5 (radii, a scratch's length and width, a spot's dots), its contrast kept."""
    kw = dict(size=SIZE, n_train=1, n_test_good=1, n_test_defect=15, seed=4, categories=("grass",))
    a, b = (json.loads((make_textures(tmp_path / name, **kw, defect_scale=k) / "textures.json").read_text())["images"]
            for name, k in (("one", 1.0), ("big", 1.5)))
    assert {k: v["box"] for k, v in a.items()} == {k: v["box"] for k, v in b.items()}
    sizes = {"patch": ("radius_px",), "blob": ("radius_px",), "hole": ("radius_px",),
             "scratch": ("length_px", "width_px"), "spot": ("radii_px",)}
    seen = set()
    for key, rec in a.items():
        d, e = rec.get("defect"), b[key].get("defect")
        if d is None:
            continue
        seen.add(d["type"])
        for name in sizes[d["type"]]:
            np.testing.assert_allclose(np.asarray(e[name]), 1.5 * np.asarray(d[name]), rtol=0, atol=2e-3, err_msg=key)
        for name in ("contrast", "depth", "dots", "matched", "foreign"):
            assert d.get(name) == e.get(name), (key, name)
    assert seen == set(textures.DEFECT_TYPES)


def test_defaults_agree_with_the_config_section() -> None:
    """The config's ``textures`` defaults are the generator's own (raydiff.config cannot import
    raydiff.data, so this test holds the two together)."""
    fields = {f.name: f.default for f in dataclasses.fields(TextureParams) if f.default is not dataclasses.MISSING}
    config = dataclasses.asdict(TexturesConfig())
    import inspect

    signature = {k: v.default for k, v in inspect.signature(make_textures).parameters.items()}
    for name, value in config.items():
        assert signature[name] == value, name
        if name in fields:
            assert fields[name] == value, name


def test_a_dataset_written_before_the_new_parameters_is_found_again(tmp_path: Path) -> None:
    out = make_textures(tmp_path / "old", size=SIZE, n_train=1, n_test_good=1, n_test_defect=1, categories=("brick",))
    meta_path = out / "textures.json"
    meta = json.loads(meta_path.read_text())
    for name in ("crop", "min_stroke_px", "min_contrast_sd", "patch_match", "defect_scale", "patch_tone_sd"):
        del meta["params"][name]
    meta_path.write_text(json.dumps(meta))
    assert make_textures(out, size=SIZE, n_train=1, n_test_good=1, n_test_defect=1, categories=("brick",)) == out
    with pytest.raises(Exception, match=r"min_contrast_sd=0.0 \(asked 3.0\)"):
        make_textures(out, size=SIZE, n_train=1, n_test_good=1, n_test_defect=1, categories=("brick",),
                      min_contrast_sd=3.0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"crop": 130}, r"crop=130 is out of range"),
    ({"crop": 4}, r"crop=4 is out of range"),
    ({"min_stroke_px": 20.0}, r"min_stroke_px=20.0 is out of range"),
    ({"min_contrast_sd": 6.0}, r"min_contrast_sd=6.0 is out of range"),
    ({"patch_match": 1.5}, r"patch_match=1.5 is out of range"),
    ({"defect_scale": 3.0}, r"defect_scale=3.0 is out of range"),
    ({"patch_tone_sd": -1.0}, r"patch_tone_sd=-1.0 is out of range"),
    ({"crop": "big"}, r"crop must be an integer"),
])
def test_bad_values_get_one_clear_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_textures(tmp_path / "x", size=SIZE, n_train=1, n_test_good=1, n_test_defect=1, categories=PHOTOS[:1],
                      **kwargs)
    assert not (tmp_path / "x").exists()


def test_the_demo_draws_its_benchmark_with_the_config_section(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``raydiff demo --seed N`` writes the seed's textures with configs/textures.yaml's
    ``textures:`` settings (every one reaches make_textures), into the seed's own folder."""
    from raydiff.workflow import demo_config

    monkeypatch.delenv("RAYDIFF_TEXTURES", raising=False)
    cfg = demo_config(tmp_path / "out", seed=3)
    assert Path(cfg.dataset.root) == (tmp_path / "out" / "data" / "textures-seed3").absolute()
    written = json.loads((Path(cfg.dataset.root) / "textures.json").read_text())["params"]
    assert {k: written[k] for k in dataclasses.asdict(cfg.textures)} == dataclasses.asdict(cfg.textures)
    assert (written["size"], written["seed"]) == (cfg.dataset.image_size, 3)
    assert cfg.textures != TexturesConfig()  # the demo sets them: they are hashed into its ids
