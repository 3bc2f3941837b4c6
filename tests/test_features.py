"""raydiff.features: torchvision state-dict layout, weight files, outputs, feature maps, adaptation."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision_layouts import TORCHVISION_PARAMS, torchvision_layout

from raydiff.config import FeaturesConfig
from raydiff.errors import CheckpointError
from raydiff.features import (
    ResNetFeatures,
    adaptation_loss,
    build_features,
    calibrate_batchnorm,
    cosine_distance_map,
    domain_adapt,
    init_random,
    knn_features,
    load_weights,
)


@pytest.fixture(scope="module")
def model() -> ResNetFeatures:
    m, tag = build_features(FeaturesConfig(), seed=3)
    assert tag == "none"
    return m


@pytest.fixture(scope="module")
def other_state() -> dict[str, torch.Tensor]:
    """A state dict different from ``model`` (another seed, non-trivial BN statistics)."""
    m = init_random(ResNetFeatures(), seed=11)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, buf in m.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return {k: v.clone() for k, v in m.state_dict().items()}


def _images(b: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------------------------
# Layout and loading
# --------------------------------------------------------------------------------------------


def test_state_dict_layout_is_torchvisions(model: ResNetFeatures) -> None:
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == torchvision_layout("resnet34")  # same names, shapes and order
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS["resnet34"]


def _same_outputs(a: ResNetFeatures, state: dict[str, torch.Tensor]) -> None:
    ref = ResNetFeatures()
    ref.load_state_dict(state, strict=True)
    x = _images(2, 3, 64)
    with torch.no_grad():
        out, expect = a(x), ref(x)
    for k in ("layer2", "layer3"):
        torch.testing.assert_close(out[k], expect[k], rtol=0, atol=0)


def test_pth_round_trip(tmp_path, other_state) -> None:
    path = tmp_path / "resnet34-test.pth"
    torch.save(other_state, path)
    m, tag = build_features(FeaturesConfig(weights=str(path)))
    assert tag == f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"  # the bytes, never a claim from the name
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, other_state[k], rtol=0, atol=0)
    _same_outputs(m, other_state)


def test_wrapped_prefixed_and_classifierless_pth(tmp_path, other_state) -> None:
    # DataParallel 'module.' prefixes inside {'state_dict': ...}, no fc, no num_batches_tracked
    # (torchvision's older resnet34-333f7ec4.pth has no BN counters).
    trimmed = {f"module.{k}": v for k, v in other_state.items() if not k.startswith("fc.") and "num_batches" not in k}
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": trimmed, "epoch": 3}, path)
    state = load_weights(path)
    assert set(state) == {k.removeprefix("module.") for k in trimmed}
    m, _ = build_features(FeaturesConfig(weights=str(path)))
    _same_outputs(m, {**other_state, "fc.weight": m.fc.weight, "fc.bias": m.fc.bias})


def test_safetensors_round_trip(tmp_path, other_state) -> None:
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in other_state.items()}, str(path))
    m, tag = build_features(FeaturesConfig(weights=str(path)))
    assert tag == f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    _same_outputs(m, other_state)


def test_half_precision_file_is_read_as_float32(tmp_path, other_state) -> None:
    path = tmp_path / "half.safetensors"
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in other_state.items()}, str(path))
    state = load_weights(path)
    assert state["conv1.weight"].dtype == torch.float32
    torch.testing.assert_close(state["conv1.weight"], other_state["conv1.weight"].half().float(), rtol=0, atol=0)


def _message(err: pytest.ExceptionInfo[CheckpointError]) -> str:
    return str(err.value)


def test_missing_and_unexpected_keys_are_named(tmp_path, other_state) -> None:
    bad = dict(other_state)
    del bad["layer3.0.conv1.weight"]
    bad["layer1.3.conv1.weight"] = torch.zeros(64, 64, 3, 3)  # a resnet-50-ish extra block
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointError) as err:
        build_features(FeaturesConfig(weights=str(path)))
    msg = _message(err)
    assert str(path) in msg and "Fix:" in msg
    assert "1 missing keys: layer3.0.conv1.weight" in msg
    assert "1 unexpected keys: layer1.3.conv1.weight" in msg


def test_wrong_shapes_are_named(tmp_path, other_state) -> None:
    bad = dict(other_state)
    bad["layer2.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)  # resnet-18/34 confusion at width
    path = tmp_path / "shape.safetensors"
    save_file({k: v.contiguous() for k, v in bad.items()}, str(path))
    expect = r"layer2\.0\.conv1\.weight \(64, 64, 3, 3\) \(expected \(128, 64, 3, 3\)\)"
    with pytest.raises(CheckpointError, match=expect):
        load_weights(path)


def test_foreign_architecture_lists_first_keys_only(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({f"blocks.{i}.weight": torch.zeros(3) for i in range(9)}, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(path)
    msg = _message(err)
    assert "missing keys: bn1.bias" in msg and "9 unexpected keys" in msg and "more)" in msg


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("absent.pth", None, "not found"),
        ("weights.bin", b"", "unknown weights format"),
        ("corrupt.pth", b"not a zip", "cannot read"),
        ("corrupt.safetensors", b"\x00" * 16, "not a readable safetensors"),
    ],
)
def test_unreadable_files(tmp_path, name: str, content: bytes | None, needle: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=needle) as err:
        load_weights(path)
    assert name in _message(err) and "Fix:" in _message(err)


def test_pickled_module_is_refused(tmp_path) -> None:
    path = tmp_path / "whole.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a module, not a state dict
    with pytest.raises(CheckpointError, match="weights_only"):
        load_weights(path)


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes(model: ResNetFeatures, size: int, channels: int) -> None:
    with torch.no_grad():
        out = model(_images(2, channels, size))
    assert set(out) == {"layer2", "layer3"}
    assert out["layer2"].shape == (2, 128, size // 8, size // 8) and out["layer2"].dtype == torch.float32
    assert out["layer3"].shape == (2, 256, size // 16, size // 16)


def test_grey_equals_repeated_rgb(model: ResNetFeatures) -> None:
    grey = _images(2, 1, 64)
    with torch.no_grad():
        a, b = model(grey), model(grey.repeat(1, 3, 1, 1))
    torch.testing.assert_close(a["layer3"], b["layer3"], rtol=0, atol=0)


def test_imagenet_normalisation(model: ResNetFeatures) -> None:
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    got = model.normalise(x)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expect = (torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(got, expect)
    with pytest.raises(ValueError, match="C in"):
        model(torch.zeros(1, 2, 64, 64))


def test_deterministic_and_batch_independent(model: ResNetFeatures) -> None:
    x = _images(4, 3, 64, seed=1)
    with torch.no_grad():
        first = model(x)["layer3"]
        again = model(x)["layer3"]
        single = model(x[2:3])["layer3"]
        model.train()  # BatchNorm must keep its running statistics
        in_train = model(x[2:3])["layer3"]
        model.eval()
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    # Same values up to float summation order (random-init layer3 values reach ~100).
    torch.testing.assert_close(first[2:3], single, rtol=1e-4, atol=1e-5 * float(first.abs().max()))
    torch.testing.assert_close(in_train, single, rtol=0, atol=0)
    # The seeded random init is reproducible.
    again_model, _ = build_features(FeaturesConfig(), seed=3)
    for (k, v), w in zip(model.state_dict().items(), again_model.state_dict().values()):
        assert torch.equal(v, w), k


# --------------------------------------------------------------------------------------------
# Feature-map helpers
# --------------------------------------------------------------------------------------------


def test_cosine_distance_map_closed_forms(model: ResNetFeatures) -> None:
    with torch.no_grad():
        fa = model(_images(2, 3, 64))
    zero = cosine_distance_map(fa, fa, 64)
    assert zero.shape == (2, 64, 64)
    torch.testing.assert_close(zero, torch.zeros_like(zero), rtol=0, atol=1e-5)
    # Opposite vectors: 1 - cos = 2 per layer, two layers → 4 everywhere.
    opposite = cosine_distance_map(fa, {k: -v for k, v in fa.items()}, 64)
    torch.testing.assert_close(opposite, torch.full_like(opposite, 4.0), rtol=0, atol=1e-5)


def test_cosine_distance_map_against_manual(model: ResNetFeatures) -> None:
    g = torch.Generator().manual_seed(2)
    fa = {"layer2": torch.randn(1, 4, 2, 2, generator=g)}
    fb = {"layer2": torch.randn(1, 4, 2, 2, generator=g)}
    a, b = fa["layer2"][0], fb["layer2"][0]
    manual = torch.empty(2, 2)
    for i in range(2):
        for j in range(2):
            manual[i, j] = 1 - torch.dot(a[:, i, j], b[:, i, j]) / (a[:, i, j].norm() * b[:, i, j].norm())
    got = cosine_distance_map(fa, fb, 2)  # no resampling at the same size
    torch.testing.assert_close(got[0], manual)
    up = cosine_distance_map(fa, fb, 8)
    torch.testing.assert_close(up, F.interpolate(manual[None, None], size=(8, 8), mode="bilinear")[:, 0])


def test_knn_features(model: ResNetFeatures) -> None:
    x = _images(2, 3, 256, seed=4)
    feats = knn_features(model, x, batch_size=1)
    assert feats.shape == (2, 128 * 16 * 16) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    with torch.no_grad():
        l2 = model(x)["layer2"]  # 32×32 → 16×16 average pooling = mean of 2×2 cells
    expect = l2.view(2, 128, 16, 2, 16, 2).mean(dim=(3, 5)).flatten(1)
    torch.testing.assert_close(feats, expect, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Batch-norm calibration and domain adaptation
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(model: ResNetFeatures) -> ResNetFeatures:
    return calibrate_batchnorm(model, _images(16, 3, 32, seed=9), batch_size=8)


def test_calibrate_batchnorm_measures_statistics(model: ResNetFeatures) -> None:
    x = _images(6, 3, 64, seed=8)
    cal = calibrate_batchnorm(model, x, batch_size=6)  # one batch: running stats = batch moments
    with torch.no_grad():
        a = model.conv1(model.normalise(x))
    torch.testing.assert_close(cal.bn1.running_mean, a.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cal.bn1.running_var, a.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    assert torch.equal(cal.conv1.weight, model.conv1.weight) and not cal.training
    assert torch.equal(model.bn1.running_mean, torch.zeros(64))  # the input module is untouched
    with torch.no_grad():
        out = cal(x)["layer3"]
    assert 0.2 < float(out.std()) < 5  # normalised scale (uncalibrated random init: ~15)


# --------------------------------------------------------------------------------------------
# Domain adaptation
# --------------------------------------------------------------------------------------------


def _blur_reconstruct(x: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for a diffusion reconstruction: a 5×5 box blur."""
    return F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, stride=1)


