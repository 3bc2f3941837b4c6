"""Earlier config forms → the named form: one pure ``dict → dict`` upgrade, run on a file's data
with its ``--set`` overrides applied, and on a stored run config, before anything else reads it.
The loader after it knows the named form only.

Each rewrite has the version that removes it (diffusers' ``deprecate`` habit); ``upgrade``
returns the rewrites made, and ``warn`` turns them into one ``FutureWarning`` each, naming the
old and the new spelling.

===========================================  ===========================================  =======
earlier form                                 named form                                   removed
===========================================  ===========================================  =======
``models.kinds: [a, b]``                     the named models ``a``, ``b`` (others        0.3.0
                                             dropped; a built-in name needs no body)
``models.latent: {vae_train_steps: ...}``    ``models.vae: {...}`` (shared VAE settings)  0.3.0
``models.vae_train_steps: ...`` (flat)       ``models.vae.vae_train_steps``               0.3.0
``models.NAME.latent: {...}``                ``models.NAME.vae: {...}``                   0.3.0
``models.NAME.vae_lr: ...`` (flat)           ``models.NAME.vae.vae_lr``                   0.3.0
``variants: {static_gaussian: {...}, ...}``  one instance per built-in variant with its   0.3.0
(one key per built-in variant)               method and model, and ``enabled``
``features.resnet34_weights``                ``features.weights`` (the file of            0.3.0
                                             ``features.arch``, resnet34 by default)
``dataset.kind`` / ``dataset.fit``           ``dataset.layout`` / ``dataset.resize``      stored
                                             (in a stored config only; in a file or       configs
                                             ``--set`` an error naming the new key)       only
===========================================  ===========================================  =======
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from raydiff.config.methods import METHOD_TABLE
from raydiff.config.models import BUILTIN_MODELS, LatentConfig, ModelSpec
from raydiff.config.variants import BUILTIN_VARIANTS, LegacyVariants
from raydiff.errors import ConfigError

#: The release that stops reading the earlier forms of ``models`` and ``variants``.
REMOVED_IN = "0.3.0"

#: Keys that were renamed: old dotted key → new one. A stored run or model config is read under
#: the new names; a file or ``--set`` that uses an old one is an error naming the new one.
RENAMED: dict[str, str] = {"dataset.kind": "dataset.layout", "dataset.fit": "dataset.resize"}
#: Keys spelled otherwise before, still read in a file, a ``--set`` and a stored config (with a
#: FutureWarning): old dotted key → new one. Giving both is an error.
ALIASES: dict[str, str] = {"features.resnet34_weights": "features.weights"}


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """One earlier spelling read as the named form."""

    old: str
    new: str
    removed_in: str = REMOVED_IN

    def message(self) -> str:
        return (f"config: '{self.old}' is an earlier form, read as '{self.new}'; raydiff {self.removed_in} "
                f"will no longer read it. Write '{self.new}' instead.")


_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}
_VAE_FIELDS = {f.name for f in dataclasses.fields(LatentConfig)}
_VARIANT_KEYS = ("method", "model", "per_category", "reproduces")
_LEGACY_VARIANT_FIELDS = {f.name for f in dataclasses.fields(LegacyVariants)}


def _field(key: Any) -> str:
    return str(key).replace("-", "_")


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; nested mappings (augment, simplex, vae, ...) are merged; a key
    may be spelled with ``-`` in one and ``_`` in the other."""
    out = dict(base)
    for k, v in over.items():
        old = next((ok for ok in out if _field(ok) == _field(k)), None)
        if old is not None and isinstance(out[old], Mapping) and isinstance(v, Mapping):
            out[old] = merge(out[old], v)
        else:
            if old is not None:
                del out[old]
            out[k] = v
    return out


