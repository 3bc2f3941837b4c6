"""The RAN parity check (raydiff/parity/ran.py) against a stand-in of VandyLu/anomaly_diff.

The stand-in (tests/parity_standins/anomaly_diff) follows the reference's calling convention so
the adapter cannot rot in CI; the real comparison is `raydiff parity --reference ran=PATH`
(docs/parity.md). A deliberately broken copy of the stand-in must make the check report DIFFERS.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from raydiff.config import DEFAULT_CONFIG, load_config
from raydiff.diffusion import Schedule
from raydiff.parity import ran
from raydiff.parity.inputs import random_inputs
from raydiff.parity.run import run_parity

STANDIN = Path(__file__).parent / "parity_standins" / "anomaly_diff"


def _inputs():
    cfg = load_config(DEFAULT_CONFIG, {"dataset.image_size": 16, "models.base_channels": 8})
    return random_inputs(cfg, batch=4, n_train=6)


@pytest.fixture(scope="module")
def inputs():
    return _inputs()


def _copy_with(tmp_path: Path, old: str, new: str) -> Path:
    dst = tmp_path / "anomaly_diff"
    shutil.copytree(STANDIN, dst, ignore=shutil.ignore_patterns("__pycache__"))
    f = dst / "guided_diffusion" / "gaussian_diffusion.py"
    src = f.read_text()
    assert src.count(old) == 1, old
    f.write_text(src.replace(old, new))
    return dst


def test_every_stage_equal_on_the_standin(inputs) -> None:
    res = run_parity(inputs, {"ran": STANDIN}, ["ran-kl"])
    rows = {r.stage: r for r in res.rows}
    for t in ran.TIMESTEPS:
        for stage in (f"UNet step (t={t})", f"x_t (t={t})", f"x̂0 (t={t})", f"p mean (t={t})",
                      f"p log-variance (t={t})", f"KL map bits (t={t})"):
            assert stage in rows, stage
    bad = [(r.stage, r.max_rel) for r in res.rows if r.deviation is None and r.status != "equal"]
    assert not bad, bad
    # the normalisation is raydiff's documented deviation: reported, and it does change the maps
    dev = [r for r in res.rows if r.deviation == "kl"]
    assert len(dev) == 2 and all(r.status == "deviation" for r in dev)
    # the UNet is called at the original steps 20, 201, 401 of the 1000-step schedule
    assert ran.chain_and_steps(1000) == (250, (5, 50, 100), "")
    assert res.references["ran"]["path"] == str(STANDIN.resolve())


def test_a_broken_reference_formula_differs(inputs, tmp_path: Path) -> None:
    # the learned-range interpolation off by a little: p's variance and the KL must differ
    broken = _copy_with(tmp_path, "w = 0.5 * (var_values + 1.0)", "w = 0.5 * (var_values + 1.25)")
    status = {r.stage: r.status for r in run_parity(inputs, {"ran": broken}, ["ran-kl"]).rows}
    assert status["x_t (t=5)"] == "equal"
    assert status["p log-variance (t=5)"] == "DIFFERS"
    assert status["KL map bits (t=50)"] == "DIFFERS"
    assert status["per-t z-scored KL, channel mean (raydiff normalise: per-image)"] == "DIFFERS"


def test_a_change_in_the_reference_noise_draws_is_caught(inputs, tmp_path: Path) -> None:
    broken = _copy_with(tmp_path, "        _unused = th.randn_like(x_start)", "        pass")
    with pytest.raises(RuntimeError, match="drew noise 3 times"):
        run_parity(inputs, {"ran": broken}, ["ran-kl"])


def test_a_shorter_schedule_is_respaced_proportionally() -> None:
    n, ts, note = ran.chain_and_steps(200)
    assert (n, ts) == (50, (1, 10, 20)) and "200 steps" in note
    inp = _inputs()
    inp.models["gaussian"] = dataclasses.replace(inp.models["gaussian"], schedule=Schedule.build("linear", 200))
    res = run_parity(inp, {"ran": STANDIN}, ["ran-kl"])
    bad = [(r.stage, r.max_rel) for r in res.rows if r.deviation is None and r.status != "equal"]
    assert not bad, bad
    assert any("recomputed here" in r.note for r in res.rows)
