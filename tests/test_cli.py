"""The click CLI: commands run on tiny data, errors are one line with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from raydiff.cli import main


@pytest.fixture(scope="module")
def textures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tex"
    result = CliRunner().invoke(main, ["make-textures", str(out), "--size", "32"])
    assert result.exit_code == 0, result.output
    return out


def test_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    for name, command in main.commands.items():
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in (command.help or ""), f"{name} --help has no example"


def test_make_textures_draws_with_a_configs_textures_section(textures: Path, tmp_path: Path) -> None:
    """--config reads the section (and the image size and seed, unless given): the demo's data;
    without it, the generator's defaults."""
    import json

    from raydiff.config import DEFAULT_CONFIG, config_to_dict, load_config

    out = tmp_path / "demo-data"
    result = CliRunner().invoke(main, ["make-textures", str(out), "--config", str(DEFAULT_CONFIG), "--seed", "4"])
    assert result.exit_code == 0, result.output
    written = json.loads((out / "textures.json").read_text())["params"]
    cfg = load_config(DEFAULT_CONFIG)
    assert {k: written[k] for k in config_to_dict(cfg.textures)} == config_to_dict(cfg.textures)
    assert (written["size"], written["seed"]) == (cfg.dataset.image_size, 4)
    plain = json.loads((textures / "textures.json").read_text())["params"]
    assert (plain["n_test_good"], plain["min_contrast_sd"], plain["size"], plain["seed"]) == (15, 0.0, 32, 0)


def test_validate_directory_prints_counts(textures: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(textures)])
    assert result.exit_code == 0, result.output
    assert "brick" in result.output and "scratch" in result.output and "ok:" in result.output


def test_validate_config_with_overrides(textures: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"dataset": {"layout": "mvtec", "root": str(textures), "image_size": 32}}))
    result = CliRunner().invoke(main, ["validate", "--config", str(cfg), "--categories", "grass"])
    assert result.exit_code == 0, result.output
    assert "grass" in result.output and "brick" not in result.output


def test_config_error_is_one_line_with_the_fix(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"learning_rate": 1}}))
    result = CliRunner().invoke(main, ["validate", "--config", str(cfg)])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "models.learning_rate" in lines[0] and "Fix:" in lines[0]
    assert "Traceback" not in result.output


def test_dataset_error_names_the_file(textures: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(textures, broken)
    victim = sorted((broken / "gravel" / "test" / "good").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated PNG
    result = CliRunner().invoke(main, ["validate", str(broken)])
    assert result.exit_code == 2
    assert victim.name in result.output and "Fix:" in result.output and "Traceback" not in result.output


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: [")
    result = CliRunner().invoke(main, ["--debug", "validate", "--config", str(cfg)])
    assert result.exit_code != 0 and result.exception is not None


def test_bench_is_one_click_group_over_every_benchmark() -> None:
    from click.testing import CliRunner

    from raydiff.bench.cli import SUBCOMMANDS
    from raydiff.cli import main

    runner = CliRunner()
    listed = runner.invoke(main, ["bench", "--help"])
    assert listed.exit_code == 0
    for name in ("all", "engine", "naive", "train", "metrics", "noise", "schedule"):
        assert name in SUBCOMMANDS and name in listed.output
    noise = runner.invoke(main, ["bench", "noise", "--size", "16", "--maps", "1", "--repeats", "1"])
    assert noise.exit_code == 0, noise.output
    assert "gmm" in noise.output and "ms per map" in noise.output


def test_a_sweep_ends_with_the_command_that_opens_its_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The last lines say where the run, the metrics and the report are, then how to open the
    report: this Python's webbrowser module with the report's absolute file:// URI, quoted."""
    import shlex
    import sys

    import polars as pl

    from raydiff.cli import open_command, show_sweep

    report = tmp_path / "a run" / "report.html"
    argv = shlex.split(open_command(report))
    assert argv == [sys.executable, "-m", "webbrowser", "-t", report.resolve().as_uri()]
    assert argv[-1].startswith("file:///") and argv[-1].endswith("/a%20run/report.html")
    metrics = pl.DataFrame({"category": ["a", "a"], "variant": ["kl", "static"], "i_auroc": [0.7, 0.9]})
    show_sweep({"tables": {"metrics": metrics}, "stages": {}, "run_dir": "R", "metrics": "R/metrics.csv",
                "report": str(report)})
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3:] == ["metrics:    R/metrics.csv", f"report:     {report}", f"open it:    {open_command(report)}"]
    assert lines.index(next(x for x in lines if "static" in x)) < lines.index(next(x for x in lines if "kl" in x))