def _is_vae_section(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(_field(k) in _VAE_FIELDS for k in value)


def _upgrade_models(models: Mapping[str, Any], at: Callable[[str], str], done: list[Rewrite]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kinds = None
    for raw_key, value in models.items():
        key = str(raw_key)
        if key == "kinds":
            kinds = value
        elif key == "latent" and _is_vae_section(value):
            out["vae"] = merge(out.get("vae") or {}, value)
            done.append(Rewrite("models.latent", "models.vae"))
        elif _field(key) in _VAE_FIELDS:
            out["vae"] = merge(out.get("vae") or {}, {key: value})
            done.append(Rewrite(f"models.{key}", f"models.vae.{key}"))
        elif _field(key) in _MODEL_FIELDS or not isinstance(value, Mapping):
            out[key] = merge(out[key], value) if key == "vae" and isinstance(out.get(key), Mapping) else value
        else:
            body = dict(value)
            if isinstance(body.get("latent"), Mapping) and "vae" not in body:
                body["vae"] = body.pop("latent")
                done.append(Rewrite(f"models.{key}.latent", f"models.{key}.vae"))
            for flat in [k for k in body if _field(k) in _VAE_FIELDS]:
                body["vae"] = merge(body.get("vae") or {}, {flat: body.pop(flat)})
                done.append(Rewrite(f"models.{key}.{flat}", f"models.{key}.vae.{flat}"))
            out[key] = body
    if kinds is None:
        return out
    return _apply_kinds(out, kinds, at, done)


def _apply_kinds(models: dict[str, Any], kinds: Any, at: Callable[[str], str], done: list[Rewrite]) -> dict[str, Any]:
    """``kinds``: the models to train, built-in or defined beside it → exactly those named models."""
    where = at("models.kinds")
    if not isinstance(kinds, (list, tuple)) or not all(isinstance(k, str) for k in kinds):
        raise ConfigError(where, f"key 'models.kinds' must be a list of model names, got {kinds!r}.",
                          "list model names, e.g. [pixel, latent].")
    named = [k for k, v in models.items() if _field(k) not in _MODEL_FIELDS and (isinstance(v, Mapping) or v is None)]
    if not kinds:
        raise ConfigError(where, "'models.kinds' is empty.", f"list some of: {', '.join([*named, *BUILTIN_MODELS])}.")
    for name in kinds:
        if name not in named and name not in BUILTIN_MODELS:
            raise ConfigError(
                where, f"'models.kinds' lists '{name}', which is neither defined under 'models' nor a built-in "
                f"model ({', '.join(BUILTIN_MODELS)}).", f"define it as 'models.{name}: {{arch: pixel, ...}}' or remove it.")
    if len(set(kinds)) != len(kinds):
        raise ConfigError(where, "'models.kinds' lists a model twice.", "list each once.")
    shared = {k: v for k, v in models.items() if k not in named}
    done.append(Rewrite("models.kinds", "models: {" + ", ".join(f"{k}: {{...}}" for k in kinds) + "}"))
    return {**shared, **{name: models.get(name) or {} for name in kinds}}


def _apply_alias(data: dict[str, Any], old: str, new: str, at: Callable[[str], str], done: list[Rewrite]) -> None:
    """``old`` (section.leaf, in either spelling of ``-``/``_``) renamed to ``new`` in place."""
    (section, leaf), (_, new_leaf) = old.split("."), new.split(".")
    node = data.get(section)
    if not isinstance(node, Mapping) or not any(_field(k) == leaf for k in node):
        return
    if any(_field(k) == new_leaf for k in node):
        raise ConfigError(at(old), f"both '{old}' and '{new}' are set; '{old}' is the earlier spelling of '{new}'.",
                          f"keep only '{new}'.")
    data[section] = {(new_leaf if _field(k) == leaf else k): v for k, v in node.items()}
    done.append(Rewrite(old, new))


def is_fixed_variants(variants: Mapping[str, Any]) -> bool:
    """The earlier form: some key is one of ``LegacyVariants``' sections (besides ``enabled``),
    every key is one, and none names a method, model, per-category override or published key."""
    keys = [_field(k) for k in variants]
    if not any(k != "enabled" for k in keys) or not all(k in _LEGACY_VARIANT_FIELDS for k in keys):
        return False
    return not any(isinstance(v, Mapping) and any(str(k) in _VARIANT_KEYS for k in v) for v in variants.values())


def _upgrade_variants(variants: Mapping[str, Any], done: list[Rewrite]) -> dict[str, Any]:
    sections = {_field(k): v for k, v in variants.items()}
    out: dict[str, Any] = {}
    for name, builtin in BUILTIN_VARIANTS.items():
        section = sections.get(builtin.legacy_field)
        body: Any = {"method": builtin.method, "model": builtin.model}
        if section is None:
            pass  # the built-in's own parameters (``static-gmm``: smoothing_size 5)
        elif isinstance(section, Mapping):
            # A written section replaced the built-in's parameters: what it leaves out is the
            # method's default (``static_gmm: {t0: 100}`` has smoothing_size 11), but trend's output.
            defaults = {f.name: f.default for f in dataclasses.fields(METHOD_TABLE[builtin.method].params)}
            body.update({k: defaults[k] for k in builtin.params if k != "output"})
            body.update({k: v for k, v in section.items() if not (builtin.method == "trend" and _field(k) == "output")})
            if builtin.method == "trend":
                body["output"] = builtin.params["output"]  # one trend section served all three
        else:
            body = section  # not a mapping: the loader names the key and what it must be
        out[name] = body
    out["enabled"] = sections.get("enabled", list(BUILTIN_VARIANTS))
    done.append(Rewrite("variants.<one key per built-in variant>", "variants.NAME: {method, model, ...}"))
    return out


def upgrade(data: Mapping[str, Any], stored: bool = False,
            at: Callable[[str], str] = lambda key: "<config>") -> tuple[dict[str, Any], list[Rewrite]]:
    """``data`` (a config's top-level mapping) in the named form, and the rewrites made. A copy:
    ``data`` is left as it is. ``stored``: a config raydiff wrote earlier (renamed keys are read
    under their new names). ``at(key)`` names where a key came from, for the errors of
    ``models.kinds``, the one earlier form that can be wrong in itself."""
    out = dict(data)
    done: list[Rewrite] = []
    if stored:
        for old, new in RENAMED.items():
            (section, leaf), (_, new_leaf) = old.split("."), new.split(".")
            node = out.get(section)
            if isinstance(node, Mapping) and leaf in node and new_leaf not in node:
                out[section] = {(new_leaf if k == leaf else k): v for k, v in node.items()}
    for old, new in ALIASES.items():
        _apply_alias(out, old, new, at, done)
    if isinstance(out.get("models"), Mapping):
        out["models"] = _upgrade_models(out["models"], at, done)
    if isinstance(out.get("variants"), Mapping) and is_fixed_variants(out["variants"]):
        out["variants"] = _upgrade_variants(out["variants"], done)
    return out, done


def warn(rewrites: list[Rewrite], where: str) -> None:
    """One ``FutureWarning`` per earlier spelling read (the library never prints)."""
    for rewrite in dict.fromkeys(rewrites):
        warnings.warn(f"{where}: {rewrite.message()}", FutureWarning, stacklevel=3)
