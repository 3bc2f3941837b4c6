"""A config as plain data (``config_to_dict``, what a run folder's config.yaml holds) and its two
stable ids, which name output folders:

- ``model_id(cfg, name, category)``: what determines one model's trained weights (dataset
  settings minus root and category list, the model's spec, seed). Checkpoints live in
  ``OUT/models/<model_id>/<dataset>/<category>/<name>/``; adding a model or a variant to a
  config leaves every other model's id alone.
- ``run_id(cfg)``: everything that determines any score (dataset, every model's spec, φ's
  settings, every variant instance, seed). Scores live in ``OUT/<run_id>/``. The category
  list, ``variants.enabled``, the output root and Ray resources are left out, so a later run
  with more categories or more of the config's variants extends the same folder.

What a field contributes is declared on it (the vocabulary is ``raydiff.config.fields``):
``{"id": "omit"}`` never, ``{"id": "unless-default"}`` only when not its default,
``{"id_name": OLD}`` under its earlier name; :func:`id_dict` is the one walker that reads them.
The rules that depend on other fields (a pixel model's unused VAE, ...) are code, in
``_model_settings`` and ``_model_identity``.

Files are hashed by content, never by path (issue 31): φ's weights (``features.weights``) and a
latent model's pretrained VAE folder (``vae_path``) enter the ids as their sha256
(``weights_sha256``, ``vae_sha256``), which :func:`with_content_digests` records when a config
is loaded; moving the file keeps every id, editing it in place changes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from raydiff.config.dataset import TexturesConfig
from raydiff.config.methods import PostProcessConfig
from raydiff.config.models import ModelsConfig, ModelSpec
from raydiff.config.schema import Config
from raydiff.config.sources import Where, blame
from raydiff.config.variants import VariantsConfig
from raydiff.errors import ConfigError


def _fields(obj: Any) -> list[dataclasses.Field[Any]]:
    """A dataclass's fields as written: a method's own parameters first, post-processing last."""
    fs = [f for f in dataclasses.fields(obj) if not f.metadata.get("internal")]
    if isinstance(obj, PostProcessConfig):
        shared = {f.name for f in dataclasses.fields(PostProcessConfig)}
        fs = [f for f in fs if f.name not in shared] + [f for f in fs if f.name in shared]
    return fs


def _variants_dict(variants: VariantsConfig, params_dict: Any) -> dict[str, Any]:
    """Named instances with their method, model and every parameter (``params_dict`` of them);
    per-category overrides as the keys that differ (from the full parameters)."""
    out: dict[str, Any] = {"enabled": list(variants.enabled)}
    for name, inst in variants.instances.items():
        full = config_to_dict(inst.params)
        body = {"method": inst.method, "model": inst.model, **params_dict(inst.params)}
        if inst.reproduces is not None:
            body["reproduces"] = inst.reproduces
        if inst.per_category:
            body["per_category"] = {cat: {k: v for k, v in config_to_dict(p).items() if v != full[k]}
                                    for cat, p in inst.per_category.items()}
        out[name] = body
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain data (lists, dicts, scalars) with YAML key spelling; round-trips through load.

    Models are written as named models with every setting; variants as named instances with
    their method, model and every parameter, per-category overrides as the keys that differ."""
    if isinstance(cfg, ModelsConfig):
        return {name: _spec_dict(spec) for name, spec in cfg.specs.items()}
    if isinstance(cfg, VariantsConfig):
        return _variants_dict(cfg, config_to_dict)
    if dataclasses.is_dataclass(cfg):
        return {f.name: _plain(getattr(cfg, f.name)) for f in _fields(cfg)}
    out: dict[str, Any] = _plain(cfg)
    return out


