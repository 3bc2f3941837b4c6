"""``ray job submit`` of jobs/sweep.py to a real local Ray head with token authentication on
(Ray 2.60's secure default), exactly as the README shows it, on a tiny texture dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.trains]

REPO = Path(__file__).resolve().parents[1]


def test_ray_job_submit_runs_the_sweep_with_token_auth(tmp_path: Path, token_env: dict[str, str], free_port: int) -> None:
    import ray

    from raydiff.config import load_config
    from raydiff.data.textures import make_textures

    data = make_textures(tmp_path / "data", size=32, n_train=10, n_test_good=2, n_test_defect=2, categories=("grass",))
    out = tmp_path / "out"
    port = free_port
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=False)
    try:
        address = f"http://127.0.0.1:{port}"
        submit = [
            sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", address,
            "--working-dir", ".", "--",
            sys.executable, "jobs/sweep.py", "--config", "configs/textures.yaml", "--smoke-test",
            "--dataset-root", str(data), "--output", str(out),
        ]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | token_env
        done = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-4000:]
        assert "succeeded" in log.lower(), log[-4000:]
        runs = [p for p in out.iterdir() if (p / "metrics.csv").is_file()]
        assert len(runs) == 1, list(out.iterdir())
        metrics = pl.read_csv(runs[0] / "metrics.csv")
        assert metrics["category"].unique().to_list() == ["grass"]
        assert metrics["i_auroc"].null_count() == 0
        assert sorted(metrics["variant"].to_list()) == sorted(load_config(REPO / "configs" / "textures.yaml").variants.enabled)

        # Without the token the same submission is refused: auth is really on.
        bare = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        refused = subprocess.run([*submit[:7], "--", sys.executable, "-c", "print(1)"], cwd=REPO, env=bare,
                                 capture_output=True, text=True, timeout=300)
        assert refused.returncode != 0
        assert "token" in (refused.stdout + refused.stderr).lower()
    finally:
        ray.shutdown()