def _eval_loss(adapted: ResNetFeatures, frozen: ResNetFeatures, x: torch.Tensor, anchor: float) -> float:
    with torch.no_grad():
        return float(adaptation_loss(frozen(x), adapted(_blur_reconstruct(x)), adapted(x), anchor))


def test_domain_adapt_reduces_its_loss(calibrated: ResNetFeatures) -> None:
    x = _images(8, 3, 32, seed=6)
    before = {k: v.clone() for k, v in calibrated.state_dict().items()}
    losses: list[float] = []
    adapted = domain_adapt(calibrated, x, _blur_reconstruct, epochs=2, lr=1e-4, batch_size=4, seed=0, losses=losses)
    assert len(losses) == 4
    assert adapted is not calibrated and not adapted.training
    assert not any(p.requires_grad for p in adapted.parameters())
    for k, v in calibrated.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k]), k
    start, end = _eval_loss(calibrated, calibrated, x, 0.1), _eval_loss(adapted, calibrated, x, 0.1)
    assert end < 0.9 * start, (start, end)
    # BatchNorm running statistics were not rewritten.
    assert torch.equal(adapted.layer2[0].bn1.running_mean, calibrated.layer2[0].bn1.running_mean)


def test_domain_adapt_is_seeded(calibrated: ResNetFeatures) -> None:
    x = _images(4, 1, 32, seed=7)
    a = domain_adapt(calibrated, x, _blur_reconstruct, epochs=1, lr=1e-4, batch_size=2, seed=1)
    b = domain_adapt(calibrated, x, _blur_reconstruct, epochs=1, lr=1e-4, batch_size=2, seed=1)
    changed = False
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
        changed |= not torch.equal(v, calibrated.state_dict()[k])
    assert changed