def _spec_dict(spec: ModelSpec) -> dict[str, Any]:
    """A model as written: its budget as one of train_steps and train_epochs (the loader refuses
    both), so a dumped config loads again."""
    d = {f.name: _plain(getattr(spec, f.name)) for f in _fields(spec)}
    d.pop("train_steps" if spec.train_epochs is not None else "train_epochs")
    return d


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return config_to_dict(obj)
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [_plain(v) for v in obj]
    return obj


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def digest(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def id_dict(obj: Any) -> dict[str, Any]:
    """A section as hashed into ids: its fields by their id metadata (see the module docstring),
    nested sections walked the same way."""
    out: dict[str, Any] = {}
    for f in _fields(obj):
        value = getattr(obj, f.name)
        rule = f.metadata.get("id")
        if rule == "omit" or (rule == "unless-default" and value == f.metadata.get("id_default", f.default)):
            continue
        out[f.metadata.get("id_name", f.name)] = id_dict(value) if dataclasses.is_dataclass(value) else _plain(value)
    return out


def _dataset_identity(cfg: Config) -> dict[str, Any]:
    ds = id_dict(cfg.dataset)
    # The demo's generated images depend on the generator's settings: they are part of the data,
    # hashed only when the section differs from its defaults (configs without it keep their ids).
    if cfg.textures != TexturesConfig():
        ds["textures"] = id_dict(cfg.textures)
    return ds


def _model_settings(spec: ModelSpec, name: str = "NAME") -> dict[str, Any]:
    """A model's spec as hashed, without the settings its architecture, noise and variance never
    read (the VAE of a pixel model, the simplex settings of a Gaussian one, ...): conditional on
    other fields, so code rather than field metadata. A pretrained VAE as its content's digest."""
    d = id_dict(spec)
    if spec.train_epochs is not None:  # the budget is in epochs: train_steps is never read
        d.pop("train_steps")
    if not spec.is_latent:
        d.pop("vae")
    else:
        d["vae"].pop("vae_expected_sha256", None)  # equal to the folder's digest, or an error
        if spec.vae.vae_path is not None:  # by content: moving the folder keeps the id
            d["vae"].pop("vae_path")
            d["vae"]["vae_sha256"] = _digest_for_id(spec.vae.vae_path, True, vae_keys(name), spec.vae.vae_sha256,
                                                    spec.vae.vae_expected_sha256)
    if not spec.learned_variance:
        d.pop("vlb_weight")
    if spec.noise != "simplex":
        d.pop("simplex")
    if spec.noise != "gmm":
        d.pop("gmm")
    if spec.init.checkpoint is None:  # from scratch: the init settings are never read
        d.pop("init", None)
    return d


def _model_identity(cfg: Config, name: str, category: str) -> dict[str, Any]:
    """What determines model ``name``'s weights for ``category``: its settings (``_model_settings``)
    with fixed-small vs fixed-large (which only matters when sampling) and other categories'
    augmentation left out (both depend on what is asked: code, not field metadata)."""
    spec = cfg.models.spec(name)
    d = _model_settings(spec, name)
    d["learned_variance"] = spec.learned_variance
    d.pop("variance")
    d.pop("augment_per_category")
    d["augment"] = config_to_dict(spec.augment_for(category))
    return d


def model_id(cfg: Config, name: str, category: str) -> str:
    """Stable id of what determines the weights of model ``name`` for ``category`` (dataset
    settings minus root and category list, the model's spec as ``_model_identity`` reads it,
    seed). The model's folder is ``OUT/models/<model_id>/<dataset>/<category>/<name>``."""
    return digest({"dataset": _dataset_identity(cfg), "model": _model_identity(cfg, name, category),
                   "seed": cfg.seed})


def run_id(cfg: Config) -> str:
    """Stable id of what determines every score (see the module docstring): the dataset
    settings, every model's spec, φ's settings, every variant instance the config defines
    (enabled or not: ``variants.enabled`` selects within a run folder) and the seed."""
    variants = _variants_dict(cfg.variants, id_dict)
    variants.pop("enabled")
    models = {name: _model_settings(spec, name) for name, spec in cfg.models.specs.items()}
    features = id_dict(cfg.features)
    features.pop("expected_sha256", None)  # equal to the file's digest, or an error
    if cfg.features.weights is not None:  # by content: moving the file keeps the run
        features.pop("resnet34_weights")
        features["weights_sha256"] = _digest_for_id(cfg.features.weights, False, PHI_KEYS, cfg.features.weights_sha256,
                                                    cfg.features.expected_sha256)
    if cfg.features.domain_adaptation_epochs:
        # Issue 29: the adapted φ serves DynAD's instances only (RAN's feature term keeps the base
        # φ), so a config that adapts scores otherwise than before: it gets a new run folder.
        features["adapted_phi"] = "dynamic-only"
    return digest({"dataset": _dataset_identity(cfg), "models": models, "features": features,
                   "variants": variants, "seed": cfg.seed})


# --------------------------------------------------------------------------------------------
# Files hashed by content: φ's weights file and a latent model's pretrained VAE folder
# --------------------------------------------------------------------------------------------

#: (the path's key, the recorded digest's, the expected digest's) of φ's weights.
PHI_KEYS: tuple[str, str, str] = ("features.weights", "features.weights_sha256", "features.expected_sha256")


def vae_keys(name: str) -> tuple[str, str, str]:
    prefix = f"models.{name}.vae"
    return f"{prefix}.vae_path", f"{prefix}.vae_sha256", f"{prefix}.vae_expected_sha256"


def checked_sha256(path: str, folder: bool, keys: tuple[str, str, str], recorded: str | None,
                   expected: str | None, where: str | None = None) -> str:
    """The sha256 of the file (``folder``: the folder, ``raydiff.io.folder_sha256``) at ``path``,
    read now (remembered per process while it is unchanged). ConfigError naming the key, the path
    and both digests when it is missing or differs from the ``expected`` (published) or the
    ``recorded`` digest (``keys``: the path's key, the recorded digest's, the expected one's)."""
    from raydiff.io import file_sha256, folder_sha256

    what = "folder" if folder else "file"
    p = Path(path)
    if not (p.is_dir() if folder else p.is_file()):
        raise ConfigError(where or keys[0], f"{keys[0]}: {path} is not a {what}; its sha256 names the outputs "
                          "made with it.", f"point {keys[0]} at the {what} (or unset it: null, or an unset "
                          f"${{VAR:-}}), or give {keys[2]} (its published digest) to plan without it.")
    actual = (folder_sha256 if folder else file_sha256)(p)
    if expected is not None and actual != expected:
        raise ConfigError(where or keys[2], f"{keys[0]}: {path} has sha256 {actual}, but {keys[2]} is {expected} "
                          f"(the published {what}'s).", f"use the published {what} (download it again), or "
                          f"remove {keys[2]} to use this one (it is then reported as unverified).")
    if recorded is not None and actual != recorded:
        raise ConfigError(where or keys[1], f"{keys[0]}: {path} has sha256 {actual}, but {keys[1]} is {recorded}: "
                          f"the {what} changed since the config was loaded (a run folder's config.yaml records "
                          "it).", f"restore the {what} the run was made with, or load the config from its own "
                          f"file (without {keys[1]}: a new run).")
    return actual


def _recorded(path: str, folder: bool, keys: tuple[str, str, str], recorded: str | None, expected: str | None,
              where: str | None = None) -> str | None:
    """The digest to record: the one already recorded (checked against ``expected``), else the
    file's when it is there (checked), else None."""
    if recorded is not None:
        if expected is not None and expected != recorded:
            raise ConfigError(where or keys[2], f"{keys[1]} is {recorded} (the {keys[0]} {path} the config was "
                              f"made with), but {keys[2]} is {expected}.", f"point {keys[0]} at the published "
                              f"file without {keys[1]}, or remove {keys[2]}.")
        return recorded
    return checked_sha256(path, folder, keys, None, expected, where) if Path(path).exists() else None


def _digest_for_id(path: str, folder: bool, keys: tuple[str, str, str], recorded: str | None,
                   expected: str | None) -> str:
    """What an id hashes for the file at ``path``: its recorded digest, else the file's, else the
    expected one (a config planned where the file is not); a missing file without either: ConfigError."""
    found = _recorded(path, folder, keys, recorded, expected) or expected
    return found if found is not None else checked_sha256(path, folder, keys, None, None)  # raises: missing


def with_content_digests(cfg: Config, where: Where = "<config>") -> Config:
    """``cfg`` with the digest of each file it hashes by content recorded (``features.weights_sha256``,
    each latent model's ``vae.vae_sha256``) where the file is there, checked against the expected
    digests: what the loader returns, so the run's config.yaml carries them. A file that is not
    there is left unrecorded (its id then needs it: :func:`_digest_for_id`)."""
    f = cfg.features
    if f.weights is not None:
        sha = _recorded(f.weights, False, PHI_KEYS, f.weights_sha256, f.expected_sha256,
                        blame(where, *PHI_KEYS))
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(f, weights_sha256=sha))
    specs = dict(cfg.models.specs)
    for name, spec in specs.items():
        vae = spec.vae
        if spec.is_latent and vae.vae_path is not None:
            keys = vae_keys(name)
            shared = tuple(k.replace(f"models.{name}.", "models.") for k in keys)
            sha = _recorded(vae.vae_path, True, keys, vae.vae_sha256, vae.vae_expected_sha256,
                            blame(where, *keys, *shared))
            specs[name] = dataclasses.replace(spec, vae=dataclasses.replace(vae, vae_sha256=sha))
    return cfg if specs == cfg.models.specs else dataclasses.replace(cfg, models=ModelsConfig(specs=specs))
