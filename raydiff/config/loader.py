"""Loading a config: YAML → the frozen dataclasses of ``raydiff.config.schema``, checked.

``load_config`` reads the file (``yaml_dialect``), applies ``--set`` overrides and records where
each value came from (``sources``), rewrites earlier forms to the named one (``compat``), expands
``${VAR}`` paths, then builds and checks every section (``build``, ``sections``, the dataclasses'
``check`` methods). Errors are one :class:`ConfigError` naming the key, the file, option or
variable its value came from, and the fix. Serialisation and the stable ids are in ``identity``.

The names other modules import from here are re-exported below.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raydiff.config import compat
from raydiff.config.build import build, check, check_plain_name
from raydiff.config.compat import RENAMED
from raydiff.config.identity import (
    _dataset_identity,
    _model_identity,
    _model_settings,
    config_to_dict,
    digest,
    dump_config,
    model_id,
    run_id,
    with_content_digests,
)
from raydiff.config.schema import DEFAULT_CONFIG, TEXTURES_ENV, Config
from raydiff.config.sections import build_models, build_variants, check_groups, check_overrides
from raydiff.config.sources import (
    Origins,
    Where,
    at,
    candidates,
    expand_path,
    SMOKE_OVERRIDES,
    expand_paths,
    flag_overrides,
    flatten,
    normal_key,
    parse_overrides,
    read_yaml,
    resolve_config_path,
    set_dotted,
    substitute_env,
)
from raydiff.config.yaml_dialect import ConfigLoader, DuplicateKeyError, yaml_load

__all__ = [
    "RENAMED", "ConfigLoader", "DuplicateKeyError", "Origins", "check_overrides", "check_plain_name",
    "config_from_dict", "config_to_dict", "default_textures_root", "digest", "dump_config", "expand_path",
    "flag_overrides", "load_config", "SMOKE_OVERRIDES",
    "load_config_explained", "model_id", "parse_overrides", "resolve_config_path", "run_id", "set_dotted",
    "substitute_env", "yaml_load", "_dataset_identity", "_model_identity", "_model_settings",
]


def config_from_dict(
    data: Mapping[str, Any] | None, where: Where = "<config>", source: str | None = None, upgrade: bool = False
) -> Config:
    """Build a :class:`Config` from plain data (as parsed from YAML).

    ``where`` names the file (or an :class:`Origins`, naming each key's source) in errors.
    ``upgrade``: the data is a config raydiff stored earlier (a run folder's config.yaml, a
    model's meta.json): renamed keys (``RENAMED``) are read under their new names. Earlier forms
    of ``models`` and ``variants`` are read with a ``FutureWarning`` (``raydiff.config.compat``).
    """
    named, rewrites = compat.upgrade(data or {}, stored=upgrade, at=lambda key: at(where, key))
    compat.warn(rewrites, where.file if isinstance(where, Origins) else where)
    return _from_named(named, where, source)


def _from_named(data: Mapping[str, Any], where: Where, source: str | None) -> Config:
    data = dict(data)
    models_data, variants_data = data.pop("models", None), data.pop("variants", None)
    cfg = build(Config, data, "", where)
    check_groups(cfg.groups, cfg.dataset.categories, where)
    models = build_models(models_data, where)
    variants = build_variants(variants_data, models, cfg.groups, cfg.dataset.categories, where)
    cfg = dataclasses.replace(cfg, models=models, variants=variants, source=source)
    check(cfg, "", where)
    return with_content_digests(cfg, where)  # φ's weights and pretrained VAEs: ids hash their content


@dataclasses.dataclass(frozen=True)
class _Loaded:
    cfg: Config
    where: Origins
    from_file: set[str]


def _load(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None, upgrade: bool,
          origins: Mapping[str, str] | None, explain: bool = False) -> _Loaded:
    data: dict[str, Any] = {}
    file = "<defaults>"
    base = Path.cwd()
    resolved = None
    if path is not None:
        resolved = resolve_config_path(path)
        file = str(resolved)
        data = read_yaml(resolved)
        base = resolved.resolve().parent
    # Which keys the file itself set: only ``raydiff config`` (explain) asks.
    from_file = {normal_key(k) for k in flatten(data)} if explain and data else set()
    sources: dict[str, str] = {}
    for key, value in (overrides or {}).items():
        origin = (origins or {}).get(key, f"--set {key}")
        set_dotted(data, key, value, origin)
        sources[normal_key(key)] = origin
    if resolved is not None and resolved.resolve() == DEFAULT_CONFIG.resolve():
        _default_data_root(data, sources)
    where = Origins(file, sources)
    named, rewrites = compat.upgrade(data, stored=upgrade, at=where.at)
    compat.warn(rewrites, file)
    expand_paths(named, base, sources, file)
    source = str(resolved.expanduser().resolve()) if resolved is not None else None
    return _Loaded(_from_named(named, Origins(file, sources), source), Origins(file, sources), from_file)


def load_config_explained(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any] | None = None,
    upgrade: bool = False,
    origins: Mapping[str, str] | None = None,
) -> tuple[Config, list[dict[str, Any]]]:
    """``load_config`` plus where each value came from: a list of ``{key, value, origin}``
    with origin ``file PATH``, the override's option (``--set KEY``, ``--dataset-root``), an
    ``environment variable ...`` or ``default``. What ``raydiff config`` prints."""
    loaded = _load(path, overrides, upgrade, origins, explain=True)
    file = loaded.where.file
    rows = []
    for key, value in flatten(config_to_dict(loaded.cfg)).items():
        normal = normal_key(key)
        origin = loaded.where.at(normal)
        if origin == file:
            in_file = any(".".join(c.split(".")[:i]) in loaded.from_file
                          for c in candidates(normal) for i in range(len(c.split(".")), 0, -1))
            origin = f"file {file}" if in_file else "default"
            if not in_file and value is not None and key.endswith("sha256"):  # with_content_digests
                origin = "read from the file when loaded"
        rows.append({"key": key, "value": value, "origin": origin})
    return loaded.cfg, rows


def _default_data_root(data: dict[str, Any], sources: dict[str, str]) -> None:
    """The default config's textures live under the output root (``OUT/data/textures``), so
    ``raydiff demo --output X`` writes nothing outside X; ``$RAYDIFF_TEXTURES`` or an explicit
    ``dataset.root`` override moves them."""
    if "dataset.root" in sources or os.environ.get(TEXTURES_ENV):
        return
    out = data.get("output", {}).get("root") if isinstance(data.get("output"), dict) else None
    root = default_textures_root(substitute_env(out) if isinstance(out, str) else "raydiff-out", data.get("seed", 0))
    set_dotted(data, "dataset.root", str(root))
    sources["dataset.root"] = (f"default for {DEFAULT_CONFIG.name}: OUTPUT_ROOT/data/{root.name} "
                               f"(${TEXTURES_ENV} moves it)")


def default_textures_root(output_root: str | os.PathLike[str], seed: int | None) -> Path:
    """Where the default config's textures live unless moved: ``OUTPUT_ROOT/data/textures``
    (absolute); another seed draws other images, into their own folder (seed 0 keeps the plain name)."""
    folder = "textures" if seed in (0, None) else f"textures-seed{seed}"
    return (Path(output_root).expanduser() / "data" / folder).absolute()


def load_config(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None,
                upgrade: bool = False, origins: Mapping[str, str] | None = None) -> Config:
    """Load a YAML config; ``overrides`` maps dotted keys (``models.train_steps``) to values.

    ``dataset.root`` is resolved against the config file's folder when relative. Raises
    :class:`ConfigError` naming the key, where its value came from (the file, ``--set KEY``, an
    environment variable; ``origins`` names the option an override came from, default
    ``--set KEY``) and the fix. ``upgrade``: a config raydiff stored (a run folder's
    config.yaml), whose renamed keys are read under their new names. Builds no provenance rows
    (``load_config_explained`` does).
    """
    return _load(path, overrides, upgrade, origins).cfg
