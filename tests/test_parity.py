"""The parity harness (raydiff/parity): reference loading, the comparison, and the DDAD and DynAD
checks against stand-ins that follow the references' calling conventions (tests/parity_standins;
the real references are compared by `raydiff parity`, docs/parity.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from raydiff.cli import main
from raydiff.config import DEFAULT_CONFIG, load_config
from raydiff.errors import ConfigError
from raydiff.parity.compare import Stage, diff, markdown
from raydiff.parity.inputs import model_roles, random_inputs
from raydiff.parity.refs import load_reference
from raydiff.parity.run import parse_references, run_parity

STANDINS = Path(__file__).parent / "parity_standins"


@pytest.fixture(scope="module")
def inputs():
    cfg = load_config(DEFAULT_CONFIG, {"dataset.root": "/nonexistent", "dataset.image_size": 32})
    return random_inputs(cfg, batch=4, n_train=24)


def test_diff_reports_equal_deviation_and_differs() -> None:
    a = torch.arange(12.0).view(3, 4)
    same = diff(Stage("m", "s", a, a.clone()))
    assert same.status == "equal" and same.max_abs == 0 and same.pearson == pytest.approx(1.0)
    off = diff(Stage("m", "s", a + 1e-2, a))
    assert off.status == "DIFFERS" and off.max_abs == pytest.approx(1e-2, rel=1e-4) and off.max_rel == pytest.approx(1e-2 / 11, rel=1e-4)
    dev = diff(Stage("m", "s", a * 2, a, deviation="dynamic"))
    assert dev.status == "deviation" and dev.spearman == pytest.approx(1.0)
    scores = diff(Stage("m", "score", torch.tensor([0.1, 0.2, 0.9, 0.8]), torch.tensor([0.2, 0.1, 0.8, 0.9]),
                        kind="score"), labels=np.array([0, 0, 1, 1]))
    assert scores.auroc_ours == scores.auroc_theirs == 1.0
    assert scores.spearman == pytest.approx(0.6)  # ranks (0,1,3,2) vs (1,0,2,3)
    with pytest.raises(ValueError, match="shapes differ"):
        diff(Stage("m", "s", a, a.T))
    assert "| m | s |" in markdown([same])


def test_references_are_isolated_and_leave_no_trace(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, value in ((one, 1), (two, 2)):
        folder.mkdir()
        (folder / "unet.py").write_text(
            "import os\nimport notinstalled_pkg_xyz.sub as sub\nfrom notinstalled_pkg_xyz import *\n"
            f"os.environ['RAYDIFF_PARITY_PROBE'] = 'set'\nVALUE = {value}\n"
            "class Net(sub.Module):\n    pass\n"
            "def use():\n    return sub.thing(1)\n"
        )
    before = sys.path[:]
    a = load_reference("ddad", one, ["unet"], absent=["notinstalled_pkg_xyz"])
    b = load_reference("dynad", two, ["unet"], absent=["notinstalled_pkg_xyz"])
    assert (a.module("unet").VALUE, b.module("unet").VALUE) == (1, 2)
    assert a.stubbed == ["notinstalled_pkg_xyz"]
    assert "unet" not in sys.modules and "notinstalled_pkg_xyz" not in sys.modules and sys.path == before
    assert "RAYDIFF_PARITY_PROBE" not in os.environ
    with pytest.raises(RuntimeError, match="notinstalled_pkg_xyz.sub.thing"):
        a.module("unet").use()
    with pytest.raises(ConfigError, match="has no reconstruction.py"):
        load_reference("ddad", one, ["reconstruction"])
    with pytest.raises(ConfigError, match="is not a folder"):
        load_reference("ddad", tmp_path / "missing", ["unet"])


def test_parse_references() -> None:
    assert parse_references(["ddad=/x"]) == {"ddad": Path("/x")}
    for bad in (["ddad"], ["nope=/x"], ["ddad=/x", "ddad=/y"]):
        with pytest.raises(ConfigError):
            parse_references(bad)


def test_model_roles_of_the_default_config(inputs) -> None:
    assert model_roles(inputs.cfg) == {"gaussian": "pixel", "simplex": "pixel-simplex"}


def _by_stage(result):
    return {r.stage: r for r in result.rows}


def test_ddad_and_dynad_checks_agree_with_the_standins(inputs) -> None:
    refs = {"ddad": STANDINS / "DDAD", "dynad": STANDINS / "Dynamic-noise-AD"}
    result = run_parity(inputs, refs, ["ddad-guided", "dynad"])
    bad = [(r.method, r.stage, r.max_rel) for r in result.rows if r.status == "DIFFERS"]
    assert not bad, bad
    rows = _by_stage(result)
    assert rows["x̂0 (raydiff ddim_grid: reference)"].max_rel < 1e-5
    assert rows["ẑ0 (raydiff ddim_grid: reference)"].max_rel < 1e-5
    # the paper's grid is a measured deviation, not an equality
    assert rows["ẑ0 (raydiff default ddim_grid: paper)"].status == "deviation"
    assert rows["KNN bin (training image among its own neighbours)"].status == "equal"
    assert rows["final map, the reference's normalisation (raydiff's smoothing)"].auroc_ours is not None
    assert result.references["dynad"]["commit"] == "unknown"  # a stand-in folder is no git checkout


def test_a_wrong_reference_is_caught(inputs, monkeypatch) -> None:
    """The checks can fail: a stand-in whose guidance sign is flipped differs from raydiff."""
    import raydiff.parity.dynad as check

    real = check.stages

    def flipped(ref, inp):
        sample = ref.module("sample")
        orig = sample.my_generalized_steps
        monkeypatch.setattr(sample, "my_generalized_steps",
                            lambda y, x, seq, model, b, config, eta2, *a, **k: orig(y, x, seq, model, b, config, -eta2, *a, **k))
        return real(ref, inp)

    monkeypatch.setattr(check, "stages", flipped)
    result = run_parity(inputs, {"dynad": STANDINS / "Dynamic-noise-AD"}, ["dynad"])
    assert _by_stage(result)["ẑ0 (raydiff ddim_grid: reference)"].status == "DIFFERS"


def test_ddim_grid_reference_walks_the_reference_sequence() -> None:
    from raydiff.scoring.dynad import ddim_timesteps

    ts = ddim_timesteps(torch.tensor([80, 20, 25]), 10, grid="reference")
    assert ts[:10, 0].tolist() == list(range(72, -1, -8))
    assert ts[:, 1].tolist()[:10] == list(range(18, -1, -2))
    # T̂ = 25, skip 2: arange(0, 25, 2) has 13 entries, walked backwards
    assert ts[:, 2].tolist() == list(range(24, -1, -2))
    assert (ts[10:, :2] == -1).all()


def test_ddim_grid_default_keeps_run_ids() -> None:
    from raydiff.config.loader import run_id

    cfg = load_config(DEFAULT_CONFIG, {"dataset.root": "/nonexistent"})
    spelled = load_config(DEFAULT_CONFIG, {"dataset.root": "/nonexistent", "variants.dynamic-pixel.ddim_grid": "paper"})
    changed = load_config(DEFAULT_CONFIG, {"dataset.root": "/nonexistent", "variants.dynamic-pixel.ddim_grid": "reference"})
    assert run_id(cfg) == run_id(spelled) == "677bb5c420c2"  # the default is not hashed (tests/test_config_ids.py)
    assert run_id(changed) != run_id(cfg)


def test_cli_parity_bad_reference_is_one_line() -> None:
    res = CliRunner().invoke(main, ["parity", "--reference", "nope=/x"])
    assert res.exit_code != 0
    assert "expected KEY=PATH" in res.output and "Traceback" not in res.output


def test_kl_per_image_normalisation_is_the_references_zscore() -> None:
    """`normalise: per-image`: each image's per-channel KL minus its mean over channels and pixels,
    over their unbiased std, then the channel mean; a function of the image alone."""
    from raydiff.config import KLConfig
    from raydiff.scoring import ran_kl

    g = torch.Generator().manual_seed(0)
    kl_c = torch.rand(3, 2, 5, 5, generator=g) ** 3
    z = ran_kl.per_image_zscore(kl_c)
    for i in range(3):
        flat = kl_c[i].flatten().double()
        expect = ((kl_c[i].double() - flat.mean()) / flat.std(unbiased=True)).mean(dim=0)
        assert torch.allclose(z[i].double(), expect, atol=1e-6)
    # batch independence: an image's map does not change with its neighbours
    assert torch.allclose(ran_kl.per_image_zscore(kl_c[1:2])[0], z[1])
    params = KLConfig(timesteps=(5,), normalise="per-image", feature_weight=0.5)
    feat = torch.rand(3, 5, 5, generator=g)
    out = ran_kl.combine("kl", {"kl_t5": z, "feature": feat}, {"kl_t5": (9.0, 9.0), "feature": (9.0, 9.0)}, params)
    assert torch.allclose(out, 0.5 * z + 0.5 * feat)  # held-out statistics are not applied
