"""Importing an author's reference code from a checkout the user names, without vendoring it.

The reference repositories are research scripts: flat folders of modules that import each
other by bare name (``from unet import *``), and import at module level packages the compared
functions never call (torchvision's datasets, omegaconf, cv2, timm, the authors' plotting code).
:func:`load_reference` imports the modules a parity check needs from ``path`` with:

- the process environment restored after importing (DDAD's ``reconstruction.py`` sets
  ``CUDA_VISIBLE_DEVICES`` when imported);
- ``path`` first on ``sys.path`` while importing, then removed, and every module imported from
  the checkout taken out of ``sys.modules`` again: DDAD and DynAD both have a ``unet`` and a
  ``utilities`` module, and neither may shadow the other (or anything of raydiff's);
- a stand-in for each third-party package that is NOT installed and is not on the compared path
  (``absent``): an empty module whose attributes are placeholders that raise, naming the
  package, if the compared code ever calls them. A package that IS installed is always the
  real one.
- ``torchvision.transforms`` (when torchvision is missing; it has no CPU wheel on every
  platform): ``Compose``, ``Lambda`` and ``Normalize``, the three the references use to
  prepare φ's input. ``Normalize`` is (x - mean) / std per channel, as torchvision's.

Nothing is downloaded, copied or written into the checkout.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raydiff.errors import ConfigError


class _Unavailable:
    """A placeholder for an attribute of a package that is not installed."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"the reference code called {self._name}, which the parity harness does not provide "
            f"(the package is not installed); install it, or report the check that reached it."
        )

    def __getattr__(self, item: str) -> _Unavailable:
        return _Unavailable(f"{self._name}.{item}")

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (object,)  # `class X(nn_stub.Module)` at module level still defines X


class _StubModule(types.ModuleType):
    """An absent package: any attribute is an :class:`_Unavailable`; ``from m import *`` imports nothing."""

    __all__: list[str] = []

    def __getattr__(self, item: str) -> Any:
        if item.startswith("__") and item.endswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self.__name__}.{item}")


class _Compose:
    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x


class _Lambda:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, x: Any) -> Any:
        return self.fn(x)


