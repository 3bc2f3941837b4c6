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

What a field contributes is declared on it (``raydiff.config.schema``): ``{"id": "omit"}`` never,
``{"id": "unless-default"}`` only when not its default, ``{"id_name": OLD}`` under its earlier
name; :func:`id_dict` is the one walker that reads them. The rules that depend on other fields
(a pixel model's unused VAE, ...) are code, in ``_model_settings`` and ``_model_identity``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import yaml

from raydiff.config.schema import Config, ModelsConfig, ModelSpec, PostProcessConfig, TexturesConfig, VariantsConfig


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
        if rule == "omit" or (rule == "unless-default" and value == f.default):
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


def _model_settings(spec: ModelSpec) -> dict[str, Any]:
    """A model's spec as hashed, without the settings its architecture, noise and variance never
    read (the VAE of a pixel model, the simplex settings of a Gaussian one, ...): conditional on
    other fields, so code rather than field metadata."""
    d = id_dict(spec)
    if spec.train_epochs is not None:  # the budget is in epochs: train_steps is never read
        d.pop("train_steps")
    if not spec.is_latent:
        d.pop("vae")
    if not spec.learned_variance:
        d.pop("vlb_weight")
    if spec.noise != "simplex":
        d.pop("simplex")
    if spec.noise != "gmm":
        d.pop("gmm")
    return d


def _model_identity(cfg: Config, name: str, category: str) -> dict[str, Any]:
    """What determines model ``name``'s weights for ``category``: its settings (``_model_settings``)
    with fixed-small vs fixed-large (which only matters when sampling) and other categories'
    augmentation left out (both depend on what is asked: code, not field metadata)."""
    spec = cfg.models.spec(name)
    d = _model_settings(spec)
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
    models = {name: _model_settings(spec) for name, spec in cfg.models.specs.items()}
    return digest({"dataset": _dataset_identity(cfg), "models": models, "features": id_dict(cfg.features),
                   "variants": variants, "seed": cfg.seed})
