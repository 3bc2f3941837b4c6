"""Loading a config: YAML → the frozen dataclasses of ``raydiff.config.schema``, checked.

``load_config`` rejects unknown keys, wrong types and out-of-range values with a
:class:`ConfigError` that names the key, the file and the valid choices. YAML keys may use ``-``
where the field uses ``_`` (``smoothing-size``).

Two forms of ``models`` and ``variants`` are read (``_build_models``, ``_build_variants``):

- the named form: ``models: {shared settings..., NAME: {arch, noise, variance, ...}}`` and
  ``variants: {NAME: {method, model, ...params, per_category: {CATEGORY|GROUP: {...}}}}``;
- the earlier form: ``models: {kinds: [...], shared settings}`` and one fixed key per built-in
  variant plus ``enabled``; it becomes the same named models and instances.

Two stable hashes name output folders:

- ``model_id(cfg, name, category)``: what determines one model's trained weights (dataset
  settings minus root and category list, the model's spec, seed). Checkpoints live in
  ``OUT/models/<model_id>/<dataset>/<category>/<name>/``; adding a model or a variant to a
  config leaves every other model's id alone.
- ``run_id(cfg)``: everything that determines any score (dataset, every model's spec, φ's
  settings, every variant instance, seed). Scores live in ``OUT/<run_id>/``. The category
  list, ``variants.enabled``, the output root and Ray resources are left out, so a later run
  with more categories or more of the config's variants extends the same folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from raydiff.config.schema import (
    BUILTIN_MODELS,
    BUILTIN_VARIANTS,
    CONFIG_DIR,
    DEFAULT_CONFIG,
    METHOD_TABLE,
    TEXTURES_ENV,
    Config,
    DatasetConfig,
    GMMConfig,
    KLConfig,
    LatentConfig,
    LegacyVariants,
    ModelsConfig,
    ModelSpec,
    NoDiffusionConfig,
    StaticConfig,
    TexturesConfig,
    TrendConfig,
    VariantInstance,
    VariantsConfig,
)
from raydiff.config.published import PUBLISHED_KEYS
from raydiff.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

#: YAML 1.2's float syntax: PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is a string.
_FLOAT_1_2 = re.compile(
    r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)$""",
    re.X,
)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice (``line``/``first_line`` are 1-based)."""

    def __init__(self, key: str, first_line: int, line: int) -> None:
        super().__init__(f"key '{key}' appears twice (lines {first_line} and {line})")
        self.key, self.first_line, self.line = key, first_line, line


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two fixes: ``1e-3`` is a float as a user means it (YAML 1.2),
    and a key that appears twice in one mapping is an error (PyYAML keeps the last silently).
    Merge keys (``<<: *anchor``) work as in PyYAML: a key written beside one overrides it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *anchor``: its keys may be overridden (PyYAML merges them next)
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if isinstance(key, typing.Hashable) and key in seen:
                raise DuplicateKeyError(str(key), seen[key], key_node.start_mark.line + 1)
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML as raydiff reads configs and ``--set`` values (see :class:`ConfigLoader`)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader


@dataclasses.dataclass(frozen=True)
class Origins:
    """Where each value of a config being loaded came from, for error messages and ``raydiff config``.

    ``file``: the YAML file (or "<defaults>"); ``keys``: dotted key → its origin when it did not
    come from the file (``--set models.lr``, ``--dataset-root``, an environment variable). A key
    is blamed on its own origin or on the nearest parent section's.
    """

    file: str = "<defaults>"
    keys: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def at(self, key: str) -> str:
        for candidate in _candidates(key):
            parts = candidate.split(".")
            for i in range(len(parts), 1 if candidate != _normal_key(key) else 0, -1):
                origin = self.keys.get(".".join(parts[:i]))
                if origin is not None:
                    return origin
        return self.file


def _candidates(key: str) -> list[str]:
    """``key`` and, for a named model's setting ``models.NAME.X``, the shared ``models.X`` it may
    have come from (with ``vae`` also spelled ``latent``, the earlier form)."""
    normal = _normal_key(key)
    parts = normal.split(".")
    out = [normal]
    if len(parts) >= 3 and parts[0] == "models":
        out.append(".".join(["models", *parts[2:]]))
        if parts[2] == "vae":
            out.append(".".join(["models", "latent", *parts[3:]]))
            out.append(".".join(["models", *parts[3:]]))
    return out


def _normal_key(key: str) -> str:
    """``variants.static-gaussian.t0`` and ``dataset.categories[1]`` → their field spelling."""
    return re.sub(r"\[\d+\]", "", key).replace("-", "_")


Where = typing.Union[str, Origins]


def _at(where: Where, key: str) -> str:
    return where.at(key) if isinstance(where, Origins) else where


def substitute_env(value: str, where: str | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset ``${VAR}`` without default is an error."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(
            where or f"path {value!r}",
            f"environment variable {name} (in {value!r}) is not set.",
            f"export {name}=/path/to/it, or override the key on the command line.",
        )

    return _ENV.sub(sub, value)


def expand_path(value: str, base: Path | None = None) -> Path:
    """``${VAR}`` substitution and ``~``; relative paths are taken from ``base`` when given."""
    path = Path(substitute_env(value)).expanduser()
    if not path.is_absolute() and base is not None:
        path = (base / path).resolve()
    return path


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (tuple, list):
        return "a list"
    if origin in (Mapping, dict):
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, where: Where) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the dataclass's form."""
    origin = get_origin(tp)
    at = _at(where, key)
    bad = ConfigError(at, f"key '{key}' must be {_type_name(tp)}, got {value!r}.", f"correct '{key}' {_fix_in(at)}.")
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except ConfigError as err:
                errors.append(err)
        raise bad
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                at,
                f"key '{key}' is {value!r}; valid choices: {', '.join(map(str, choices))}.",
                f"set '{key}' to one of them.",
            )
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise bad
        return _build(tp, value, key, where)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad
        (item_tp, *_rest) = get_args(tp)
        return tuple(_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise bad
        _k_tp, v_tp = get_args(tp)
        return {str(k): _convert(v, v_tp, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ConfigError(at, f"key '{key}' is {value}; it must be a finite number.", f"give '{key}' a number.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module


#: Keys that were renamed: old dotted key → new one (an old key is an error naming the new one;
#: stored run and model configs are upgraded silently, see ``config_from_dict(upgrade=True)``).
RENAMED: dict[str, str] = {"dataset.kind": "dataset.layout", "dataset.fit": "dataset.resize"}


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the old key names, renamed to the new ones (a copy)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for old, new in RENAMED.items():
        (section, leaf), (_, new_leaf) = old.split("."), new.split(".")
        node = out.get(section)
        if isinstance(node, dict) and leaf in node and new_leaf not in node:
            node[new_leaf] = node.pop(leaf)
    return out


def _fix_in(where: str) -> str:
    """Where to correct a value: the file, or the option / variable it came from."""
    return "in the file" if where.endswith((".yaml", ".yml")) or where.startswith("<") else f"(from {where})"


def _build(cls: type, data: Mapping[str, Any], prefix: str, where: Where) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        name = str(raw_key).replace("-", "_")
        key = f"{prefix}.{raw_key}" if prefix else str(raw_key)
        if key in RENAMED:
            raise ConfigError(_at(where, key), f"key '{key}' was renamed to '{RENAMED[key]}'.", f"write '{RENAMED[key]}' instead.")
        if name not in fields:
            valid = ", ".join(sorted(f.replace("_", "-") if cls is LegacyVariants else f for f in fields))
            raise ConfigError(
                _at(where, key),
                f"unknown key '{key}'.",
                f"use one of: {valid}.",
            )
        converted = _convert(value, hints[name], key, where)
        lo, hi = fields[name].metadata.get("range", (None, None))
        if isinstance(converted, (int, float)) and not isinstance(converted, bool):
            if (lo is not None and converted < lo) or (hi is not None and converted > hi):
                span = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                raise ConfigError(
                    _at(where, key), f"key '{key}' = {converted} is out of range {span}.", f"pick a value in {span}."
                )
        kwargs[name] = converted
    obj = cls(**kwargs)
    _check_consistency(obj, prefix, where)
    return obj


def _check_consistency(obj: Any, prefix: str, origins: Where) -> None:
    """Cross-field rules that a single field's type and range cannot express."""
    if isinstance(obj, Config):
        return  # checked once its models and variants are built (config_from_dict)
    if isinstance(obj, DatasetConfig):
        _check_dataset(obj, prefix, origins)
    where = _at(origins, prefix)
    if isinstance(obj, GMMConfig):
        if obj.min_components > obj.max_components:
            raise ConfigError(where, f"'{prefix}.min_components' > 'max_components'.", "swap them.")
        if obj.min_sigma > obj.max_sigma:
            raise ConfigError(where, f"'{prefix}.min_sigma' > 'max_sigma'.", "swap them.")
    if isinstance(obj, (StaticConfig, NoDiffusionConfig)) and obj.steps > obj.t0:
        raise ConfigError(
            where, f"'{prefix}.steps' = {obj.steps} exceeds t0 = {obj.t0}.", "use steps <= t0."
        )
    if isinstance(obj, TrendConfig):
        if len(obj.levels) < 3 or list(obj.levels) != sorted(set(obj.levels)):
            raise ConfigError(
                where,
                f"'{prefix}.levels' must be at least 3 strictly increasing timesteps, got {list(obj.levels)}.",
                "list levels such as [25, 50, 100, 200, 400].",
            )
    if isinstance(obj, KLConfig) and (not obj.timesteps or min(obj.timesteps) < 1):
        raise ConfigError(where, f"'{prefix}.timesteps' must be non-empty and >= 1.", "e.g. [20, 200, 400].")
    if isinstance(obj, ModelSpec) and obj.beta_start >= obj.beta_end:
        raise ConfigError(where, f"'{prefix}.beta_start' must be < '{prefix}.beta_end'.", "swap them.")


#: What a dataset or category name may look like: it names folders under the output root.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+ -]*$")


def check_plain_name(value: str, key: str, where: str) -> str:
    """``value`` if it is a plain folder name (no ``/``, ``..``, leading dot); else ConfigError."""
    if not _PLAIN_NAME.fullmatch(value) or value.strip() != value or ".." in value:
        raise ConfigError(
            where,
            f"'{key}' = {value!r} is not a plain name: dataset and category names become folder names "
            "under the output root, so they may not contain '/', '\\', '..' or start with '.'.",
            "name the category folder itself (e.g. 'bottle'), not a path; set dataset.root to the folder that holds it.",
        )
    return value


def _check_dataset(ds: DatasetConfig, prefix: str, origins: Where) -> None:
    if ds.name is not None:
        check_plain_name(ds.name, f"{prefix}.name", _at(origins, f"{prefix}.name"))
    seen: set[str] = set()
    for cat in ds.categories:
        check_plain_name(cat, f"{prefix}.categories", _at(origins, f"{prefix}.categories"))
        if cat in seen:
            raise ConfigError(
                _at(origins, f"{prefix}.categories"),
                f"'{prefix}.categories' lists '{cat}' twice (every row would be scored twice).",
                "list each category once.",
            )
        seen.add(cat)


def _check_config(cfg: Config, origins: Where) -> None:
    where = _at(origins, "output.root")
    if "://" in cfg.output.root:
        raise ConfigError(
            where,
            f"'output.root' is a URI ({cfg.output.root}); raydiff commits results with atomic renames, "
            "which object stores do not have.",
            "use a POSIX path that every node mounts at the same place (NFS, EFS, FSx for Lustre).",
        )
    if cfg.ray.device == "cuda" and cfg.ray.accelerator != "gpu":
        raise ConfigError(
            _at(origins, "ray.device"),
            "'ray.device' is cuda but 'ray.accelerator' is cpu: the workers would get no GPU from Ray.",
            "set ray.accelerator: gpu (or ray.device: auto / cpu).",
        )
    where = _at(origins, "variants.enabled")
    if not cfg.variants.enabled:
        raise ConfigError(where, "'variants.enabled' is empty: nothing would be scored.",
                          f"list some of: {', '.join(cfg.variants.instances)}.")
    for name, inst in cfg.variants.instances.items():
        spec = cfg.models.spec(inst.model)
        method = METHOD_TABLE[inst.method]
        at = _at(origins, f"variants.{name}")
        for category, params in [(None, inst.params), *inst.per_category.items()]:
            on = f" (for {category})" if category else ""
            levels = method.timesteps(params)
            if any(t >= spec.timesteps for t in levels):
                raise ConfigError(
                    at, f"variant '{name}' uses timestep {max(levels)}{on} >= the timesteps of its model "
                    f"'{inst.model}' ({spec.timesteps}).", f"keep every timestep below {spec.timesteps}.")
            if isinstance(params, KLConfig) and params.chain_steps:
                if params.chain_steps > spec.timesteps:
                    raise ConfigError(at, f"variant '{name}': chain_steps = {params.chain_steps}{on} exceeds its "
                                      f"model's {spec.timesteps} timesteps.", f"use chain_steps <= {spec.timesteps}.")
                if max(params.timesteps) >= params.chain_steps:
                    raise ConfigError(at, f"variant '{name}': timesteps {list(params.timesteps)}{on} are steps of the "
                                      f"{params.chain_steps}-step chain and must be below {params.chain_steps}.",
                                      "lower them (RAN: [5, 50, 100] on a 250-step chain).")
    # Every enabled dynamic instance shares one KNN prior per category (fit step): in each
    # category (with its overrides) their k and bins must agree.
    dynamic = [v for v in cfg.variants.enabled if cfg.variants.instance(v).method == "dynamic"]
    categories = {c for v in dynamic for c in cfg.variants.instance(v).per_category}
    for category in [None, *sorted(categories)]:
        rows = [(v, cfg.variants.params(v, category)) for v in dynamic]
        if len({(p.knn_k, p.bins) for _, p in rows}) > 1:
            names = ", ".join(f"{v} ({p.knn_k}/{p.bins})" for v, p in rows)
            on = f" for {category}" if category else ""
            raise ConfigError(_at(origins, "variants"), f"the dynamic variants {names} differ in knn_k/bins{on}; they "
                              "share one KNN prior per category.", "give every dynamic variant the same knn_k and bins.")


# --------------------------------------------------------------------------------------------
# The models and variants sections (named form, and the earlier fixed form)
# --------------------------------------------------------------------------------------------

_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}
_VAE_FIELDS = {f.name for f in dataclasses.fields(LatentConfig)} | {f.name.replace("_", "-") for f in dataclasses.fields(LatentConfig)}
_VARIANT_KEYS = ("method", "model", "per_category", "reproduces")
_LEGACY_VARIANT_FIELDS = {f.name for f in dataclasses.fields(LegacyVariants)}


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; nested mappings (augment, simplex, latent, ...) are merged."""
    out = dict(base)
    for k, v in over.items():
        key = str(k).replace("-", "_")
        old = next((ok for ok in out if str(ok).replace("-", "_") == key), None)
        if old is not None and isinstance(out[old], Mapping) and isinstance(v, Mapping):
            out[old] = _merge(out[old], v)
        else:
            if old is not None:
                del out[old]
            out[k] = v
    return out


def _mapping(value: Any, key: str, where: Where) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        at = _at(where, key)
        raise ConfigError(at, f"key '{key}' must be a mapping, got {value!r}.", f"correct '{key}' {_fix_in(at)}.")
    return value


def _build_models(data: Any, where: Where) -> ModelsConfig:
    """``models:``: shared settings (ModelSpec keys), named models (``NAME: {...}``) and ``kinds``:
    in the earlier form the built-in models to train; beside named models, the ones to keep."""
    data = _mapping(data, "models", where)
    shared: dict[str, Any] = {}
    named: dict[str, Mapping[str, Any]] = {}
    kinds = None
    for raw_key, value in data.items():
        key = str(raw_key)
        if key == "kinds":
            kinds = _convert(value, tuple[str, ...], "models.kinds", where)
        elif key == "latent" and isinstance(value, Mapping) and value and set(map(str, value)) <= _VAE_FIELDS:
            shared["vae"] = _merge(shared.get("vae", {}), value)  # the earlier spelling of the VAE settings
        elif key.replace("-", "_") in _MODEL_FIELDS:
            shared[key] = value
        elif key in _VAE_FIELDS:
            shared["vae"] = _merge(shared.get("vae", {}), {key: value})  # a VAE setting written flat
        elif isinstance(value, Mapping) or value is None:
            check_plain_name(key, "models", _at(where, f"models.{key}"))
            body = dict(_mapping(value, f"models.{key}", where))
            if isinstance(body.get("latent"), Mapping) and "vae" not in body:
                body["vae"] = body.pop("latent")
            for flat in [k for k in body if str(k) in _VAE_FIELDS]:  # VAE settings written flat
                body["vae"] = _merge(body.get("vae") or {}, {flat: body.pop(flat)})
            named[key] = body
        else:
            raise ConfigError(
                _at(where, f"models.{key}"), f"unknown key 'models.{key}'.",
                f"use a model setting ({', '.join(sorted(_MODEL_FIELDS))}) or define a model "
                f"'{key}: {{arch: pixel, ...}}'.")
    _build(ModelSpec, shared, "models", where)  # errors in the shared settings name models.KEY
    if kinds is not None:
        if not kinds:
            raise ConfigError(_at(where, "models.kinds"), "'models.kinds' is empty.",
                              f"list some of: {', '.join([*named, *BUILTIN_MODELS])}.")
        for name in kinds:
            if name not in named and name not in BUILTIN_MODELS:
                raise ConfigError(
                    _at(where, "models.kinds"), f"'models.kinds' lists '{name}', which is neither defined under "
                    f"'models' nor a built-in model ({', '.join(BUILTIN_MODELS)}).",
                    f"define it as 'models.{name}: {{arch: pixel, ...}}' or remove it.")
        if len(set(kinds)) != len(kinds):
            raise ConfigError(_at(where, "models.kinds"), "'models.kinds' lists a model twice.", "list each once.")
        # With named models, ``kinds`` selects among them (``--set models.kinds=[pixel]``).
        names = list(kinds)
    else:
        names = list(named) or list(BUILTIN_MODELS)
    specs = {}
    for name in names:
        merged = _merge(_merge(shared, BUILTIN_MODELS.get(name, {})), named.get(name, {}))
        specs[name] = _build(ModelSpec, merged, f"models.{name}", where)
    return ModelsConfig(specs=specs)


def _is_legacy_variants(data: Mapping[str, Any]) -> bool:
    """The earlier form: every key is one of ``LegacyVariants``' fields, none names a method."""
    for key, value in data.items():
        if str(key).replace("-", "_") not in _LEGACY_VARIANT_FIELDS:
            return False
        if isinstance(value, Mapping) and any(str(k) in _VARIANT_KEYS for k in value):
            return False
    return True


def _legacy_variants(data: Mapping[str, Any], models: ModelsConfig, where: Where) -> VariantsConfig:
    lv = _build(LegacyVariants, data, "variants", where)
    instances = {}
    for name, b in BUILTIN_VARIANTS.items():
        params = getattr(lv, b.legacy_field)
        if b.method == "trend":
            params = dataclasses.replace(params, output=b.params["output"])
        instances[name] = VariantInstance(b.method, b.model, params)
    for name in lv.enabled:
        if name not in instances:
            raise ConfigError(_at(where, "variants.enabled"), f"'variants.enabled' lists unknown variant '{name}'.",
                              f"use some of: {', '.join(instances)}.")
    missing = sorted({instances[v].model for v in lv.enabled} - set(models.names))
    if missing:
        needing = [v for v in lv.enabled if instances[v].model in missing]
        raise ConfigError(
            _at(where, "variants.enabled"),
            f"variants {', '.join(needing)} need model(s) {', '.join(missing)}, which 'models' does not define.",
            f"add {', '.join(missing)} to 'models.kinds' or remove those variants from 'variants.enabled'.",
        )
    # Models no enabled variant needs are not trained (Config.models_needed); variants whose
    # model the config does not define cannot be enabled (checked above), so drop them.
    instances = {n: i for n, i in instances.items() if i.model in models.names}
    return VariantsConfig(instances=instances, enabled=tuple(lv.enabled))


def _resolve_overrides(
    name: str, cls: type, params_data: Mapping[str, Any], overrides: Mapping[str, Any],
    groups: Mapping[str, tuple[str, ...]], categories: tuple[str, ...], where: Where,
) -> dict[str, Any]:
    """``per_category`` of instance ``name`` → {category: params}: a group's entry applies to each
    of its categories, a category's own entry on top of it; two groups that give one category
    different values for one key are an error."""
    prefix = f"variants.{name}.per_category"
    from_groups: dict[str, dict[str, Any]] = {}
    setter: dict[tuple[str, str], str] = {}
    own: dict[str, Mapping[str, Any]] = {}
    known = set(categories) | {c for members in groups.values() for c in members}
    for raw_key, over in overrides.items():
        key = str(raw_key)
        over = _mapping(over, f"{prefix}.{key}", where)
        _build(cls, _merge(params_data, over), f"{prefix}.{key}", where)  # names a bad key under its path
        if key in groups:
            for cat in groups[key]:
                for k, v in over.items():
                    k = str(k).replace("-", "_")
                    first = setter.get((cat, k))
                    if first is not None and from_groups[cat][k] != v:
                        raise ConfigError(
                            _at(where, prefix), f"groups '{first}' and '{key}' both contain '{cat}' and give "
                            f"'{k}' different values ({from_groups[cat][k]!r}, {v!r}).",
                            f"set it for '{cat}' itself under {prefix}, or take '{cat}' out of one group.")
                    from_groups.setdefault(cat, {})[k] = v
                    setter[(cat, k)] = key
        else:
            check_plain_name(key, prefix, _at(where, f"{prefix}.{key}"))
            if categories and key not in known:
                raise ConfigError(
                    _at(where, f"{prefix}.{key}"), f"'{prefix}.{key}': '{key}' is neither one of dataset.categories "
                    f"({', '.join(categories)}) nor a group ({', '.join(groups) or 'none defined'}).",
                    "fix the name, add it to dataset.categories, or define the group under 'groups'.")
            own[key] = over
    out = {}
    for cat in [*from_groups, *[c for c in own if c not in from_groups]]:
        merged = _merge(_merge(params_data, from_groups.get(cat, {})), own.get(cat, {}))
        out[cat] = _build(cls, merged, f"{prefix}.{cat}", where)
    return out


def _build_variants(
    data: Any, models: ModelsConfig, groups: Mapping[str, tuple[str, ...]], categories: tuple[str, ...],
    where: Where,
) -> VariantsConfig:
    """``variants:``: named instances ``NAME: {method, model, ...params, per_category}`` and an
    optional ``enabled`` list; or the earlier form (``LegacyVariants``)."""
    data = dict(_mapping(data, "variants", where))
    if _is_legacy_variants(data):
        return _legacy_variants(data, models, where)
    enabled = data.pop("enabled", None)
    chosen_names = None if enabled is None else set(_convert(enabled, tuple[str, ...], "variants.enabled", where))
    instances: dict[str, VariantInstance] = {}
    for raw_name, body in data.items():
        name = str(raw_name)
        key = f"variants.{name}"
        at = _at(where, key)
        check_plain_name(name, "variants", at)
        body = dict(_mapping(body, key, where))
        builtin = BUILTIN_VARIANTS.get(name)
        method = body.pop("method", builtin.method if builtin else None)
        if method not in METHOD_TABLE:
            if method is None:
                import difflib

                close = difflib.get_close_matches(name, list(BUILTIN_VARIANTS), n=1)
                hint = f"did you mean the built-in variant '{close[0]}'? " if close else ""
                raise ConfigError(
                    at, f"variant '{name}' names no method and is not a built-in variant "
                    f"({', '.join(BUILTIN_VARIANTS)}).",
                    f"{hint}Else set '{key}.method' to one of: {', '.join(METHOD_TABLE)}.")
            raise ConfigError(at, f"variant '{name}' has method {method!r}; valid methods: {', '.join(METHOD_TABLE)}.",
                              f"set '{key}.method' to one of them.")
        model = body.pop("model", builtin.model if builtin else None)
        if model is not None and model not in models.names and chosen_names is not None and name not in chosen_names:
            continue  # not enabled, and its model was left out (``models.kinds``): nothing to check
        if model not in models.names:
            what = f"scores with model {model!r}, which 'models' does not define" if model else "names no model"
            raise ConfigError(at, f"variant '{name}' {what}; this config's models: {', '.join(models.names)}.",
                              f"set '{key}.model' to one of them (or define the model under 'models').")
        spec = METHOD_TABLE[method]
        arch = models.spec(model).arch
        if arch not in spec.archs:
            raise ConfigError(at, f"variant '{name}': method {method} scores {'/'.join(spec.archs)} models, but "
                              f"'{model}' is a {arch} model.", f"give '{key}.model' a {spec.archs[0]} model.")
        reproduces = body.pop("reproduces", None)
        if reproduces is not None and reproduces not in PUBLISHED_KEYS:
            raise ConfigError(at, f"'{key}.reproduces' is {reproduces!r}, not a published setting.",
                              f"use one of: {', '.join(PUBLISHED_KEYS)} (raydiff.config.published), or remove it.")
        per_category = _mapping(body.pop("per_category", None), f"{key}.per_category", where)
        params_data = _merge(builtin.params if builtin and builtin.method == method else {}, body)
        params = _build(spec.params, params_data, key, where)
        resolved = _resolve_overrides(name, spec.params, params_data, per_category, groups, categories, where)
        instances[name] = VariantInstance(method, model, params, resolved, reproduces)
    if not instances:
        raise ConfigError(_at(where, "variants"), "'variants' defines no variant: nothing would be scored.",
                          "define one, e.g. 'static: {method: static, model: pixel}'.")
    if enabled is None:
        chosen = tuple(instances)
    else:
        chosen = _convert(enabled, tuple[str, ...], "variants.enabled", where)
        unknown = [v for v in chosen if v not in instances]
        if unknown:
            raise ConfigError(_at(where, "variants.enabled"), f"'variants.enabled' lists {', '.join(unknown)}, which "
                              "'variants' does not define.", f"use some of: {', '.join(instances)}.")
    return VariantsConfig(instances=instances, enabled=chosen)


def _check_groups(groups: Mapping[str, tuple[str, ...]], categories: tuple[str, ...], where: Where) -> None:
    for name, members in groups.items():
        check_plain_name(name, "groups", _at(where, f"groups.{name}"))
        if name in categories:
            raise ConfigError(_at(where, f"groups.{name}"), f"'{name}' is both a group and a category.",
                              "rename the group.")
        for cat in members:
            check_plain_name(cat, f"groups.{name}", _at(where, f"groups.{name}"))


def set_dotted(data: dict[str, Any], dotted: str, value: Any, where: str = "--set") -> None:
    """Set ``a.b.c = value`` in a nested dict (CLI overrides of config keys)."""
    parts = dotted.split(".")
    if not all(p.strip() for p in parts):
        raise ConfigError(where, f"'{dotted}' is not a dotted key.", "write it like models.train_steps.")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            section = ".".join(parts[: i + 1])
            raise ConfigError(where, f"'{dotted}': '{section}' is a value, not a section.", "check the key.")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(items: typing.Iterable[str], where: str = "--set") -> dict[str, Any]:
    """``["models.lr=3e-4"]`` → ``{"models.lr": 0.0003}`` (values parsed as YAML scalars/lists,
    with the config files' float rule: ``3e-4`` is a number)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(where, f"'{item}' is not KEY=VALUE.", "write it like models.train_steps=200.")
        try:
            out[key.strip()] = yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            reason = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{where} {key.strip()}", f"'{raw}' is not a valid YAML value ({reason}).",
                              "quote it, e.g. --set 'dataset.root=\"/data/x\"'.") from None
    return out


def config_from_dict(
    data: Mapping[str, Any] | None, where: Where = "<config>", source: str | None = None, upgrade: bool = False
) -> Config:
    """Build a :class:`Config` from plain data (as parsed from YAML).

    ``where`` names the file (or an :class:`Origins`, naming each key's source) in errors.
    ``upgrade``: the data is a config raydiff stored earlier (a run folder's config.yaml, a
    model's meta.json): renamed keys (``RENAMED``) are read under their new names.
    """
    data = _upgrade(dict(data or {})) if upgrade else dict(data or {})
    models_data, variants_data = data.pop("models", None), data.pop("variants", None)
    cfg = _build(Config, data, "", where)
    _check_groups(cfg.groups, cfg.dataset.categories, where)
    models = _build_models(models_data, where)
    variants = _build_variants(variants_data, models, cfg.groups, cfg.dataset.categories, where)
    cfg = dataclasses.replace(cfg, models=models, variants=variants, source=source)
    _check_config(cfg, where)
    return cfg


#: Path-valued keys: ``${VAR}`` expanded; the flag says whether a relative path is taken from the
#: config file's folder (inputs) or left relative to the working directory (the output root).
_PATH_KEYS: tuple[tuple[str, bool], ...] = (
    ("dataset.root", True),
    ("features.resnet34_weights", True),
    ("models.latent.vae_path", True),
    ("models.vae.vae_path", True),
    ("output.root", False),
)


def _expand_paths(data: dict[str, Any], base: Path, origins: dict[str, str], file: str) -> None:
    """Expand ``${VAR}`` and ``~`` in the path keys; a key that used a variable records it as
    its origin (its errors then name the variable, not only the file)."""
    models = data.get("models")
    named = [f"models.{k}.{sub}.vae_path" for k, v in (models.items() if isinstance(models, dict) else ())
             for sub in ("vae", "latent") if isinstance(v, dict) and isinstance(v.get(sub), dict)]
    for dotted, from_config in (*_PATH_KEYS, *((k, True) for k in named)):
        *parents, leaf = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(leaf), str):
            continue
        raw = node[leaf]
        came_from = origins.get(dotted, f"{dotted} in {file}")
        text = substitute_env(raw, came_from)
        names = [m.group(1) for m in _ENV.finditer(raw) if m.group(1) in os.environ]
        if names:
            values = ", ".join(f"{n}={os.environ[n]!r}" for n in names)
            origins[dotted] = f"environment variable {values} ({came_from})"
        if not text.strip():
            node[leaf] = None  # "${OPTIONAL:-}" left empty: the optional path is not configured
            continue
        if "://" in text:  # a URI: left as written (Path would fold "//"); the checks name it
            node[leaf] = text
            continue
        node[leaf] = str(expand_path(text, base if from_config else None))


def resolve_config_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if it exists; else a shipped config named like it (``configs/mvtec.yaml`` or
    ``mvtec.yaml`` from any folder, or after a non-editable install); else ConfigError listing them."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    shipped = sorted(c.name for c in CONFIG_DIR.glob("*.yaml"))
    parts = p.parts
    if not p.is_absolute() and (len(parts) == 1 or (len(parts) == 2 and parts[0] == "configs")) and p.name in shipped:
        return CONFIG_DIR / p.name
    raise ConfigError(str(p), "config file not found.",
                      f"check the path; the shipped configs ({CONFIG_DIR}) are: {', '.join(shipped) or 'none'}.")


def _read_yaml(p: Path) -> dict[str, Any]:
    where = str(p)
    if not p.is_file():
        raise ConfigError(where, "config file not found.", "check the path (e.g. configs/textures.yaml).")
    try:
        loaded = yaml_load(p.read_text())
    except DuplicateKeyError as err:
        raise ConfigError(
            where, f"key '{err.key}' appears twice in one section (lines {err.first_line} and {err.line}); "
            "YAML would silently keep the last.", "delete one of them.") from None
    except yaml.YAMLError as err:
        raise ConfigError(where, f"not valid YAML ({err}).".replace("\n", " "), "fix the syntax.") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(where, "the top level must be a mapping of sections.", "see configs/textures.yaml.")
    return loaded


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings → {dotted key: leaf value} (lists are leaves)."""
    if not isinstance(data, Mapping) or (prefix and not data):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def load_config_explained(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any] | None = None,
    upgrade: bool = False,
    origins: Mapping[str, str] | None = None,
) -> tuple[Config, list[dict[str, Any]]]:
    """``load_config`` plus where each value came from: a list of ``{key, value, origin}``
    with origin ``file PATH``, the override's option (``--set KEY``, ``--dataset-root``), an
    ``environment variable ...`` or ``default``. What ``raydiff config`` prints."""
    data: dict[str, Any] = {}
    file = "<defaults>"
    base = Path.cwd()
    if path is not None:
        p = resolve_config_path(path)
        path, file = p, str(p)
        data = _read_yaml(p)
        base = p.resolve().parent
    from_file = {_normal_key(k) for k in _flatten(data)} if data else set()
    sources: dict[str, str] = {}
    for key, value in (overrides or {}).items():
        origin = (origins or {}).get(key, f"--set {key}")
        set_dotted(data, key, value, origin)
        sources[_normal_key(key)] = origin
    if path is not None and Path(path).resolve() == DEFAULT_CONFIG.resolve():
        _default_data_root(data, sources)
    _expand_paths(data, base, sources, file)
    where = Origins(file, sources)
    cfg = config_from_dict(data, where=where, source=str(Path(path).expanduser().resolve()) if path else None,
                           upgrade=upgrade)
    rows = []
    for key, value in _flatten(config_to_dict(cfg)).items():
        normal = _normal_key(key)
        origin = where.at(normal)
        if origin == file:
            in_file = any(".".join(c.split(".")[:i]) in from_file
                          for c in _candidates(normal) for i in range(len(c.split(".")), 1, -1))
            origin = f"file {file}" if in_file else "default"
        rows.append({"key": key, "value": value, "origin": origin})
    return cfg, rows


def _default_data_root(data: dict[str, Any], sources: dict[str, str]) -> None:
    """The default config's textures live under the output root (``OUT/data/textures``), so
    ``raydiff demo --output X`` writes nothing outside X; ``$RAYDIFF_TEXTURES`` or an explicit
    ``dataset.root`` override moves them."""
    if "dataset.root" in sources or os.environ.get(TEXTURES_ENV):
        return
    out = data.get("output", {}).get("root") if isinstance(data.get("output"), dict) else None
    out_root = Path(substitute_env(out) if isinstance(out, str) else "raydiff-out").expanduser()
    # Another seed draws other images: they get their own folder (seed 0 keeps the plain name).
    seed = data.get("seed", 0)
    folder = "textures" if seed in (0, None) else f"textures-seed{seed}"
    set_dotted(data, "dataset.root", str((out_root / "data" / folder).absolute()))
    sources["dataset.root"] = (f"default for {DEFAULT_CONFIG.name}: OUTPUT_ROOT/data/{folder} "
                               f"(${TEXTURES_ENV} moves it)")


def load_config(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None,
                upgrade: bool = False, origins: Mapping[str, str] | None = None) -> Config:
    """Load a YAML config; ``overrides`` maps dotted keys (``models.train_steps``) to values.

    ``dataset.root`` is resolved against the config file's folder when relative. Raises
    :class:`ConfigError` naming the key, where its value came from (the file, ``--set KEY``, an
    environment variable; ``origins`` names the option an override came from, default
    ``--set KEY``) and the fix. ``upgrade``: a config raydiff stored (a run folder's
    config.yaml), whose renamed keys are read under their new names.
    """
    return load_config_explained(path, overrides, upgrade, origins)[0]


# --------------------------------------------------------------------------------------------
# Serialisation and stable ids
# --------------------------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain data (lists, dicts, scalars) with YAML key spelling; round-trips through load.

    Models are written as named models with every setting; variants as named instances with
    their method, model and every parameter, per-category overrides as the keys that differ."""

    def conv(obj: Any) -> Any:
        if isinstance(obj, ModelsConfig):
            return {name: conv(spec) for name, spec in obj.specs.items()}
        if isinstance(obj, VariantsConfig):
            out: dict[str, Any] = {"enabled": list(obj.enabled)}
            for name, inst in obj.instances.items():
                params = conv(inst.params)
                body = {"method": inst.method, "model": inst.model, **params}
                if inst.reproduces is not None:
                    body["reproduces"] = inst.reproduces
                if inst.per_category:
                    body["per_category"] = {
                        cat: {k: v for k, v in conv(p).items() if v != params[k]} for cat, p in inst.per_category.items()}
                out[name] = body
            return out
        if dataclasses.is_dataclass(obj):
            return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("internal")}
        if isinstance(obj, Mapping):
            return {k: conv(v) for k, v in obj.items()}
        if isinstance(obj, (tuple, list)):
            return [conv(v) for v in obj]
        return obj

    return conv(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def _digest(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _dataset_identity(cfg: Config) -> dict[str, Any]:
    # The root is left out: a job submitted with --working-dir unpacks to a new path each time,
    # and the same data under another path must not retrain everything. Renamed keys are hashed
    # under their old names, so models and run folders of earlier versions keep their ids.
    ds = config_to_dict(cfg.dataset)
    ds.pop("categories")
    ds.pop("root")
    for old, new in RENAMED.items():
        if old.startswith("dataset.") and new.split(".")[1] in ds:
            ds[old.split(".")[1]] = ds.pop(new.split(".")[1])
    # The demo's generated images depend on the generator's settings: they are part of the data
    # (hashed only when set, so configs without them keep their ids; a setting added later is
    # hashed only when it is not its default, so configs that set the others keep theirs).
    if cfg.textures != TexturesConfig():
        tex, default = config_to_dict(cfg.textures), config_to_dict(TexturesConfig())
        ds["textures"] = {k: v for k, v in tex.items() if k not in TEXTURES_ADDED or v != default[k]}
    return ds


#: ``textures:`` settings added after the section was first hashed into ids.
TEXTURES_ADDED = ("defect_scale", "patch_tone_sd")


def _model_settings(spec: ModelSpec) -> dict[str, Any]:
    """A model's spec without the settings its architecture, noise and variance never read (the
    VAE of a pixel model, the simplex settings of a Gaussian one, ...) or that change no weight
    (``checkpoint_every``)."""
    d = config_to_dict(spec)
    d.pop("checkpoint_every")
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
    augmentation left out."""
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
    return _digest({"dataset": _dataset_identity(cfg), "model": _model_identity(cfg, name, category),
                    "seed": cfg.seed})


def _unhashed_defaults(params: Any) -> list[str]:
    """Fields of a params dataclass declared ``metadata={"id": "unless-default"}`` that hold their
    default: left out of the run id, so configs written before the field existed keep their ids."""
    out = []
    for f in dataclasses.fields(params):
        if f.metadata.get("id") == "unless-default" and getattr(params, f.name) == f.default:
            out.append(f.name)
    return out


def run_id(cfg: Config) -> str:
    """Stable id of what determines every score (see the module docstring): the dataset
    settings, every model's spec, φ's settings, every variant instance the config defines
    (enabled or not: ``variants.enabled`` selects within a run folder) and the seed."""
    variants = config_to_dict(cfg.variants)
    variants.pop("enabled")
    for name, inst in cfg.variants.instances.items():
        for key in _unhashed_defaults(inst.params):
            variants[name].pop(key, None)
    models = {name: _model_settings(spec) for name, spec in cfg.models.specs.items()}
    return _digest({"dataset": _dataset_identity(cfg), "models": models, "features": config_to_dict(cfg.features),
                    "variants": variants, "seed": cfg.seed})
