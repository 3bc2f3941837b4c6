"""The ``models``, ``variants`` and ``groups`` sections, in the named form (``raydiff.config.compat``
has already rewritten the earlier ones):

- ``models: {shared settings..., NAME: {arch, noise, variance, ..., vae: {...}}}``: one
  ``ModelSpec`` per name, the shared settings under each; no name = the built-in models.
- ``variants: {NAME: {method, model, ...params, per_category: {CATEGORY|GROUP: {...}}}, enabled}``:
  one ``VariantInstance`` per name; no instance = the built-in variants.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from raydiff.config.build import build, check_plain_name, convert, mapping
from raydiff.config.compat import merge
from raydiff.config.published import PUBLISHED_KEYS
from raydiff.config.methods import METHOD_TABLE
from raydiff.config.models import BUILTIN_MODELS, ModelsConfig, ModelSpec
from raydiff.config.sources import Where, at, blame
from raydiff.config.variants import BUILTIN_VARIANTS, VariantInstance, VariantsConfig
from raydiff.errors import ConfigError

_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}


def build_models(data: Any, where: Where) -> ModelsConfig:
    """``models:``: shared settings (ModelSpec keys) and named models (``NAME: {...}``)."""
    data = mapping(data, "models", where)
    shared: dict[str, Any] = {}
    named: dict[str, Mapping[str, Any]] = {}
    for raw_key, value in data.items():
        key = str(raw_key)
        if key.replace("-", "_") in _MODEL_FIELDS:
            shared[key] = value
        elif isinstance(value, Mapping) or value is None:
            check_plain_name(key, "models", at(where, f"models.{key}"))
            named[key] = dict(mapping(value, f"models.{key}", where))
        else:
            raise ConfigError(
                at(where, f"models.{key}"), f"unknown key 'models.{key}'.",
                f"use a model setting ({', '.join(sorted(_MODEL_FIELDS))}) or define a model "
                f"'{key}: {{arch: pixel, ...}}'.")
    _check_one_budget(shared, "models", where)
    build(ModelSpec, shared, "models", where)  # errors in the shared settings name models.KEY
    specs = {}
    for name in list(named) or list(BUILTIN_MODELS):
        own = named.get(name, {})
        _check_one_budget(own, f"models.{name}", where)
        # A model's own budget replaces a shared one of the other kind (steps vs epochs).
        mine = _own_budget(own)
        base = {k: v for k, v in shared.items() if not (mine and _budget_key(k) not in (None, mine))}
        merged = merge(merge(base, BUILTIN_MODELS.get(name, {})), own)
        specs[name] = _init_digest(build(ModelSpec, merged, f"models.{name}", where), name, where)
    return ModelsConfig(specs=specs)


def _init_digest(spec: ModelSpec, name: str, where: Where) -> ModelSpec:
    """A pretrained init's sha256, read from the file unless the config gives it: the model id
    hashes the file's content, not its path (``raydiff.config.identity``)."""
    from pathlib import Path

    from raydiff.io import file_sha256

    init = spec.init
    if init.checkpoint is None or init.sha256 is not None:
        return spec
    if not Path(init.checkpoint).is_file():
        raise ConfigError(
            blame(where, f"models.{name}.init.checkpoint", "models.init.checkpoint"),
            f"models.{name}.init.checkpoint: {init.checkpoint} is not a file.",
            "point it at the pretrained UNet's state dict (.safetensors or .pt), or unset it (null, or an unset "
            "${VAR:-}) to train from scratch.")
    return dataclasses.replace(spec, init=dataclasses.replace(init, sha256=file_sha256(init.checkpoint)))


_BUDGET_KEYS = ("train_steps", "train_epochs")


def _budget_key(key: Any) -> str | None:
    name = str(key).replace("-", "_")
    return name if name in _BUDGET_KEYS else None


def _own_budget(settings: Mapping[str, Any]) -> str | None:
    return next((b for b in map(_budget_key, settings) if b), None)


def _check_one_budget(settings: Mapping[str, Any], prefix: str, where: Where) -> None:
    """train_steps and train_epochs are two ways to say one thing: one of them per level."""
    given = {b for b in map(_budget_key, settings) if b}
    if len(given) > 1:
        keys = [f"{prefix}.{k}" for k in settings if _budget_key(k)]
        raise ConfigError(blame(where, *keys), f"'{prefix}' sets both train_steps and train_epochs.",
                          "give one of them: train_epochs is resolved per category to "
                          "ceil(epochs x training images / batch_size) steps.")


