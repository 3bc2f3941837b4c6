"""Packaging and deployment: cluster.yaml syncs only the code and pins the client's versions;
the package ships py.typed and its LICENSE; the declared lower bounds are the ones the code needs."""

from __future__ import annotations

import fnmatch
import importlib.metadata as md
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster.yaml"
PINS = REPO / "requirements-cluster.txt"


def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def pins() -> list[Requirement]:
    lines = [line.strip() for line in PINS.read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_rsync_leaves_out_the_venv_outputs_and_caches() -> None:
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    cfg = cluster()
    assert ".gitignore" in cfg["rsync_filter"]
    # The arguments Ray's launcher gives rsync for file_mounts (its own function).
    args = SSHCommandRunner._create_rsync_filter_args(None, {k: cfg.get(k) for k in ("rsync_exclude", "rsync_filter")})
    excludes = [args[i + 1] for i, a in enumerate(args) if a == "--exclude"]
    assert "--filter" in args and "dir-merge,- .gitignore" in args
    # rsync's exclude patterns ending in "/" match directories of that name at any depth.
    for folder in (".venv", "raydiff-out", "__pycache__", ".pytest_cache", "raydiff.egg-info"):
        assert any(p.endswith("/") and fnmatch.fnmatch(folder, p.rstrip("/")) for p in excludes), folder
    for kept in ("raydiff", "configs", "jobs", "tests"):
        assert not any(fnmatch.fnmatch(kept, p.rstrip("/")) for p in excludes), kept


def test_nodes_install_the_clients_exact_versions() -> None:
    requirements = pins()
    names = {r.name for r in requirements}
    assert {"ray", "torch", "diffusers"} <= names
    for req in requirements:
        (spec,) = req.specifier
        assert spec.operator == "==", f"{req}: pin the exact version"
        installed = md.version(req.name)
        # torch's local label (+cpu here, +cu128 on the nodes) is not part of the pin.
        assert spec.version == installed.split("+")[0], f"{req.name}: cluster pins {spec.version}, the client runs {installed}"
    setup = cluster()["setup_commands"]
    assert any("-r requirements-cluster.txt" in c for c in setup)
    # No other install of a pinned package with a looser requirement.
    for command in setup:
        if "-r requirements-cluster.txt" in command or "install -e ." in command:
            continue
        for name in names:
            assert not re.search(rf"install\b.*[\s\"']{re.escape(name)}[\s\"'<>=]", command + " "), (name, command)


def test_pins_satisfy_the_declared_dependencies() -> None:
    declared = {Requirement(d).name: Requirement(d).specifier for d in pyproject()["project"]["dependencies"]}
    for req in pins():
        if req.name in declared:
            (spec,) = req.specifier
            assert SpecifierSet(str(declared[req.name])).contains(spec.version), (req.name, declared[req.name])


def test_py_typed_and_license_ship() -> None:
    project = pyproject()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["raydiff"]
    assert (REPO / "raydiff" / "py.typed").is_file()
    assert project["project"]["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000  # the full text


def test_lower_bounds_cover_what_the_code_uses() -> None:
    declared = {Requirement(d).name: Requirement(d).specifier for d in pyproject()["project"]["dependencies"]}
    # Train V2 became Ray's default in 2.51 (ray-project/ray#57857).
    assert not declared["ray"].contains("2.50.0") and declared["ray"].contains("2.51.0")
    # The streaming engine (collect(engine="streaming")) that metrics and inspect use.
    uses_streaming = any('"streaming"' in p.read_text() for p in (REPO / "raydiff").rglob("*.py"))
    assert uses_streaming and not declared["polars"].contains("1.30.0")
    assert "accelerate" in declared  # diffusers' from_pretrained (models.latent.vae_path) warns without it


def test_every_package_is_listed_and_configs_are_package_data() -> None:
    tool = pyproject()["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "raydiff").rglob("__init__.py")}
    assert set(tool["packages"]) == on_disk | {"raydiff.configs"}
    assert tool["package-dir"] == {"raydiff.configs": "configs"}
    assert "data-files" not in tool  # the deprecated share/ location is gone
    shipped = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert {"textures.yaml", "mvtec.yaml", "mvtec-papers.yaml"} <= shipped

