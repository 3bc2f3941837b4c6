"""``raydiff.config.compat``: every earlier form is rewritten to the named form before the loader
reads it, with a FutureWarning naming the old and new spelling and the removal version; the
project's own configs need none of it. And the loader's inputs (issue 30): YAML 1.2 numbers,
alias bombs, ``--set`` given twice or blamed, the dashboard's host, per-category names."""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from raydiff.config import (
    check_overrides,
    config_from_dict,
    load_config,
    load_config_explained,
    parse_overrides,
)
from raydiff.config import compat
from raydiff.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_need_no_compat(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MVTEC_ROOT", "VISA_ROOT", "BTAD_ROOT", "REAL_DATA_ROOT", "MVTEC_AD2_ROOT"):
        monkeypatch.setenv(var, "/data/x")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        load_config(path)
    assert compat.upgrade(yaml.safe_load(path.read_text()))[1] == []


@pytest.mark.parametrize(("data", "old", "new"), [
    ({"models": {"kinds": ["pixel"]}, "variants": {"enabled": ["kl"]}}, "models.kinds", "models: {pixel: {...}}"),
    ({"models": {"latent": {"vae_train_steps": 3}}}, "models.latent", "models.vae"),
    ({"models": {"vae_lr": 0.5}}, "models.vae_lr", "models.vae.vae_lr"),
    ({"models": {"lat": {"arch": "latent", "latent": {"vae_lr": 0.5}}},
      "variants": {"d": {"method": "dynamic", "model": "lat"}}}, "models.lat.latent", "models.lat.vae"),
    ({"models": {"lat": {"arch": "latent", "vae_lr": 0.5}},
      "variants": {"d": {"method": "dynamic", "model": "lat"}}}, "models.lat.vae_lr", "models.lat.vae.vae_lr"),
    ({"variants": {"kl": {"top_k": 3}}}, "variants.<one key per built-in variant>", "variants.NAME"),
])
def test_each_earlier_form_warns_with_old_new_and_removal(data: dict[str, Any], old: str, new: str) -> None:
    before = copy.deepcopy(data)
    with pytest.warns(FutureWarning) as record:
        config_from_dict(data)
    assert data == before  # the upgrade is pure
    messages = [str(w.message) for w in record]
    assert any(f"'{old}'" in m and new in m and compat.REMOVED_IN in m for m in messages), messages


def test_earlier_forms_become_the_named_form() -> None:
    named, rewrites = compat.upgrade({
        "models": {"kinds": ["pixel", "mine"], "preset": "tiny", "latent": {"latent_channels": 2},
                   "mine": {"arch": "latent", "vae_lr": 0.5}, "unused": {"arch": "pixel"}},
        "variants": {"static_gmm": {"t0": 100, "steps": 10}, "trend": {"levels": [1, 2, 3], "output": "both"}},
    })
    assert named["models"] == {"preset": "tiny", "vae": {"latent_channels": 2}, "pixel": {},
                               "mine": {"arch": "latent", "vae": {"vae_lr": 0.5}}}
    variants = named["variants"]
    # A written section replaced the built-in's own parameters (smoothing_size 5 → the default 11).
    assert variants["static-gmm"] == {"method": "static", "model": "pixel-gmm", "smoothing_size": 11, "t0": 100,
                                      "steps": 10}
    assert variants["trend-intensity"] == {"method": "trend", "model": "pixel", "levels": [1, 2, 3],
                                           "output": "intensity"}
    assert variants["enabled"] == list(compat.BUILTIN_VARIANTS)
    assert {r.removed_in for r in rewrites} == {compat.REMOVED_IN}


def test_renamed_keys_are_read_in_stored_configs_only() -> None:
    assert compat.upgrade({"dataset": {"kind": "visa"}}, stored=True)[0] == {"dataset": {"layout": "visa"}}
    with pytest.raises(ConfigError, match="'dataset.kind' was renamed to 'dataset.layout'"):
        config_from_dict({"dataset": {"kind": "visa"}})


# -- YAML 1.2 numbers (issue 30, 10) ----------------------------------------------------------


def test_yaml_1_2_numbers_from_files_and_set(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "seed: 010\n")).seed == 10
    assert load_config(write(tmp_path, "seed: 0x10\n")).seed == 16
    assert load_config(write(tmp_path, "models: {train_steps: 10_000}\n")).model_spec("pixel").train_steps == 10_000
    with pytest.raises(ConfigError, match=r"models.train_steps' must be int, got '1:30'"):
        load_config(write(tmp_path, "models: {train_steps: 1:30}\n"))
    assert load_config(None, parse_overrides(["seed=010"])).seed == 10
    with pytest.raises(ConfigError, match=r"--set models.train_steps.*'1:30'"):
        load_config(None, parse_overrides(["models.train_steps=1:30"]))
    assert parse_overrides(["models.lr=1e-3", "x=.inf"]) == {"models.lr": 1e-3, "x": float("inf")}