def _resolve_overrides(
    name: str, cls: type, params_data: Mapping[str, Any], overrides: Mapping[str, Any],
    groups: Mapping[str, tuple[str, ...]], categories: tuple[str, ...], where: Where,
) -> dict[str, Any]:
    """``per_category`` of instance ``name`` → {category: params}: a group's entry applies to each
    of its categories, a category's own entry on top of it; two groups that give one category
    different values for one key are an error. With ``dataset.categories`` listed, a key that is
    neither a category nor a group is an error here; with categories discovered on disk,
    :func:`raydiff.config.check_overrides` checks it once they are known."""
    prefix = f"variants.{name}.per_category"
    from_groups: dict[str, dict[str, Any]] = {}
    setter: dict[tuple[str, str], str] = {}
    own: dict[str, Mapping[str, Any]] = {}
    known = set(categories) | {c for members in groups.values() for c in members}
    for raw_key, over in overrides.items():
        key = str(raw_key)
        over = mapping(over, f"{prefix}.{key}", where)
        build(cls, merge(params_data, over), f"{prefix}.{key}", where)  # names a bad key under its path
        if key in groups:
            for cat in groups[key]:
                for k, v in over.items():
                    k = str(k).replace("-", "_")
                    first = setter.get((cat, k))
                    if first is not None and from_groups[cat][k] != v:
                        raise ConfigError(
                            at(where, prefix), f"groups '{first}' and '{key}' both contain '{cat}' and give "
                            f"'{k}' different values ({from_groups[cat][k]!r}, {v!r}).",
                            f"set it for '{cat}' itself under {prefix}, or take '{cat}' out of one group.")
                    from_groups.setdefault(cat, {})[k] = v
                    setter[(cat, k)] = key
        else:
            check_plain_name(key, prefix, at(where, f"{prefix}.{key}"))
            if categories and key not in known:
                raise ConfigError(
                    at(where, f"{prefix}.{key}"), f"'{prefix}.{key}': '{key}' is neither one of dataset.categories "
                    f"({', '.join(categories)}) nor a group ({', '.join(groups) or 'none defined'}).",
                    "fix the name, add it to dataset.categories, or define the group under 'groups'.")
            own[key] = over
    out = {}
    for cat in [*from_groups, *[c for c in own if c not in from_groups]]:
        merged = merge(merge(params_data, from_groups.get(cat, {})), own.get(cat, {}))
        out[cat] = build(cls, merged, f"{prefix}.{cat}", where)
    return out


def _enabled(value: Any, where: Where) -> tuple[str, ...]:
    names: tuple[str, ...] = convert(value, tuple[str, ...], "variants.enabled", where)
    twice = next((v for i, v in enumerate(names) if v in names[:i]), None)
    if twice is not None:
        raise ConfigError(at(where, "variants.enabled"), f"'variants.enabled' lists '{twice}' twice (its rows would "
                          "be scored twice).", "list each variant once.")
    return names


def _method(name: str, body: dict[str, Any], key: str, where: Where) -> str:
    builtin = BUILTIN_VARIANTS.get(name)
    method = body.pop("method", builtin.method if builtin else None)
    if method in METHOD_TABLE:
        return str(method)
    here = at(where, key)
    if method is None:
        close = difflib.get_close_matches(name, list(BUILTIN_VARIANTS), n=1)
        hint = f"did you mean the built-in variant '{close[0]}'? " if close else ""
        raise ConfigError(here, f"variant '{name}' names no method and is not a built-in variant "
                          f"({', '.join(BUILTIN_VARIANTS)}).",
                          f"{hint}Else set '{key}.method' to one of: {', '.join(METHOD_TABLE)}.")
    raise ConfigError(here, f"variant '{name}' has method {method!r}; valid methods: {', '.join(METHOD_TABLE)}.",
                      f"set '{key}.method' to one of them.")


