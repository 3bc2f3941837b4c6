"""φ's architectures (``features.arch``), its weights key, and one φ per consumer (issue 29, item 6).

Independent references: torchvision's ``_make_layer`` transcribed as a key/shape enumeration and
the parameter counts torchvision publishes with its ImageNet weights (``meta["num_params"]``);
a state dict saved from one module and read back strictly; and, for the separation, the same
category fitted with and without DynAD's domain adaptation: RAN's maps must be bit-identical.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from pathlib import Path
from typing import get_args

import pytest
import torch
from safetensors.torch import save_file
from torchvision_layouts import TORCHVISION_ARCHS, TORCHVISION_PARAMS, torchvision_layout

from raydiff.config import FeaturesConfig, config_from_dict, dump_config, load_config, run_id
from raydiff.config.schema import PhiArch
from raydiff.errors import CheckpointError, ConfigError
from raydiff.features import (
    ARCHS,
    PHI_ADAPTED,
    PHI_BASE,
    ResNetFeatures,
    build_features,
    init_random,
    knn_features,
    load_weights,
)


def _images(b: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _random_state(arch: str, seed: int) -> dict[str, torch.Tensor]:
    """A seeded random state dict of ``arch`` with non-trivial BatchNorm statistics."""
    m = init_random(ResNetFeatures(arch), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, buf in m.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def wide50_state() -> dict[str, torch.Tensor]:
    return _random_state("wide_resnet50_2", seed=4)


# --------------------------------------------------------------------------------------------
# The architecture table
# --------------------------------------------------------------------------------------------


def test_the_table_and_the_config_name_the_same_archs() -> None:
    assert list(ARCHS) == list(get_args(PhiArch)) == list(TORCHVISION_ARCHS)
    assert FeaturesConfig().arch == "resnet34"


@pytest.mark.parametrize("arch", list(TORCHVISION_ARCHS))
def test_state_dict_layout_and_size_are_torchvisions(arch: str) -> None:
    with torch.device("meta"):  # shapes only, no memory
        model = ResNetFeatures(arch)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == torchvision_layout(arch)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[arch]


@pytest.mark.parametrize("arch", list(TORCHVISION_ARCHS))
@pytest.mark.parametrize("size", [64, 96])
def test_output_shapes_per_arch(arch: str, size: int) -> None:
    c2, c3 = (128, 256) if arch == "resnet34" else (512, 1024)
    with torch.device("meta"):
        model = ResNetFeatures(arch)
        out = model(torch.empty(2, 1, size, size))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"layer2": (2, c2, size // 8, size // 8),
                                                          "layer3": (2, c3, size // 16, size // 16)}
    assert model.channels == {"layer2": c2, "layer3": c3} and model.knn_dim == c2 * 16 * 16


def test_wide_forward_on_real_tensors(wide50_state: dict[str, torch.Tensor]) -> None:
    model = ResNetFeatures("wide_resnet50_2")
    model.load_state_dict(wide50_state, strict=True)
    grey = _images(2, 1, 64, seed=3)
    with torch.no_grad():
        out = model(grey)
        rgb = model(grey.repeat(1, 3, 1, 1))
        feats = knn_features(model, grey, batch_size=2)
    assert out["layer2"].shape == (2, 512, 8, 8) and out["layer3"].shape == (2, 1024, 4, 4)
    assert torch.isfinite(out["layer3"]).all() and out["layer3"].dtype == torch.float32
    torch.testing.assert_close(out["layer3"], rgb["layer3"], rtol=0, atol=0)
    # 8×8 → 16×16 adaptive average pooling repeats each cell 2×2.
    expect = out["layer2"].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).flatten(1)
    assert feats.shape == (2, 512 * 256)
    torch.testing.assert_close(feats, expect, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# The strict offline loader
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_wide_resnet50_2_file_loads_strictly(tmp_path: Path, wide50_state: dict[str, torch.Tensor], suffix: str) -> None:
    path = tmp_path / f"wide_resnet50_2-test{suffix}"
    if suffix == ".pth":
        torch.save(wide50_state, path)
    else:
        save_file({k: v.contiguous() for k, v in wide50_state.items()}, str(path))
    model, tag = build_features(FeaturesConfig(arch="wide_resnet50_2", weights=str(path)))
    assert tag == f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}" and model.arch == "wide_resnet50_2"
    assert list(model.state_dict()) == list(wide50_state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, wide50_state[k]), k
    ref = ResNetFeatures("wide_resnet50_2")
    ref.load_state_dict(wide50_state, strict=True)
    x = _images(1, 3, 64, seed=5)
    with torch.no_grad():
        got, expect = model(x), ref(x)
    for k in ("layer2", "layer3"):
        assert torch.equal(got[k], expect[k])


def test_a_resnet34_file_is_refused_for_wide_resnet50_2(tmp_path: Path) -> None:
    path = tmp_path / "resnet34-b627a593.pth"
    torch.save(ResNetFeatures("resnet34").state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        build_features(FeaturesConfig(arch="wide_resnet50_2", weights=str(path)))
    msg = str(err.value)
    assert str(path) in msg and "not a wide_resnet50_2 state dict" in msg
    assert "It is a resnet34 state dict" in msg and "features.arch: resnet34" in msg
    # A bottleneck's third conv is missing; the classifier takes 512 features, not 2048.
    assert "missing keys: layer1.0.bn3.bias" in msg and "wrong shapes: fc.weight (1000, 512) (expected (1000, 2048))" in msg


def test_a_wide_file_is_refused_for_another_wide_arch_or_resnet34(tmp_path: Path,
                                                                  wide50_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "wide50.safetensors"
    save_file({k: v.contiguous() for k, v in wide50_state.items()}, str(path))
    # layer3 has 6 blocks, not 23: 17 missing blocks × (3 convs + 3 BNs × 4 tensors; BN counters optional).
    with pytest.raises(CheckpointError, match=r"not a wide_resnet101_2 state dict .*255 missing keys: layer3\.10\.") as err:
        load_weights(path, "wide_resnet101_2")
    assert "It is a wide_resnet50_2 state dict" in str(err.value)
    with pytest.raises(CheckpointError, match="not a resnet34 state dict .*It is a wide_resnet50_2"):
        load_weights(path, "resnet34")


def test_a_file_of_no_known_arch_names_every_arch(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    state = {k: v for k, v in ResNetFeatures("resnet34").state_dict().items() if not k.startswith("layer3.5.")}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing keys: layer3.5.bn1.bias") as err:
        load_weights(path, "resnet34")
    assert "It is a" not in str(err.value) and "wide_resnet101_2" in str(err.value)


def test_unknown_arch_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="resnet50.*use one of resnet34, wide_resnet50_2, wide_resnet101_2"):
        ResNetFeatures("resnet50")


# --------------------------------------------------------------------------------------------
# The config: features.weights (alias resnet34_weights), features.arch, domain_adaptation
# --------------------------------------------------------------------------------------------


def _write(path: Path, features: str) -> Path:
    path.write_text("dataset: {root: /x, image_size: 32}\nfeatures:\n" + features)
    return path


def test_resnet34_weights_is_read_as_weights(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "resnet34.pth").write_bytes(b"weights")  # ids hash the file's content: it must be there
    new = load_config(_write(tmp_path / "new.yaml", "  weights: w/resnet34.pth\n"))
    with pytest.warns(FutureWarning, match="'features.resnet34_weights' .* read as 'features.weights'"):
        old = load_config(_write(tmp_path / "old.yaml", "  resnet34_weights: w/resnet34.pth\n"))
    assert old.features == new.features and new.features.weights == str(tmp_path / "w" / "resnet34.pth")
    assert run_id(old) == run_id(new)  # hashed under the earlier name: ids stay
    assert "resnet34_weights:" not in dump_config(new) and "  weights: " in dump_config(new)
    with pytest.warns(FutureWarning):  # --set, and a stored run config
        over = load_config(_write(tmp_path / "bare.yaml", "  domain_adaptation_epochs: 0\n"),
                           {"features.resnet34_weights": "/abs/r34.pth"})
        stored = config_from_dict({"features": {"resnet34_weights": None}}, upgrade=True)
    assert over.features.weights == "/abs/r34.pth" and stored.features == FeaturesConfig()
    # Both spellings at once: one error naming both, blamed on where the earlier one came from.
    with pytest.raises(ConfigError, match="both.yaml: both 'features.resnet34_weights' and 'features.weights'"):
        load_config(_write(tmp_path / "both.yaml", "  weights: a.pth\n  resnet34_weights: b.pth\n"))
    with pytest.raises(ConfigError, match="--set features.resnet34_weights: both .* keep only 'features.weights'"):
        load_config(tmp_path / "new.yaml", {"features.resnet34_weights": "/abs/r34.pth"})


def test_new_settings_change_the_run_id_only_when_set() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these is an earlier form
        base = config_from_dict({"variants": {"d": {"method": "dynamic", "model": "pixel"}}})
        same = config_from_dict({"features": {"arch": "resnet34"},
                                 "variants": {"d": {"method": "dynamic", "model": "pixel", "domain_adaptation": True}}})
        wide = config_from_dict({"features": {"arch": "wide_resnet101_2"},
                                 "variants": {"d": {"method": "dynamic", "model": "pixel"}}})
        no_da = config_from_dict({"variants": {"d": {"method": "dynamic", "model": "pixel", "domain_adaptation": False}}})
    assert run_id(base) == run_id(same)
    assert len({run_id(base), run_id(wide), run_id(no_da)}) == 3
    with pytest.raises(ConfigError, match="features.arch"):
        config_from_dict({"features": {"arch": "resnet50"}})


# --------------------------------------------------------------------------------------------
# One φ per consumer: DynAD's domain adaptation leaves RAN's feature term alone
# --------------------------------------------------------------------------------------------

SIZE = 32
DYN = {"method": "dynamic", "model": "pixel", "t_max": 40, "ddim_steps": 2, "knn_k": 3, "bins": 4, "sigma": 1.0}


def _cfg(adapt_epochs: int) -> object:
    return config_from_dict({
        "dataset": {"image_size": SIZE},
        "models": {"preset": "tiny", "base_channels": 8, "pixel": {}},
        "variants": {"kl": {"method": "kl", "model": "pixel", "top_k": 4, "feature_weight": 0.5},
                     "dyn": DYN, "dyn-no-da": {**DYN, "domain_adaptation": False},
                     "enabled": ["kl", "dyn", "dyn-no-da"]},
        "features": {"domain_adaptation_epochs": adapt_epochs, "domain_adaptation_lr": 1e-3},
    })


def _smooth(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=SIZE, mode="bilinear")
    return (0.8 * low + 0.05 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp(-1, 1)


def test_dynads_adaptation_does_not_change_rans_feature_term(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raydiff.models import checkpoint
    from raydiff.paths import fitted_dir
    from raydiff.scoring import fit as fit_module
    from raydiff.scoring import raw_components
    from raydiff.scoring.fit import fit_category, load_category_context

    on, off = _cfg(1), _cfg(0)
    assert on.variants.family("dyn-no-da") == "dyn-no-da"  # its own components (its own φ and KNN prior)
    models = checkpoint.random_models(on, 3, torch.device("cpu"), ["pixel"])
    train, test = _smooth(6, seed=1), torch.cat([_smooth(2, seed=2), _images(1, 3, SIZE, seed=3)])
    holdout, hids = train[:3], [f"train/good/{i}.png" for i in range(3)]
    ids = [f"test/x/{i}.png" for i in range(3)]
    variants = ["kl", "dyn", "dyn-no-da"]
    fit_on = fit_category(on, "c", models, train, holdout, hids, variants, batch_size=3)
    fit_off = fit_category(off, "c", models, train, holdout, hids, variants, batch_size=3)
    assert fit_on.knn is not None and fit_on.knn_adapted is not None and fit_on.adapted_state is not None
    assert fit_off.knn_adapted is None and fit_off.adapted_state is None
    assert fit_on.stats["kl"] == fit_off.stats["kl"]  # RAN's statistics: measured with the same φ

    # The scoring context as an actor loads it (fitted state saved and read back).
    monkeypatch.setattr(fit_module, "load_model", lambda folder, device, **kw: models[Path(folder).name])
    contexts = {}
    for name, cfg, fitted in (("on", on, fit_on), ("off", off, fit_off)):
        cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, root=str(tmp_path / name)))
        fitted.save(fitted_dir(cfg, "c"))
        contexts[name] = load_category_context(cfg, "c")
    ctx_on, ctx_off = contexts["on"], contexts["off"]
    adapted = ctx_on.phi(PHI_ADAPTED)
    assert adapted is not ctx_on.phi(PHI_BASE) and PHI_ADAPTED not in ctx_off.phis
    assert any(not torch.equal(a, b) for a, b in zip(adapted.state_dict().values(),
                                                     ctx_on.features.state_dict().values(), strict=True))
    for a, b in zip(ctx_on.features.state_dict().values(), ctx_off.features.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the base φ is the same with or without DynAD's adaptation

    with torch.no_grad():
        got_on = raw_components(ctx_on, test, ids, variants)[0]
        got_off = raw_components(ctx_off, test, ids, variants)[0]
    # RAN: every component bit-identical (feature term included).
    assert set(got_on["kl"]) == {"kl_t20", "kl_t200", "kl_t400", "feature"}
    for name, m in got_on["kl"].items():
        assert torch.equal(m, got_off["kl"][name]), name
    # DynAD without adaptation, scored in the same batch as the adapted instance: as if no adaptation existed.
    for name in ("l_map", "f_map"):
        assert torch.equal(got_on["dyn-no-da"][name], got_off["dyn"][name]), name
    # DynAD with adaptation does see the adapted φ.
    assert all(torch.isfinite(m).all() for fam in got_on.values() for m in fam.values())
    assert not torch.equal(got_on["dyn"]["f_map"], got_off["dyn"]["f_map"])
