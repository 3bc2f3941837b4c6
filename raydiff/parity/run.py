"""Run the parity checks: one reference checkout per key, every check that needs it.

``CHECKS`` maps a check's name (``raydiff parity --method NAME``) to its module (see
:mod:`raydiff.parity`). :func:`run_parity` imports each needed reference once, runs the checks
and returns the compared stages with what was compared (reference commits, stand-ins used,
the model and images).
"""

from __future__ import annotations

import contextlib
import io
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from raydiff.errors import ConfigError
from raydiff.parity import anoddpm, ddad, dynad, ran, ran_init
from raydiff.parity.compare import StageDiff, diff
from raydiff.parity.inputs import ParityInputs
from raydiff.parity.refs import Reference, load_reference

#: check name → module. Kashihara, Fučka's GMM and Kim's trend have no public code (docs/parity.md).
CHECKS: dict[str, ModuleType] = {
    "ddad-guided": ddad,
    "dynad": dynad,
    "ran-kl": ran,
    "ran-init": ran_init,
    "anoddpm": anoddpm,
}

#: The ``--reference`` keys and the public repository each names (docs/parity.md pins commits).
REPOSITORIES: dict[str, str] = {
    "ddad": "arimousa/DDAD",
    "dynad": "JustinTebbe/Dynamic-noise-AD",
    "ran": "VandyLu/anomaly_diff",
    "anoddpm": "Julian-Wyatt/AnoDDPM",
}


@dataclass
class ParityResult:
    rows: list[StageDiff]
    references: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


def parse_references(items: Sequence[str]) -> dict[str, Path]:
    """``["ddad=/x/DDAD", ...]`` → {key: path}; one clear error for a malformed or unknown item."""
    out: dict[str, Path] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not path or key not in REPOSITORIES:
            raise ConfigError(
                f"--reference {item}", "expected KEY=PATH with KEY one of " + ", ".join(REPOSITORIES) + ".",
                "e.g. --reference ddad=/path/to/DDAD (a checkout of arimousa/DDAD).",
            )
        if key in out:
            raise ConfigError(f"--reference {item}", f"{key} is given twice.", "give each reference once.")
        out[key] = Path(path)
    return out


def run_parity(
    inputs: ParityInputs, references: Mapping[str, Path], methods: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> ParityResult:
    """Run ``methods`` (default: every check whose reference is given) on ``inputs``."""
    say = progress or (lambda _m: None)
    unknown = [m for m in methods if m not in CHECKS]
    if unknown:
        raise ConfigError("--method", f"unknown checks {unknown}.", f"use some of {list(CHECKS)}.")
    chosen = list(methods) or list(CHECKS)
    result = ParityResult(rows=[], context={
        "category": inputs.category, "images": list(inputs.image_ids), "image_size": inputs.images.shape[-1],
        "features": inputs.features_tag, "torch": torch.__version__, "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "models": {role: m.meta.get("model_id", m.kind) for role, m in inputs.models.items()},
    })
    loaded: dict[tuple[str, tuple[str, ...]], Reference] = {}
    for name in chosen:
        check = CHECKS[name]
        key = check.REFERENCE
        if key not in references:
            result.skipped[name] = f"no --reference {key}=PATH given"
            continue
        cache_key = (key, tuple(check.MODULES))
        if cache_key not in loaded:
            loaded[cache_key] = load_reference(key, references[key], check.MODULES, check.ABSENT)
        ref = loaded[cache_key]
        result.references[key] = {"repository": REPOSITORIES[key], "path": str(ref.path), "commit": ref.commit,
                                  "stubbed": sorted(set(result.references.get(key, {}).get("stubbed", [])) | set(ref.stubbed))}
        say(f"[parity] {name}: against {REPOSITORIES[key]} @ {ref.commit[:12]}")
        printed = io.StringIO()  # the references print (bin edges, progress): kept out of our output
        with torch.no_grad(), contextlib.redirect_stdout(printed):
            stages = check.stages(ref, inputs)
        result.rows.extend(diff(s, inputs.labels, inputs.masks) for s in stages)
    return result
