"""Where a config's values come from: the file, ``--set KEY=VALUE``, environment variables, and
the record of which key came from where (:class:`Origins`), so that every error blames the
file, option or variable that set the value."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from raydiff.config.schema import CONFIG_DIR
from raydiff.config.yaml_dialect import AliasBudgetError, DuplicateKeyError, yaml_load
from raydiff.errors import ConfigError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def normal_key(key: str) -> str:
    """``variants.static-gaussian.t0`` and ``dataset.categories[1]`` → their field spelling."""
    return re.sub(r"\[\d+\]", "", key).replace("-", "_")


def candidates(key: str) -> list[str]:
    """``key`` and, for a named model's setting ``models.NAME.X``, the shared ``models.X`` it may
    have come from (with ``vae`` also spelled ``latent`` or written flat, the earlier forms that
    ``raydiff.config.compat`` rewrites)."""
    normal = normal_key(key)
    parts = normal.split(".")
    out = [normal]
    if len(parts) >= 3 and parts[0] == "models":
        out.append(".".join(["models", *parts[2:]]))
        if parts[2] == "vae":
            out.append(".".join(["models", parts[1], *parts[3:]]))
            out.append(".".join(["models", "latent", *parts[3:]]))
            out.append(".".join(["models", *parts[3:]]))
    return out


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
        for candidate in candidates(key):
            parts = candidate.split(".")
            for i in range(len(parts), 1 if candidate != normal_key(key) else 0, -1):
                origin = self.keys.get(".".join(parts[:i]))
                if origin is not None:
                    return origin
        return self.file

    def blame(self, *keys: str) -> str:
        """The origin of the first of ``keys`` that did not come from the file (a value set by
        ``--set`` broke a rule between two keys), else the file."""
        for key in keys:
            origin = self.at(key)
            if origin != self.file:
                return origin
        return self.file


Where = typing.Union[str, Origins]


def at(where: Where, key: str) -> str:
    return where.at(key) if isinstance(where, Origins) else where


def blame(where: Where, *keys: str) -> str:
    return where.blame(*keys) if isinstance(where, Origins) else where


def fix_in(where: str) -> str:
    """Where to correct a value: the file, or the option / variable it came from."""
    return "in the file" if where.endswith((".yaml", ".yml")) or where.startswith("<") else f"(from {where})"


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


#: Path-valued keys: ``${VAR}`` expanded; the flag says whether a relative path is taken from the
#: config file's folder (inputs) or left relative to the working directory (the output root).
_PATH_KEYS: tuple[tuple[str, bool], ...] = (
    ("dataset.root", True),
    ("features.weights", True),
    ("models.vae.vae_path", True),
    ("models.init.checkpoint", True),
    ("output.root", False),
    ("tracking.uri", False),
)


def expand_paths(data: dict[str, Any], base: Path, origins: dict[str, str], file: str) -> None:
    """Expand ``${VAR}`` and ``~`` in the path keys of named-form ``data``; a key that used a
    variable records it as its origin (its errors then name the variable, not only the file)."""
    models = data.get("models")
    named = [f"models.{k}.{section}.{leaf}" for k, v in (models.items() if isinstance(models, dict) else ())
             for section, leaf in (("vae", "vae_path"), ("init", "checkpoint"))
             if isinstance(v, dict) and isinstance(v.get(section), dict)]
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


def read_yaml(p: Path) -> dict[str, Any]:
    """The top-level mapping of a config file; every YAML problem is one ConfigError naming it."""
    where = str(p)
    if not p.is_file():
        raise ConfigError(where, "config file not found.", "check the path (e.g. configs/textures.yaml).")
    try:
        loaded = yaml_load(p.read_text())
    except DuplicateKeyError as err:
        raise ConfigError(
            where, f"key '{err.key}' appears twice in one section (lines {err.first_line} and {err.line}); "
            "YAML would silently keep the last.", "delete one of them.") from None
    except AliasBudgetError as err:
        raise ConfigError(where, f"refused: {err}.", "write the values out instead of nesting aliases.") from None
    except yaml.YAMLError as err:
        raise ConfigError(where, f"not valid YAML ({err}).".replace("\n", " "), "fix the syntax.") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(where, "the top level must be a mapping of sections.", "see configs/textures.yaml.")
    return loaded


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


def parse_overrides(items: Iterable[str], where: str = "--set") -> dict[str, Any]:
    """``["models.lr=3e-4"]`` → ``{"models.lr": 0.0003}`` (values parsed as YAML scalars/lists,
    with the config files' number rules: ``3e-4`` is a number). A key given twice is an error."""
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(where, f"'{item}' is not KEY=VALUE.", "write it like models.train_steps=200.")
        first = seen.get(normal_key(key))
        if first is not None:
            raise ConfigError(f"{where} {key}", f"'{key}' is given twice ({first} and {item}); which one is meant?",
                              f"pass {where} {key}=VALUE once.")
        seen[normal_key(key)] = item
        try:
            out[key] = yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            reason = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{where} {key}", f"'{raw}' is not a valid YAML value ({reason}).",
                              "quote it, e.g. --set 'dataset.root=\"/data/x\"'.") from None
    return out


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings → {dotted key: leaf value} (lists are leaves)."""
    if not isinstance(data, Mapping) or (prefix and not data):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


#: What ``--smoke-test`` sets (``raydiff sweep`` and ``jobs/sweep.py``): a tiny budget that checks
#: the whole set-up in a minute or two on CPU.
SMOKE_OVERRIDES: Mapping[str, Any] = {
    "models.preset": "tiny",
    "models.train_steps": 20,
    "models.checkpoint_every": 10,
    "models.batch_size": 4,
    "models.latent.vae.vae_train_steps": 10,
    "dataset.image_size": 32,
}


def flag_overrides(dataset_root: str | os.PathLike[str] | None = None,
                   output_root: str | os.PathLike[str] | None = None, categories: str | None = None,
                   seed: int | None = None, sets: Iterable[str] = (),
                   smoke_test: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """The one map from command-line flags to config keys, for ``raydiff`` and ``jobs/sweep.py``:
    (overrides, the option each came from). ``--smoke-test``'s budget comes first, ``--set``
    values next, the named flags (``--dataset-root``, ``--output``, ``--categories``, ``--seed``)
    last: a named flag wins over a ``--set`` of the same key."""
    overrides: dict[str, Any] = dict(SMOKE_OVERRIDES) if smoke_test else {}
    origins = {k: "--smoke-test" for k in overrides}
    given = parse_overrides(sets)
    overrides.update(given)
    for key in given:
        origins.pop(key, None)  # a --set value replaced the smoke budget's: it is blamed as --set KEY
    if dataset_root is not None:
        overrides["dataset.root"] = str(Path(dataset_root).expanduser().resolve())
        origins["dataset.root"] = "--dataset-root"
    if output_root is not None:
        overrides["output.root"] = str(Path(output_root).expanduser())
        origins["output.root"] = "--output"
    if categories:
        overrides["dataset.categories"] = [c.strip() for c in categories.split(",") if c.strip()]
        origins["dataset.categories"] = "--categories"
    if seed is not None:
        overrides["seed"] = seed
        origins["seed"] = "--seed"
    return overrides, origins
