"""The job path as the README writes it (issue 31, item 8): ``python jobs/sweep.py --config
configs/textures.yaml --smoke-test --output NEW`` on a checkout without ``make demo``'s data, a
relative output root refused under a Ray job's temporary working dir, and the one map from flags
to config keys that ``raydiff sweep`` and jobs/sweep.py share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from raydiff.config import DEFAULT_CONFIG, flag_overrides, load_config
from raydiff.errors import OutputError
from raydiff.workflow import check_output_persistent, job_working_dir

REPO = Path(__file__).resolve().parents[1]
JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # what Ray's job supervisor hands its entrypoint


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", JOB_ENV, "RAYDIFF_TEXTURES")}


def test_flags_map_to_the_same_keys_for_the_cli_and_the_job() -> None:
    overrides, origins = flag_overrides("data", "out", "a, b", 3, ["models.train_steps=5"], smoke_test=True)
    assert overrides["models.train_steps"] == 5 and "models.train_steps" not in origins  # --set beats the budget
    assert overrides["models.preset"] == "tiny" and origins["models.preset"] == "--smoke-test"
    assert overrides["dataset.root"] == str(Path("data").resolve()) and origins["dataset.root"] == "--dataset-root"
    assert (overrides["output.root"], overrides["dataset.categories"], overrides["seed"]) == ("out", ["a", "b"], 3)
    # A named flag wins over a --set of the same key (the CLI's rule, now the job's too).
    assert flag_overrides(None, "x", None, None, ["output.root=y"])[0]["output.root"] == "x"

    import importlib.util  # the job's parser takes the CLI's options

    spec = importlib.util.spec_from_file_location("job_sweep", REPO / "jobs" / "sweep.py")
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    args = job.parse_args(["--smoke-test", "--seed", "2", "--limit", "3", "--output", "o", "--set", "seed=1"])
    assert (args.config, args.seed, args.limit, args.sets) == (DEFAULT_CONFIG, 2, 3, ["seed=1"])


def test_relative_output_root_refused_inside_a_ray_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(DEFAULT_CONFIG, {"output.root": "raydiff-out"})
    monkeypatch.delenv(JOB_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert job_working_dir() is None
    check_output_persistent(cfg)  # an ordinary process: relative to its working dir, fine
    monkeypatch.setenv(JOB_ENV, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}, "metadata": {}}))
    assert job_working_dir() == tmp_path
    with pytest.raises(OutputError, match="deleted when the job ends.*--output /"):
        check_output_persistent(cfg)
    check_output_persistent(load_config(DEFAULT_CONFIG, {"output.root": str(tmp_path / "out")}))
    # Ray's unpacked working dir is recognised by its path too.
    monkeypatch.delenv(JOB_ENV)
    job_dir = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_x"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)
    with pytest.raises(OutputError):
        check_output_persistent(cfg)


def test_job_refuses_relative_output_in_one_line_before_writing(tmp_path: Path) -> None:
    """jobs/sweep.py as ``ray job submit --working-dir .`` runs it, without --output."""
    work = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    work.mkdir(parents=True)
    env = _env() | {JOB_ENV: json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}})}
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "sweep.py"), "--config", str(DEFAULT_CONFIG),
                           "--smoke-test"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: raydiff-out:") and "--output" in lines[0], done.stderr
    assert not any(work.iterdir())  # nothing written into the folder that vanishes


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.trains
def test_readme_smoke_command_on_a_fresh_output(tmp_path: Path) -> None:
    """The README's exact command with a new --output: the default data is written under it."""
    out = tmp_path / "NEW"
    cmd = [sys.executable, "jobs/sweep.py", "--config", "configs/textures.yaml", "--smoke-test", "--output", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert f"[data] texture benchmark -> {out / 'data' / 'textures'}" in done.stdout
    assert (out / "data" / "textures" / "_SUCCESS").is_file()
    runs = [p for p in out.iterdir() if (p / "metrics.csv").is_file()]
    assert len(runs) == 1, list(out.iterdir())
    metrics = pl.read_csv(runs[0] / "metrics.csv")
    assert metrics["category"].unique().to_list() == ["brick"]  # the first category only
    assert metrics["i_auroc"].null_count() == 0
    # Progress of every stage in the driver's output (issue 31, item 7): training steps per model
    # from its worker, the fit, scoring's images done; the cost columns name each variant's pass.
    assert "[train] brick/pixel: step 20/20" in log, log[-4000:]
    assert "[fit] brick: done in" in done.stdout and "[score] brick: 4/4 images" in done.stdout
    assert metrics["unet_pass_of"].null_count() == 0
