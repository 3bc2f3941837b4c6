"""The output root: never mix runs of different configs, clear errors when it cannot be written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from raydiff.config import config_from_dict, dump_config
from raydiff.errors import OutputError
from raydiff.paths import run_dir
from raydiff.runs import write_run_metadata


def _cfg(out: Path, seed: int = 0):  # noqa: ANN202
    return config_from_dict({"output": {"root": str(out)}, "seed": seed})


def test_run_folder_of_another_config_is_refused_then_overwritten(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "out")
    folder = run_dir(cfg)
    folder.mkdir(parents=True)
    foreign = dump_config(dataclasses.replace(cfg, seed=7))
    (folder / "config.yaml").write_text(foreign)
    (folder / "pixels").mkdir()
    (folder / "pixels" / "part.parquet").write_bytes(b"scores of the other config")

    with pytest.raises(OutputError) as err:
        write_run_metadata(cfg)
    assert str(folder) in str(err.value) and "--overwrite" in str(err.value) and "--output" in str(err.value)
    assert (folder / "config.yaml").read_text() == foreign  # nothing touched
    assert (folder / "pixels" / "part.parquet").is_file()

    assert write_run_metadata(cfg, overwrite=True) == folder
    assert not (folder / "pixels").exists()
    assert (folder / "config.yaml").read_text() == dump_config(cfg)
    assert write_run_metadata(cfg) == folder  # the same config again: fine


def test_damaged_config_in_run_folder_is_refused(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "out")
    run_dir(cfg).mkdir(parents=True)
    (run_dir(cfg) / "config.yaml").write_text("models: {preset: [unclosed")
    with pytest.raises(OutputError, match="cannot be read as a raydiff config"):
        write_run_metadata(cfg)


def test_unwritable_output_root_is_a_clear_error_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output root should be")
    cfg = _cfg(blocker / "out")
    with pytest.raises(OutputError) as err:
        write_run_metadata(cfg)
    assert "cannot write the output folder" in str(err.value) and "--output" in str(err.value)


def test_cli_sweep_refuses_a_foreign_run_folder_in_one_line(tmp_path: Path) -> None:
    from raydiff.cli import main
    from raydiff.config import load_config
    from raydiff.data.textures import make_textures

    root = make_textures(tmp_path / "data", size=32, n_train=6, n_test_good=1, n_test_defect=1, categories=("brick",))
    args = ["--config", str(Path(__file__).parents[1] / "configs" / "textures.yaml"), "--dataset-root", str(root),
            "--output", str(tmp_path / "out")]
    cfg = load_config(Path(args[1]), {"dataset.root": str(root), "output.root": str(tmp_path / "out")})
    run_dir(cfg).mkdir(parents=True)
    (run_dir(cfg) / "config.yaml").write_text(dump_config(dataclasses.replace(cfg, seed=99)))
    result = CliRunner().invoke(main, ["sweep", *args])
    assert result.exit_code != 0
    assert "different config" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "models").exists()  # refused before any training
