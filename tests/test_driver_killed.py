"""The sweep driver (jobs/sweep.py) killed mid-sweep, then run again: it completes, skips the
trainings that had finished, and leaves no duplicate rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.trains]

REPO = Path(__file__).resolve().parents[1]


def _finished_models(out: Path) -> dict[str, int]:
    return {str(p.parent.relative_to(out)): p.stat().st_mtime_ns for p in (out / "models").rglob("_SUCCESS")}


def test_killed_driver_resumes_without_redoing_or_duplicating(tmp_path: Path, token_env: dict[str, str], free_port: int) -> None:
    """The drivers connect to a Ray head this test starts (token auth on, dashboard on loopback),
    as a resubmitted job would; the first driver is SIGKILLed by its pid."""
    import ray

    from raydiff.data.textures import make_textures

    data = make_textures(tmp_path / "data", size=32, n_train=10, n_test_good=2, n_test_defect=2, categories=("brick",))
    out = tmp_path / "out"
    cmd = [sys.executable, "jobs/sweep.py", "--config", "configs/textures.yaml", "--smoke-test",
           "--dataset-root", str(data), "--output", str(out)]
    context = ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port,
                       log_to_driver=False)
    try:
        _run_twice(cmd, out, {**os.environ, **token_env, "RAY_ADDRESS": context.address_info["gcs_address"]})
    finally:
        ray.shutdown()


def _run_twice(cmd: list[str], out: Path, env: dict[str, str]) -> None:
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not _finished_models(out) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the sweep ended before a model finished: nothing to interrupt"
        assert _finished_models(out), "no model finished within 10 minutes"
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    before = _finished_models(out)
    assert 0 < len(before) < 4, before  # killed mid-training: some models done, not all

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    after = _finished_models(out)
    assert len(after) == 4
    assert {k: after[k] for k in before} == before  # finished trainings were not redone

    runs = [p for p in out.iterdir() if (p / "metrics.csv").is_file()]
    assert len(runs) == 1
    from raydiff.runs import scan_pixels

    pixels = scan_pixels(runs[0]).select("variant", "image_id", "y", "x").collect()
    assert pixels.height == pixels.unique().height > 0  # no duplicate rows
    assert pl.read_csv(runs[0] / "metrics.csv")["i_auroc"].null_count() == 0
