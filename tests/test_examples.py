"""What the README promises a user runs: the example script on a small run folder, the --help of
every command in its cheat sheet, and its config example."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import click
import pytest
from click.testing import CliRunner
from test_report import PLANTED_FP, make_run

from raydiff.cli import main
from raydiff.config import load_config

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def cheat_sheet() -> list[list[str]]:
    """The `raydiff ...` lines of the README's "Commands" block, as argument lists after `raydiff`."""
    section = README.read_text().split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    (block,) = fenced_blocks(section, "bash")
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("raydiff ")]


def command_path(args: list[str]) -> list[str]:
    """The (sub)command names at the start of ``args``, following click groups."""
    path: list[str] = []
    command: click.Command = main
    for word in args:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        path.append(word)
        command = command.commands[word]
    return path


# --------------------------------------------------------------------------------------------
# examples/error_analysis.py
# --------------------------------------------------------------------------------------------

SCRIPT = REPO / "examples" / "error_analysis.py"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder written with the pipeline's own writers (tests/test_report.py): two categories,
    two variants, a planted false positive and a planted missed region; no model is trained."""
    return make_run(tmp_path_factory.mktemp("example")).root


def test_error_analysis_prints_its_tables(run_folder: Path, capsys: pytest.CaptureFixture) -> None:
    script = load_script(SCRIPT)
    assert script.main([str(run_folder), "--top", "3"]) == 0
    out = capsys.readouterr().out
    for name in ("distributions", "worst_false_positives", "missed", "worst_images"):
        assert f"## {name}" in out
    tables = script.error_tables(run_folder, fpr=0.01, top=3)
    # Two categories x two variants x {normal, anomalous} pixels.
    assert tables["distributions"].height == 8
    # The planted +5 blob on a normal image is the worst false positive.
    assert tables["worst_false_positives"]["image_id"][0] == PLANTED_FP
    assert tables["worst_false_positives"].height == 3
    # The planted region without signal is missed (a crack) in every category and variant.
    missed = tables["missed"].filter(tables["missed"]["defect_type"] == "crack")
    assert missed.height == 4 and (missed["missed"] >= 1).all()
    worst = tables["worst_images"]
    assert worst.height == 4 and (worst["worst_normal"] == PLANTED_FP).all()


def test_error_analysis_runs_as_a_script(run_folder: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), str(run_folder), "--top", "1"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "## worst_false_positives" in done.stdout and PLANTED_FP in done.stdout


def test_error_analysis_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert load_script(SCRIPT).main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a raydiff run folder" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# The README's cheat sheet and config example
# --------------------------------------------------------------------------------------------


def test_the_cheat_sheet_lists_every_command() -> None:
    listed = {path[0] for path in map(command_path, cheat_sheet()) if path}
    assert set(main.commands) <= listed, f"missing from README's Commands: {sorted(set(main.commands) - listed)}"


@pytest.mark.parametrize("args", cheat_sheet(), ids=lambda a: " ".join(a[:2]) or "--help")
def test_every_cheat_sheet_command_has_help(args: list[str]) -> None:
    if args and args[0] not in main.commands and not args[0].startswith("-"):
        # `raydiff parity` is documented before it lands; once it exists this test covers it.
        assert args[0] == "parity", f"README names an unknown command: raydiff {args[0]}"
        pytest.skip("raydiff parity is not in this checkout yet")
    result = CliRunner().invoke(main, [*command_path(args), "--help"])
    assert result.exit_code == 0, result.output
    assert "usage" in result.output.lower()


def test_the_sweep_job_has_help(capsys: pytest.CaptureFixture) -> None:
    job = load_script(REPO / "jobs" / "sweep.py")
    with pytest.raises(SystemExit) as stop:
        job.parse_args(["--help"])
    assert stop.value.code == 0
    assert "--smoke-test" in capsys.readouterr().out


def test_the_readme_config_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = README.read_text().split("\n## Config essentials\n", 1)[1].split("\n## ", 1)[0]
    (example,) = fenced_blocks(section, "yaml")
    path = tmp_path / "example.yaml"
    path.write_text(example)
    monkeypatch.setenv("MVTEC_ROOT", str(tmp_path / "mvtec"))
    cfg = load_config(path)
    assert cfg.dataset.root == str(tmp_path / "mvtec")
    assert set(cfg.variants.enabled) == {"static-gaussian", "kl"} and cfg.models_needed() == ("pixel",)