# -- alias bombs (issue 30, 3) ----------------------------------------------------------------


BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]) + "\n"


def test_an_alias_bomb_fails_fast_naming_the_file(tmp_path: Path) -> None:
    assert len(BOMB) < 700
    path = write(tmp_path, BOMB)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert time.perf_counter() - start < 1.0
    assert str(path) in str(err.value) and "aliases expand it" in str(err.value)
    # Anchors used as configs use them (merge keys) stay fine.
    ok = "variants:\n  t: &t {method: trend, model: pixel}\n  u: {<<: *t, output: intensity}\n"
    assert load_config(write(tmp_path, ok)).variants.params("u").output == "intensity"
    with pytest.raises(ConfigError, match="--set x"):
        parse_overrides(["x=" + BOMB.replace("\n", ", ").join("{}")])


# -- --set: blamed, given twice (issue 30, tracebacks) ----------------------------------------


def test_an_error_caused_by_set_blames_set_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "models: {beta_end: 0.02}\n")
    with pytest.raises(ConfigError, match=r"^--set models.beta_start"):
        load_config(path, {"models.beta_start": 0.5})
    with pytest.raises(ConfigError, match=r"^--set variants.static-gaussian.t0"):
        load_config(path, {"variants.static-gaussian.t0": 5})
    with pytest.raises(ConfigError, match=r"^--set models.timesteps"):
        load_config(path, {"models.timesteps": 100})
    with pytest.raises(ConfigError, match=r"c.yaml"):  # the file's own mistake still names the file
        load_config(write(tmp_path, "models: {beta_start: 0.5}\n"))


def test_the_same_set_key_twice_is_one_error() -> None:
    with pytest.raises(ConfigError, match=r"'seed' is given twice \(seed=1 and seed=2\)"):
        parse_overrides(["seed=1", "seed=2"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_overrides(["dataset.image-size=8", "dataset.image_size=16"])


def test_raydiff_config_names_the_file_for_top_level_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: 3\ngroups: {g: [a]}\n")
    _cfg, rows = load_config_explained(path)
    origin = {r["key"]: r["origin"] for r in rows}
    assert origin["seed"] == f"file {path}"
    assert origin["dataset.layout"] == "default"
    _cfg, rows = load_config_explained(path, {"seed": 4})
    assert {r["key"]: r["origin"] for r in rows}["seed"] == "--set seed"


# -- the dashboard's host (issue 30, 6) -------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "example.org", "::"])
def test_a_non_loopback_dashboard_host_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match=r"^--set ray.dashboard_host.*not a loopback address"):
        load_config(None, {"ray.dashboard_host": host})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_dashboard_hosts_are_fine(host: str) -> None:
    assert load_config(None, {"ray.dashboard_host": host}).ray.dashboard_host == host


# -- per-category names, enabled twice (issue 30, 11) -----------------------------------------


PER_CATEGORY = {"variants": {"s": {"method": "static", "model": "pixel", "per_category": {"bottel": {"t0": 100, "steps": 10}}}}}


def test_a_per_category_override_for_no_category_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'bottel' is neither one of dataset.categories"):
        config_from_dict({"dataset": {"categories": ["bottle"]}, **PER_CATEGORY})
    # Categories discovered on disk: checked once they are known (the validation step).
    cfg = config_from_dict(PER_CATEGORY)
    with pytest.raises(ConfigError, match=r"per_category' names bottel, which is not among this run's categories"):
        check_overrides(cfg.variants, cfg.groups, ("bottle", "cable"), "dataset.root /data")
    check_overrides(cfg.variants, cfg.groups, ("bottel",), "dataset.root /data")
    grouped = config_from_dict({"groups": {"g": ["bottel"]}, **PER_CATEGORY})
    check_overrides(grouped.variants, grouped.groups, ("bottle",), "x")  # a group may list absent categories


def test_variants_enabled_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="'variants.enabled' lists 'kl' twice"):
        config_from_dict({"variants": {"enabled": ["kl", "static-gmm", "kl"]}})