class _Normalize:
    """torchvision.transforms.Normalize: (x - mean) / std per channel of (..., C, H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std


def _transforms_module() -> types.ModuleType:
    mod = _StubModule("torchvision.transforms")
    mod.Compose, mod.Lambda, mod.Normalize = _Compose, _Lambda, _Normalize  # type: ignore[attr-defined]
    mod.transforms = mod  # type: ignore[attr-defined]  # `from torchvision.transforms import transforms`
    return mod


def _installed(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves stand-ins for the absent top-level packages ``roots`` and all their submodules."""

    def __init__(self, roots: set[str]) -> None:
        self.roots = roots

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.roots or fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if spec.name in ("torchvision.transforms", "torchvision.transforms.transforms"):
            mod = _transforms_module()
        else:
            mod = _StubModule(spec.name)
        mod.__path__ = []  # type: ignore[attr-defined]
        return mod

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def _in_checkout(root: Path, dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (root / rel.with_suffix(".py")).is_file() or (root / rel / "__init__.py").is_file()


@dataclass
class Reference:
    """The imported modules of one reference checkout: ``ref.module("reconstruction")``."""

    name: str
    path: Path
    commit: str
    modules: dict[str, types.ModuleType]
    #: Third-party packages replaced by stand-ins (absent here, off the compared path).
    stubbed: list[str]

    def module(self, name: str) -> types.ModuleType:
        return self.modules[name]


def checkout_commit(path: Path) -> str:
    """The commit of the git checkout whose top folder is ``path`` (``+modified`` when tracked
    files differ from it), or ``unknown`` when ``path`` is not the top of a checkout."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != path.resolve():
        return "unknown"
    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("+modified" if git("status", "--porcelain", "--untracked-files=no") else "")


@contextmanager
def _isolated_imports(path: Path, absent: set[str]) -> Iterator[None]:
    before = set(sys.modules)
    environ = dict(os.environ)  # DDAD's reconstruction.py sets CUDA_VISIBLE_DEVICES on import
    finder = _StubFinder(absent)
    sys.meta_path.insert(0, finder)
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))
        sys.meta_path.remove(finder)
        os.environ.clear()
        os.environ.update(environ)
        for name in set(sys.modules) - before:
            mod = sys.modules[name]
            origin = getattr(mod, "__file__", None) or ""
            if isinstance(mod, _StubModule) or origin.startswith(str(path)):
                del sys.modules[name]


def load_reference(name: str, path: str | Path, modules: Sequence[str], absent: Sequence[str] = ()) -> Reference:
    """Import ``modules`` (dotted names relative to ``path``) from the checkout at ``path``.

    ``absent``: third-party top-level packages to replace with stand-ins when they are not
    installed (see the module docstring). Raises :class:`~raydiff.errors.ConfigError` naming the
    folder and the missing file, or the module whose import failed and why.
    """
    root = Path(path).expanduser().resolve()
    fix = f"pass --reference {name}=/path/to/a/checkout of the reference repository (see docs/parity.md)"
    if not root.is_dir():
        raise ConfigError(f"--reference {name}", f"{root} is not a folder.", fix)
    for mod in modules:
        rel = Path(*mod.split("."))
        if not (root / rel.with_suffix(".py")).is_file() and not (root / rel / "__init__.py").is_file():
            raise ConfigError(f"--reference {name}", f"{root} has no {rel.with_suffix('.py')}: not a checkout of it?", fix)
    # A dotted name (a module of the checkout's own package that is absent from it, e.g.
    # anomaly_diff's guided_diffusion.initializer) is stubbed unless the checkout has that file.
    stubbed = sorted(p for p in set(absent) if ("." in p and not _in_checkout(root, p)) or ("." not in p and not _installed(p)))
    loaded: dict[str, types.ModuleType] = {}
    with _isolated_imports(root, set(stubbed)):
        for mod in modules:
            try:
                loaded[mod] = importlib.import_module(mod)
            except Exception as exc:  # the reference's own import-time failure, named
                raise ConfigError(
                    f"--reference {name}", f"importing {mod} from {root} failed: {type(exc).__name__}: {exc}",
                    "install the package it names, or check that the checkout is the commit docs/parity.md pins.",
                ) from exc
    return Reference(name=name, path=root, commit=checkout_commit(root), modules=loaded, stubbed=stubbed)


# --------------------------------------------------------------------------------------------
# Feeding a reference raydiff's noise
# --------------------------------------------------------------------------------------------


class NoiseFeed:
    """Noise for a reference's draws (``torch.randn_like``'s signature): ``draws`` in order, each
    checked against the shape the reference asks for. With ``then_zeros`` every further draw is
    zeros (DDAD's η = 0 terms); otherwise a further draw is an error, and :meth:`check_all_taken`
    fails a check whose reference drew fewer than it was fed, so an adapter that no longer matches
    its reference says so instead of comparing other noise. ``dtype``: of what is handed out
    (default: that of the tensor the reference passes)."""

    def __init__(self, draws: Sequence[torch.Tensor], then_zeros: bool = False, dtype: torch.dtype | None = None) -> None:
        self.draws, self.then_zeros, self.dtype = list(draws), then_zeros, dtype
        self.used = 0

    def __call__(self, like: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        dtype = self.dtype or like.dtype
        if self.used >= len(self.draws):
            if self.then_zeros:
                return torch.zeros_like(like, dtype=dtype)
            raise RuntimeError(f"the reference drew noise more than the {len(self.draws)} times this check feeds "
                               "(its code changed? update the check)")
        z = self.draws[self.used]
        self.used += 1
        if tuple(z.shape) != tuple(like.shape):
            raise RuntimeError(f"the reference drew noise of shape {tuple(like.shape)}; the check fed {tuple(z.shape)}")
        return z.to(device=like.device, dtype=dtype).clone()

    def check_all_taken(self) -> None:
        if self.used != len(self.draws):
            raise RuntimeError(f"the reference drew noise {self.used} times; this check fed {len(self.draws)} draws "
                               "(its code changed? update the check)")


@contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name = value`` for the ``with`` block (a module's function, ``torch.randn_like``),
    restored afterwards, or removed again when ``owner`` had no such attribute."""
    missing = object()
    before = vars(owner).get(name, missing)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if before is missing:
            delattr(owner, name)
        else:
            setattr(owner, name, before)
