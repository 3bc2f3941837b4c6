"""Provenance by content (issue 31, item 4): φ's weights file and a pretrained VAE folder enter the
ids as their sha256, never their path; an expected (published) digest is checked; the metrics say
what a file is only as far as that check goes; versions.json lists the model ids of discovered
categories. References: ``hashlib.sha256`` over the bytes (a folder: over its files' lines, written
out here independently of ``raydiff.io``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch

from raydiff.config import config_from_dict, dump_config, load_config, model_id, run_id, yaml_load
from raydiff.data.prepared import Prepared
from raydiff.errors import CheckpointError, ConfigError

SIZE = 32


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _folder_sha(root: Path) -> str:
    """The folder digest's definition: sha256 of ``<relative path>\\0<file sha256>\\n`` per file,
    sorted by path, dot-names skipped."""
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts))
    lines = "".join(f"{p.relative_to(root).as_posix()}\0{_sha(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _edit_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    st = path.stat()  # as an editor's later write would (a coarse filesystem clock may not tick here)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _tiny_vae(folder: Path) -> Path:
    from raydiff.models import latent as L

    torch.manual_seed(0)
    L.build_vae("tiny", 3, SIZE, 4, 1).save_pretrained(folder)
    return folder


def _config(path: Path, weights: Path, vae: Path, extra: str = "") -> Path:
    path.write_text(
        "dataset: {root: /x, image_size: 32, categories: [bottle]}\n"
        f"features: {{weights: {weights}{extra}}}\n"
        f"models: {{preset: tiny, px: {{arch: pixel}}, lat: {{arch: latent, vae: {{vae_path: {vae}}}}}}}\n"
        "variants: {s: {method: static, model: px}, d: {method: dynamic, model: lat}}\n")
    return path


def _ids(cfg: object) -> tuple[str, str, str]:
    return run_id(cfg), model_id(cfg, "px", "bottle"), model_id(cfg, "lat", "bottle")


def test_ids_follow_the_bytes_not_the_path(tmp_path: Path) -> None:
    weights = tmp_path / "a" / "resnet34.pth"
    weights.parent.mkdir()
    weights.write_bytes(os.urandom(4096))
    vae = _tiny_vae(tmp_path / "a" / "vae")
    cfg = load_config(_config(tmp_path / "c.yaml", weights, vae))
    # Recorded when loaded, equal to the independent digests.
    assert cfg.features.weights_sha256 == _sha(weights)
    assert cfg.model_spec("lat").vae.vae_sha256 == _folder_sha(vae)
    assert cfg.model_spec("px").vae.vae_sha256 is None  # a pixel model never reads the VAE
    before = _ids(cfg)
    stored = dump_config(cfg)

    # Moved and renamed: every id stays.
    moved_w, moved_v = tmp_path / "b" / "phi.pth", tmp_path / "b" / "sd-vae"
    moved_w.parent.mkdir()
    shutil.move(weights, moved_w)
    shutil.move(vae, moved_v)
    moved = load_config(_config(tmp_path / "c.yaml", moved_w, moved_v))
    assert _ids(moved) == before
    # The run's stored config loads, with the same ids, without the files where it says they are.
    assert _ids(config_from_dict(yaml_load(stored), upgrade=True)) == before

    # One byte of φ's file edited in place: a new run, the same models (φ is not in a model id).
    _edit_one_byte(moved_w)
    edited = load_config(tmp_path / "c.yaml")
    assert edited.features.weights_sha256 == _sha(moved_w) != cfg.features.weights_sha256
    assert run_id(edited) != before[0] and _ids(edited)[1:] == before[1:]
    # One byte of the VAE's weights: the latent model (and so the run) is new, the pixel one is not.
    _edit_one_byte(moved_v / "diffusion_pytorch_model.safetensors")
    vae_edited = load_config(tmp_path / "c.yaml")
    assert vae_edited.model_spec("lat").vae.vae_sha256 == _folder_sha(moved_v)
    assert _ids(vae_edited)[1] == before[1] and _ids(vae_edited)[2] != before[2]
    assert run_id(vae_edited) not in (before[0], run_id(edited))

    # φ built from the stored config (which records the old digest) refuses the edited file.
    from raydiff.features import build_features

    old = config_from_dict(yaml_load(stored), upgrade=True)
    old_at_new_place = config_from_dict({**yaml_load(stored), "features": {
        **yaml_load(stored)["features"], "weights": str(moved_w)}}, upgrade=True)
    assert old.features.weights_sha256 == cfg.features.weights_sha256
    with pytest.raises(ConfigError, match=f"has sha256 {_sha(moved_w)}, but features.weights_sha256 is "
                                          f"{cfg.features.weights_sha256}: the file changed"):
        build_features(old_at_new_place.features)


def test_a_missing_file_is_one_error_at_id_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "resnet34.pth"
    cfg = config_from_dict({"features": {"weights": str(missing)}})  # loads: nothing needs the file yet
    assert cfg.features.weights_sha256 is None
    with pytest.raises(ConfigError, match=f"features.weights: {missing} is not a file") as err:
        run_id(cfg)
    assert "Fix:" in str(err.value) and "features.expected_sha256" in str(err.value)
    # The published digest stands in for the file (plan a run where the file is not).
    digest = "ab" * 32
    planned = config_from_dict({"features": {"weights": str(missing), "expected_sha256": digest}})
    here = tmp_path / "resnet34.pth"
    here.write_bytes(b"\x01\x02")
    with_file = config_from_dict({"features": {"weights": str(here), "weights_sha256": digest}})
    assert run_id(planned) == run_id(with_file) != run_id(config_from_dict({}))
    # A latent model's VAE folder: the error names its key.
    lat = config_from_dict({"models": {"lat": {"arch": "latent", "vae": {"vae_path": str(tmp_path / "no-vae")}}},
                            "variants": {"d": {"method": "dynamic", "model": "lat"}}})
    with pytest.raises(ConfigError, match=r"models.lat.vae.vae_path: .*no-vae is not a folder"):
        model_id(lat, "lat", "bottle")
    # An unset optional variable is still "no file" (a random φ), with the ids of no file at all.
    monkeypatch.delenv("RAYDIFF_TEST_PHI", raising=False)
    unset = tmp_path / "u.yaml"
    unset.write_text("features:\n  weights: ${RAYDIFF_TEST_PHI:-}\n")
    assert load_config(unset).features.weights is None and run_id(load_config(unset)) == run_id(load_config(None))


def test_expected_sha256_mismatch_is_an_error(tmp_path: Path) -> None:
    weights = tmp_path / "resnet34.pth"
    weights.write_bytes(b"not the published file")
    wrong = "0" * 64
    with pytest.raises(ConfigError) as err:
        config_from_dict({"features": {"weights": str(weights), "expected_sha256": wrong}})
    msg = str(err.value)
    assert str(weights) in msg and _sha(weights) in msg and wrong in msg and "features.expected_sha256" in msg
    # Right digest: loads, and the id is that of the same config without it (not hashed twice).
    right = config_from_dict({"features": {"weights": str(weights), "expected_sha256": _sha(weights)}})
    assert run_id(right) == run_id(config_from_dict({"features": {"weights": str(weights)}}))
    # A stored config whose recorded digest is not the expected one; a malformed digest.
    with pytest.raises(ConfigError, match="features.weights_sha256 is 0{64} .* but features.expected_sha256 is"):
        config_from_dict({"features": {"weights": str(weights), "weights_sha256": wrong,
                                       "expected_sha256": _sha(weights)}})
    with pytest.raises(ConfigError, match="'features.expected_sha256' = 'abc' is not a sha256 digest"):
        config_from_dict({"features": {"weights": str(weights), "expected_sha256": "abc"}})
    # The VAE's: mismatch on load, naming the folder and both digests.
    vae = _tiny_vae(tmp_path / "vae")
    with pytest.raises(ConfigError) as err:
        config_from_dict({"models": {"lat": {"arch": "latent", "vae": {"vae_path": str(vae),
                                                                        "vae_expected_sha256": wrong}}},
                          "variants": {"d": {"method": "dynamic", "model": "lat"}}})
    msg = str(err.value)
    assert "models.lat.vae.vae_expected_sha256" in msg and _folder_sha(vae) in msg and wrong in msg and str(vae) in msg


def _random_phi_file(path: Path) -> Path:
    from raydiff.features import ResNetFeatures, init_random

    torch.save(init_random(ResNetFeatures("resnet34"), seed=3).state_dict(), path)
    return path


def test_a_random_init_file_is_not_reported_as_imagenet(tmp_path: Path) -> None:
    from raydiff.paths import fitted_dir
    from raydiff.report import provenance_html
    from raydiff.report_tables import provenance
    from raydiff.scoring.fit import fit_category

    # A random network under torchvision's own file name: the name claims ImageNet, the bytes do not.
    weights = _random_phi_file(tmp_path / "resnet34-b627a593.pth")
    sha = _sha(weights)
    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def fitted_label(extra: dict[str, str]) -> str | None:
        cfg = config_from_dict({"dataset": {"image_size": SIZE}, "features": {"weights": str(weights), **extra},
                                "output": {"root": str(tmp_path / "out")}})
        fitted = fit_category(cfg, "c", {}, images, images, ["h0", "h1", "h2", "h3"], [], batch_size=2)
        assert fitted.features_weights == f"sha256:{sha}"
        assert fitted.info["weights_file"] == {"name": weights.name, "sha256": sha}
        fitted.save(fitted_dir(cfg, "c"))
        return provenance(cfg, "c")["feature_weights"]

    label = fitted_label({})
    assert label == f"file:{weights.name}@{sha[:12]}" and "imagenet" not in label
    note = provenance_html(pl.DataFrame({"feature_weights": [label]}))
    assert "not verified as ImageNet weights" in note and "features.expected_sha256" in note
    # Only the published digest, given and matched, makes it ImageNet (this one is a stand-in).
    assert fitted_label({"expected_sha256": sha}) == f"imagenet-verified:{weights.name}@{sha[:12]}"
    # No file: random-init; a state written before digests: its name claims nothing.
    from raydiff.report_tables import _phi_label

    assert _phi_label({"features_weights": "none"}, None) == "random-init"
    assert _phi_label({"features_weights": "imagenet:resnet34.pth"}, None) == "file:resnet34.pth"


def test_versions_json_lists_model_ids_of_discovered_categories(tmp_path: Path) -> None:
    from raydiff.runs import write_run_metadata

    cfg = config_from_dict({"dataset": {"root": str(tmp_path / "data")}, "output": {"root": str(tmp_path / "out")}})
    assert cfg.dataset.categories == ()  # discovered on disk
    folder = write_run_metadata(cfg, categories=["carpet", "grid"])
    ids = json.loads((folder / "versions.json").read_text())["model_ids"]
    assert set(ids) == set(cfg.models_needed())
    for m in cfg.models_needed():
        assert ids[m] == {c: model_id(cfg, m, c) for c in ("carpet", "grid")}
    # A later run on one more category extends the record; one on fewer never shrinks it.
    write_run_metadata(cfg, categories=["wood"])
    ids = json.loads((folder / "versions.json").read_text())["model_ids"]
    assert all(set(ids[m]) == {"carpet", "grid", "wood"} for m in cfg.models_needed())


@pytest.mark.trains
def test_pretrained_vae_identity_is_recorded_and_moving_it_keeps_the_model(tmp_path: Path) -> None:
    import diffusers

    from raydiff.data.manifest import scan_mvtec
    from raydiff.data.splits import assign_holdout
    from raydiff.data.textures import make_textures
    from raydiff.models.checkpoint import META, expected_meta, load_model
    from raydiff.paths import model_dir
    from raydiff.report_tables import provenance
    from raydiff.train.loop import train_one

    data = make_textures(tmp_path / "textures", size=SIZE, n_train=8, n_test_good=1, n_test_defect=1,
                         categories=("brick",))
    manifest = assign_holdout(scan_mvtec(data), fraction=0.25, min_count=2, seed=0)
    vae = _tiny_vae(tmp_path / "sd-vae")
    config_json = json.loads((vae / "config.json").read_text())
    config_json["_name_or_path"] = "stabilityai/sd-vae-ft-mse"  # as published folders carry it
    (vae / "config.json").write_text(json.dumps(config_json))

    def cfg_at(path: Path, **vae_extra: str) -> object:
        return config_from_dict({
            "dataset": {"root": str(data), "image_size": SIZE},
            "models": {"preset": "tiny", "train_steps": 2, "batch_size": 4, "checkpoint_every": 2,
                       "lat": {"arch": "latent", "vae": {"vae_path": str(path), **vae_extra}}},
            "variants": {"d": {"method": "dynamic", "model": "lat"}},
            "output": {"root": str(tmp_path / "out")}})

    cfg = cfg_at(vae)
    folder = train_one(Prepared.of(cfg, manifest), "brick", "lat", device="cpu")
    meta = json.loads((folder / META).read_text())["vae"]
    sha = _folder_sha(vae)
    assert meta["source"] == "pretrained" and meta["folder"] == "sd-vae" and meta["sha256"] == sha
    assert meta["path"] == str(vae.resolve()) and meta["expected_sha256"] is None
    assert meta["config"] == {"_class_name": "AutoencoderKL", "_diffusers_version": diffusers.__version__,
                              "_name_or_path": "stabilityai/sd-vae-ft-mse"}
    assert provenance(cfg, "brick", "lat")["vae"] == f"file:sd-vae@{sha[:12]}"
    verified = provenance(cfg_at(vae, vae_expected_sha256=sha), "brick", "lat")["vae"]
    assert verified == f"pretrained-verified:sd-vae@{sha[:12]}"

    # Moved: the same model folder, loaded with the VAE where the config now says it is.
    moved = tmp_path / "elsewhere" / "vae"
    moved.parent.mkdir()
    shutil.move(vae, moved)
    cfg2 = cfg_at(moved)
    assert model_dir(cfg2, "brick", "lat") == folder
    expect = expected_meta(cfg2, "lat", "brick")
    model = load_model(folder, expect=expect, vae_path=str(moved))
    assert model.vae is not None
    with pytest.raises(CheckpointError, match="is not there any more"):
        load_model(folder, expect=expect)  # where meta.json says it was
    # Edited in place after training: refused by content, naming both digests.
    _edit_one_byte(moved / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=f"VAE folder of sha256 {sha}, but .* has {_folder_sha(moved)}"):
        load_model(folder, expect=expect, vae_path=str(moved))
