"""Today's ids, pinned: every shipped config and configs in the earlier forms (``models.kinds``,
the ``latent:`` spelling, flat VAE keys, the fixed variants form, renamed keys of a stored config)
keep their run id, their model ids and their loaded Config (``config``: a digest of its dict).

The values were computed before the loader was split and ``raydiff.config.compat`` written
(issue 27); a change here means existing run folders and checkpoints would no longer be found.
Every ``config`` digest was re-pinned when ``features.resnet34_weights`` became ``features.weights``
(issue 29 item 6; the field is hashed into ids under its earlier name, so no id moved for it).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from raydiff.config import ModelsConfig, VariantsConfig, config_from_dict, load_config, model_id, run_id
from raydiff.config.identity import digest

REPO = Path(__file__).resolve().parents[1]

#: name → (config path from the repository root, overrides, upgrade)
FILE_CASES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "textures": ("configs/textures.yaml", {"dataset.root": "/x"}, False),
    "mvtec": ("configs/mvtec.yaml", {}, False),
    "mvtec-papers": ("configs/mvtec-papers.yaml", {}, False),
    "mvtec-ad2": ("configs/mvtec-ad2.yaml", {}, False),
    "visa": ("configs/visa.yaml", {}, False),
    "visa-papers": ("configs/visa-papers.yaml", {}, False),
    "btad": ("configs/btad.yaml", {}, False),
    "btad-papers": ("configs/btad-papers.yaml", {}, False),
    "real-smoke": ("configs/real-smoke.yaml", {}, False),
    "fixture-named-v1": ("tests/data/textures-named-v1.yaml", {"dataset.root": "/x"}, False),
    "fixture-kinds-form": ("tests/data/textures-kinds-form.yaml", {"dataset.root": "/x"}, False),
    "fixture-floors-v2": ("tests/data/textures-floors-v2.yaml", {"dataset.root": "/x"}, False),
    # --set in the earlier spellings, on the named form (tests/simulated_clusters.py, the smoke run).
    "textures-set-latent-flat": ("configs/textures.yaml", {
        "dataset.root": "/x", "models.train_steps": 4, "models.latent.vae_train_steps": 2}, False),
    "textures-set-kinds": ("configs/textures.yaml", {
        "dataset.root": "/x", "models.kinds": ["pixel"], "variants.enabled": ["no-diffusion", "kl"]}, False),
    "real-smoke-set-latent": ("configs/real-smoke.yaml", {"models.latent.vae_train_steps": 10}, False),
}

#: name → (config data, upgrade)
DICT_CASES: dict[str, tuple[dict[str, Any], bool]] = {
    "defaults": ({}, False),
    # tests/conftest.py's texture_models: models.kinds, the latent: spelling.
    "kinds-latent-spelling": ({
        "dataset": {"layout": "mvtec", "root": "/x", "image_size": 32, "categories": ["brick"]},
        "models": {"kinds": ["pixel", "pixel-simplex", "pixel-gmm", "latent"], "preset": "tiny",
                   "base_channels": 8, "batch_size": 8, "lr": 2e-3, "ema_decay": 0.99,
                   "latent": {"vae_train_steps": 100, "latent_channels": 2, "vae_downsample": 1}},
        "seed": 0}, False),
    # flat VAE keys, shared and in a named model.
    "flat-vae-shared": ({"models": {"preset": "tiny", "vae_train_steps": 7, "latent-channels": 2}}, False),
    "flat-vae-named": ({"models": {"preset": "tiny", "px": {"arch": "pixel"},
                                   "lat": {"arch": "latent", "vae_lr": 0.5, "latent": {"vae_downsample": 1}}},
                        "variants": {"d": {"method": "dynamic", "model": "lat"}}}, False),
    # the fixed variants form (one key per built-in variant, enabled).
    "fixed-variants": ({"models": {"kinds": ["pixel", "pixel-gmm"], "pixel-gmm": {"lr": 3e-4}},
                        "variants": {"enabled": ["kl", "static-gmm"], "kl": {"top_k": 3},
                                     "static_gmm": {"t0": 100, "steps": 10},
                                     "trend": {"levels": [25, 50, 100], "output": "intensity"}}}, False),
    "fixed-variants-enabled-only": ({"variants": {"enabled": ["kl", "static-gmm"]}}, False),
    "fixed-variants-kl": ({"variants": {"kl": {"top_k": 3}}}, False),
    # a stored config (a run folder's config.yaml) with the renamed dataset keys.
    "stored-renamed": ({"dataset": {"kind": "visa", "fit": "center-crop", "categories": ["candle"]}}, True),
    # textures settings, one added later at its default and one not.
    "textures-section": ({"textures": {"n_train": 10, "defect_scale": 1.0}}, False),
    "textures-section-added": ({"textures": {"n_train": 10, "patch_tone_sd": 0.5}}, False),
    # per-category overrides and groups.
    "per-category": ({"dataset": {"categories": ["carpet", "grid", "bottle"]},
                      "groups": {"tex": ["carpet", "grid"]},
                      "variants": {"s": {"method": "static", "model": "pixel", "per_category": {
                          "tex": {"t0": 100, "steps": 10}, "bottle": {"smoothing": "gaussian"}}}}}, False),
}


EXPECTED: dict[str, dict[str, Any]] = {
    'textures': {
        "run": '677bb5c420c2', "config": '75cdb14593f8',
        "models": {
            'pixel/bottle': 'ce4092bc98c7',
            'pixel-simplex/bottle': '3ae57b8fb8a0',
            'pixel-gmm/bottle': '8737e8057d87',
            'latent/bottle': '3c1110056e0e',
        },
    },
    'mvtec': {
        # Run id re-pinned for issue 29 item 6: with domain adaptation on, the adapted φ now serves
        # DynAD's instances only (the kl variant's feature term keeps the base φ), so scores differ.
        "run": '49123c8a124b', "config": '683cccd775d3',
        "models": {
            'pixel/bottle': 'ad4c998cc030',
            'pixel/cable': '96531486eae6',
            'pixel-simplex/bottle': 'f2e3238eba23',
            'pixel-simplex/cable': '917f0172597d',
            'pixel-gmm/bottle': 'b66602288253',
            'pixel-gmm/cable': 'ae1ed09ad985',
        },
    },
    'mvtec-ad2': {
        # Added for issue 31 (MVTec AD 2's layout and config).
        "run": 'a15f3c68e9ff', "config": '1dda336a93dc',
        "models": {
            'pixel/can': '8d6d560465df',
            'pixel/fabric': '8d6d560465df',
            'pixel-simplex/can': 'cac2d8f79c3c',
            'pixel-simplex/fabric': 'cac2d8f79c3c',
            'pixel-gmm/can': '230d50d9f2cf',
            'pixel-gmm/fabric': '230d50d9f2cf',
        },
    },
    'mvtec-papers': {
        # Re-pinned for issue 29 (the papers' settings change what these configs train and score, on
        # purpose): holdout_fraction 0 (every model id), train_epochs (Fučka, DynAD), border_rings and
        # clip_x0 off and Kashihara's t0 = 4 / 9 (the run id). Item 6: the DA ablation rows (DynAD
        # Table 6), the ablation rows on dynad's ddim_grid, the adapted φ DynAD's only (the run id).
        # Item 5: RAN's model as its train.sh (preset guided, batch 2, 10k steps, lr annealed
        # linearly, EMA 0.997, no gradient clipping; the init unset here): the ran model ids.
        "run": 'cd98fbf5b574', "config": '5f1dcc0c604f',
        "models": {
            'fucka-gaussian/bottle': 'f55782e93536',
            'fucka-gaussian/cable': 'f55782e93536',
            'fucka-simplex/bottle': '03cc275bfecd',
            'fucka-simplex/cable': '03cc275bfecd',
            'fucka-gmm/bottle': 'd44de7cf1f19',
            'fucka-gmm/cable': 'd44de7cf1f19',
            'kashihara/bottle': '89b76e3c3ee6',
            'kashihara/cable': '89b76e3c3ee6',
            'dynad/bottle': '637e5a8a020f',
            'dynad/cable': '637e5a8a020f',
            'ran/bottle': '5d6adb4bc204',
            'ran/cable': '5d6adb4bc204',
        },
    },
    'visa': {
        # Run id re-pinned for issue 29 item 6 (as mvtec: the adapted φ is DynAD's only).
        "run": 'fabc5fec7247', "config": 'b8d96378e1e9',
        "models": {
            'pixel/candle': 'a2691494b3d6',
            'pixel/capsules': 'a2691494b3d6',
            'pixel-simplex/candle': '3f7deefa372d',
            'pixel-simplex/capsules': '3f7deefa372d',
            'pixel-gmm/candle': 'f4a0e1c2deaa',
            'pixel-gmm/capsules': 'f4a0e1c2deaa',
            'latent/candle': '74a5759f2c6b',
            'latent/capsules': '74a5759f2c6b',
        },
    },
    'visa-papers': {
        # Re-pinned for issue 29: holdout_fraction 0, train_epochs 300, border_rings off.
        # Item 6: the DA ablation rows (DynAD Table 6), the adapted φ DynAD's only (the run id).
        "run": '37ca62da029a', "config": 'b571e8f43bc5',
        "models": {
            'dynad/candle': '45259b982396',
            'dynad/capsules': '45259b982396',
        },
    },
    'btad': {
        "run": 'dd345f81dcbe', "config": '5bed3fd4034c',
        "models": {
            'pixel/01': '6a5e2ba0a051',
            'pixel/02': '6a5e2ba0a051',
            'pixel-simplex/01': '24099712c61f',
            'pixel-simplex/02': '24099712c61f',
            'pixel-gmm/01': '911b1afb5089',
            'pixel-gmm/02': '911b1afb5089',
            'latent/01': 'd79557ab38a4',
            'latent/02': 'd79557ab38a4',
        },
    },
    'btad-papers': {
        # Re-pinned for issue 29: holdout_fraction 0, train_epochs 300, border_rings off.
        # Item 6: the DA ablation rows (DynAD Table 6), the adapted φ DynAD's only (the run id).
        "run": '8ed27e5ad12d', "config": '252a519d68c1',
        "models": {
            'dynad/01': 'd3d873fe92f8',
            'dynad/02': 'd3d873fe92f8',
        },
    },
    'real-smoke': {
        "run": '1c6d7e175d7b', "config": 'aed1dee27eef',
        "models": {
            'pixel/bottle': '1c07907e4d48',
            'pixel-simplex/bottle': 'b719b054a44a',
            'pixel-gmm/bottle': '7e26593284c2',
            'latent/bottle': '31d1545f0e15',
        },
    },
    'fixture-named-v1': {
        "run": '6b94f51c0325', "config": '3a69a610b67a',
        "models": {
            'pixel/bottle': '9b8993cf4165',
            'pixel-simplex/bottle': 'e98d8d25d5d6',
            'pixel-gmm/bottle': 'cea5948e0e06',
            'latent/bottle': '290591483500',
        },
    },
    'fixture-kinds-form': {
        "run": '6b94f51c0325', "config": '027a4ae3f211',
        "models": {
            'pixel/bottle': '9b8993cf4165',
            'pixel-simplex/bottle': 'e98d8d25d5d6',
            'pixel-gmm/bottle': 'cea5948e0e06',
            'latent/bottle': '290591483500',
        },
    },
    'fixture-floors-v2': {
        "run": 'af183426d3b6', "config": '39854bb065dc',
        "models": {
            'pixel/bottle': '8fff913e2ac5',
            'pixel-simplex/bottle': '0f522e9dc810',
            'pixel-gmm/bottle': 'dac0b04dae66',
            'latent/bottle': '40d461f07923',
        },
    },
    'textures-set-latent-flat': {
        "run": '2cedaa1f678b', "config": '3bcb6165b19c',
        "models": {
            'pixel/bottle': '5bfb7b79573d',
            'pixel-simplex/bottle': 'a4de980ea535',
            'pixel-gmm/bottle': '419f65493c94',
            'latent/bottle': 'baf35f90647d',
        },
    },
    'textures-set-kinds': {
        "run": 'ddd4dd6706d2', "config": '21bef1a1701d',
        "models": {
            'pixel/bottle': 'ce4092bc98c7',
        },
    },
    'real-smoke-set-latent': {
        # configs/real-smoke.yaml is in the named form now: this --set reaches the latent model's VAE
        # only, not the (unused, unhashed) VAE settings of the pixel models: the ids stay.
        "run": '72801fd73d92', "config": '676186196d4a',
        "models": {
            'pixel/bottle': '1c07907e4d48',
            'pixel-simplex/bottle': 'b719b054a44a',
            'pixel-gmm/bottle': '7e26593284c2',
            'latent/bottle': 'e57e8e7d04b8',
        },
    },
    'defaults': {
        "run": 'f949337fb80f', "config": '5b257d8233a5',
        "models": {
            'pixel/bottle': '9f3a6b7f8187',
            'pixel-simplex/bottle': '0d467d389029',
            'pixel-gmm/bottle': '7412f6f3da3c',
            'latent/bottle': '13c2d824df17',
        },
    },
    'kinds-latent-spelling': {
        "run": '4bb03556d663', "config": 'add7652f5a21',
        "models": {
            'pixel/brick': '7b47f044047a',
            'pixel-simplex/brick': 'ad7211716be7',
            'pixel-gmm/brick': '142b116d1e33',
            'latent/brick': '21c43cb9a425',
        },
    },
    'flat-vae-shared': {
        "run": 'f192342195cb', "config": '2d4ab944577b',
        "models": {
            'pixel/bottle': '38ef9e3d9803',
            'pixel-simplex/bottle': '175e08e7fed9',
            'pixel-gmm/bottle': '608577c24c80',
            'latent/bottle': '561337184d8f',
        },
    },
    'flat-vae-named': {
        "run": '62e1fe7c09a0', "config": '13fb598b18e0',
        "models": {
            'px/bottle': '11caa299fbe0',
            'lat/bottle': '28c6af7356cb',
        },
    },
    'fixed-variants': {
        "run": '8586fa7710dc', "config": '436231ef8817',
        "models": {
            'pixel/bottle': '9f3a6b7f8187',
            'pixel-gmm/bottle': 'f53014427516',
        },
    },
    'fixed-variants-enabled-only': {
        "run": 'f949337fb80f', "config": '990593e8d24e',
        "models": {
            'pixel/bottle': '9f3a6b7f8187',
            'pixel-simplex/bottle': '0d467d389029',
            'pixel-gmm/bottle': '7412f6f3da3c',
            'latent/bottle': '13c2d824df17',
        },
    },
    'fixed-variants-kl': {
        "run": '6cfa1e5d8862', "config": '07c146c027d0',
        "models": {
            'pixel/bottle': '9f3a6b7f8187',
            'pixel-simplex/bottle': '0d467d389029',
            'pixel-gmm/bottle': '7412f6f3da3c',
            'latent/bottle': '13c2d824df17',
        },
    },
    'stored-renamed': {
        "run": '16363356e547', "config": '994c998e6455',
        "models": {
            'pixel/candle': '1b0383aeb2b6',
            'pixel-simplex/candle': '2aa1457602a4',
            'pixel-gmm/candle': '11ba4838e86f',
            'latent/candle': 'e1559040a3f6',
        },
    },
    'textures-section': {
        "run": '04dec1c7c444', "config": '2ecbcd4bdd15',
        "models": {
            'pixel/bottle': '562dbc465634',
            'pixel-simplex/bottle': '167b7512e59a',
            'pixel-gmm/bottle': '9c8f7ff77e07',
            'latent/bottle': 'b4bd03d84eef',
        },
    },
    'textures-section-added': {
        "run": '5c98870816f6', "config": '90805ff1bcb8',
        "models": {
            'pixel/bottle': 'c04000766d63',
            'pixel-simplex/bottle': 'd622b9bf331e',
            'pixel-gmm/bottle': 'd574deba68d1',
            'latent/bottle': '64c396c86d64',
        },
    },
    'per-category': {
        "run": 'bca191bf0b3c', "config": '45a6ffbc60c3',
        "models": {
            'pixel/carpet': '9f3a6b7f8187',
            'pixel/grid': '9f3a6b7f8187',
            'pixel-simplex/carpet': '0d467d389029',
            'pixel-simplex/grid': '0d467d389029',
            'pixel-gmm/carpet': '7412f6f3da3c',
            'pixel-gmm/grid': '7412f6f3da3c',
            'latent/carpet': '13c2d824df17',
            'latent/grid': '13c2d824df17',
        },
    },
}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"MVTEC_ROOT": "/data/mvtec", "VISA_ROOT": "/data/visa", "BTAD_ROOT": "/data/btad",
                        "REAL_DATA_ROOT": "/data/real", "MVTEC_AD2_ROOT": "/data/mvtec_ad_2"}.items():
        monkeypatch.setenv(name, value)
    for name in ("RAYDIFF_TEXTURES", "RESNET34_WEIGHTS", "RAYDIFF_OUT", "SD_VAE_PATH", "GUIDED_DIFFUSION_256_COND"):
        monkeypatch.delenv(name, raising=False)


def stable(obj: Any) -> Any:
    """A loaded Config as plain data, for "it loads to an equal Config": every field, except one
    declared ``{"id": "unless-default"}`` while at its default (a field added later leaves the
    pin alone, as it leaves the ids)."""
    if isinstance(obj, ModelsConfig):
        return {name: stable(spec) for name, spec in obj.specs.items()}
    if isinstance(obj, VariantsConfig):
        return {"enabled": list(obj.enabled), **{
            name: {"method": i.method, "model": i.model, "reproduces": i.reproduces, "params": stable(i.params),
                   "per_category": {c: stable(p) for c, p in i.per_category.items()}}
            for name, i in obj.instances.items()}}
    if dataclasses.is_dataclass(obj):
        return {f.name: _portable(f.name, stable(getattr(obj, f.name))) for f in dataclasses.fields(obj)
                if not (f.metadata.get("id") == "unless-default"
                        and getattr(obj, f.name) == f.metadata.get("id_default", f.default))}
    if isinstance(obj, Mapping):
        return {str(k): stable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [stable(v) for v in obj]
    return obj


def _portable(name: str, value: Any) -> Any:
    """``source`` (the config file the Config came from) relative to the repository, so that a pin
    does not depend on where the clone lives (CI clones elsewhere)."""
    if name == "source" and isinstance(value, str) and Path(value).is_absolute():
        return Path(value).resolve().relative_to(REPO).as_posix()
    return value


def _ids(cfg: Any) -> dict[str, Any]:
    cats = list(cfg.dataset.categories[:2]) or ["bottle"]
    return {"run": run_id(cfg), "config": digest(stable(cfg)),
            "models": {f"{m}/{c}": model_id(cfg, m, c) for m in cfg.models.names for c in cats}}


def test_every_case_is_pinned() -> None:
    assert set(EXPECTED) == set(FILE_CASES) | set(DICT_CASES)


@pytest.mark.parametrize("name", sorted(FILE_CASES))
def test_file_ids_stay(name: str) -> None:
    path, overrides, upgrade = FILE_CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the earlier forms are pinned on purpose
        cfg = load_config(REPO / path, overrides, upgrade=upgrade)
    assert _ids(cfg) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(DICT_CASES))
def test_dict_ids_stay(name: str) -> None:
    data, upgrade = DICT_CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        cfg = config_from_dict(data, upgrade=upgrade)
    assert _ids(cfg) == EXPECTED[name]