def build_variants(
    data: Any, models: ModelsConfig, groups: Mapping[str, tuple[str, ...]], categories: tuple[str, ...],
    where: Where,
) -> VariantsConfig:
    """``variants:``: named instances ``NAME: {method, model, ...params, per_category}`` and an
    optional ``enabled`` list; without instances, the built-in variants (those whose model the
    config defines)."""
    data = dict(mapping(data, "variants", where))
    enabled = data.pop("enabled", None)
    chosen_names = None if enabled is None else set(_enabled(enabled, where))
    if not data:
        data = {name: {} for name in BUILTIN_VARIANTS}
        if enabled is None:
            enabled = list(BUILTIN_VARIANTS)
            chosen_names = set(enabled)
    instances: dict[str, VariantInstance] = {}
    for raw_name, body in data.items():
        name = str(raw_name)
        key = f"variants.{name}"
        here = at(where, key)
        check_plain_name(name, "variants", here)
        body = dict(mapping(body, key, where))
        builtin = BUILTIN_VARIANTS.get(name)
        method = _method(name, body, key, where)
        model = body.pop("model", builtin.model if builtin else None)
        if model is not None and model not in models.names and chosen_names is not None and name not in chosen_names:
            continue  # not enabled, and its model was left out (``models.kinds``): nothing to check
        if model not in models.names:
            what = f"scores with model {model!r}, which 'models' does not define" if model else "names no model"
            raise ConfigError(here, f"variant '{name}' {what}; this config's models: {', '.join(models.names)}.",
                              f"set '{key}.model' to one of them (or define the model under 'models').")
        spec = METHOD_TABLE[method]
        arch = models.spec(model).arch
        if arch not in spec.archs:
            raise ConfigError(here, f"variant '{name}': method {method} scores {'/'.join(spec.archs)} models, but "
                              f"'{model}' is a {arch} model.", f"give '{key}.model' a {spec.archs[0]} model.")
        reproduces = body.pop("reproduces", None)
        if reproduces is not None and reproduces not in PUBLISHED_KEYS:
            raise ConfigError(here, f"'{key}.reproduces' is {reproduces!r}, not a published setting.",
                              f"use one of: {', '.join(PUBLISHED_KEYS)} (raydiff.config.published), or remove it.")
        per_category = mapping(body.pop("per_category", None), f"{key}.per_category", where)
        params_data = merge(builtin.params if builtin and builtin.method == method else {}, body)
        params = build(spec.params, params_data, key, where)
        resolved = _resolve_overrides(name, spec.params, params_data, per_category, groups, categories, where)
        instances[name] = VariantInstance(method, model, params, resolved, reproduces)
    if not instances:
        raise ConfigError(at(where, "variants"), "'variants' defines no variant: nothing would be scored.",
                          "define one, e.g. 'static: {method: static, model: pixel}'.")
    chosen = tuple(instances) if enabled is None else _enabled(enabled, where)
    unknown = [v for v in chosen if v not in instances]
    if unknown:
        raise ConfigError(at(where, "variants.enabled"), f"'variants.enabled' lists {', '.join(unknown)}, which "
                          "'variants' does not define.", f"use some of: {', '.join(instances)}.")
    return VariantsConfig(instances=instances, enabled=chosen)


def check_groups(groups: Mapping[str, tuple[str, ...]], categories: tuple[str, ...], where: Where) -> None:
    for name, members in groups.items():
        check_plain_name(name, "groups", at(where, f"groups.{name}"))
        if name in categories:
            raise ConfigError(at(where, f"groups.{name}"), f"'{name}' is both a group and a category.",
                              "rename the group.")
        for cat in members:
            check_plain_name(cat, f"groups.{name}", at(where, f"groups.{name}"))


def check_overrides(variants: VariantsConfig, groups: Mapping[str, tuple[str, ...]], categories: tuple[str, ...],
                    where: str) -> None:
    """Once the run's categories are known (discovered on disk when ``dataset.categories`` is
    empty): a ``per_category`` entry for none of them would silently never apply, so it is an
    error naming it. A group's members that are not in the run are fine (a group is a list)."""
    grouped = {c for members in groups.values() for c in members}
    for name, inst in variants.instances.items():
        stray = sorted(c for c in inst.per_category if c not in categories and c not in grouped)
        if stray:
            raise ConfigError(where, f"'variants.{name}.per_category' names {', '.join(stray)}, which is not among "
                              f"this run's categories ({', '.join(categories) or 'none'}).",
                              "fix the name, or remove the override (a group under 'groups' may list it).")
