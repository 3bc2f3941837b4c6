"""The device check (scripts/gpu_check.sh → raydiff.bench.gpu_check) as CI runs it: on the CPU,
tiny preset, short chains, in a subprocess where ray, polars, faiss, click and pyarrow cannot be
imported (the GPU image has none of them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("ray", "polars", "faiss", "click", "pyarrow")


@pytest.mark.slow
def test_gpu_check_runs_without_ray_polars_faiss_click(tmp_path: Path) -> None:
    site = tmp_path / "block"
    site.mkdir()
    # Imported at interpreter start-up (before raydiff): each blocked name then fails to import.
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"for name in {BLOCKED!r}:\n"
        "    sys.modules[name] = None\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    env.pop("WHEELHOUSE", None)
    proc = subprocess.run(
        [str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--preset", "tiny", "--size", "32",
         "--batches", "2", "--modes", "eager", "--quick", "--threads", "1", "--train-batch", "2", "--noise-shape", "2", "3", "32", "32"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    errors = {k: v for k, v in result.items() if isinstance(v, dict) and ("error" in v or "skipped" in v)}
    assert not errors, errors
    engine = result["engine eager b2"]
    # Every enabled variant of mvtec.yaml ran: forwards of each static chain (3 with --quick), trend's
    # 3 backward passes, noise drawn, a peak-memory figure.
    assert engine["unet_backwards_per_image"] == 3.0
    assert engine["forwards_by_family"]["static-gaussian"] == 3.0
    assert engine["noise_seconds_per_image"] > 0 and engine["mfu"] > 0
    assert engine["peak_memory_mb"] > 0
    # mvtec.yaml's models (the same-model comparison: one pixel model plus the two noise models).
    assert set(result["train"]) == {"pixel", "pixel-simplex", "pixel-gmm"}
    assert all(r["images_per_s"] > 0 for r in result["train"].values())
    assert set(result["agreement"]) == set(result["variants"])
    assert all(a["map_correlation"] > 0.95 for a in result["agreement"].values())
    for key in ("gaussian_ms_per_draw", "simplex_ms_per_draw", "gmm_ms_per_draw"):
        assert result["noise"][key] > 0
    assert "engine" in proc.stdout and "bf16 vs fp32" in proc.stdout
