"""φ: the ResNet feature extractor of DynAD (KNN prior, feature map) and RAN's feature term.

Written in plain torch with **torchvision's parameter and buffer names and shapes** (``conv1``,
``bn1``, ``layer1.0.conv1`` … ``layer2.0.downsample.0/1`` … ``fc``), so the standard
torchvision / timm state-dict files of every architecture in :data:`ARCHS` load with a strict key
and shape check — without importing torchvision or timm. (On CPU-only machines PyPI's torchvision
wheel is a CUDA build whose import fails on ``torchvision::nms``, and timm imports torchvision;
the state-dict format is the stable interface, the Python package is not needed.)

Architectures (``features.arch``; :data:`ARCHS` is the one table of their blocks and widths):
``resnet34`` (DynAD appendix 7.1 and its code's ``fe_backbone: resnet34``), ``wide_resnet101_2``
(DDAD's ``feature_extractor`` in its config.yaml, its default) and ``wide_resnet50_2`` (DDAD's
alternative). RAN's feature head predicts EfficientNet-b4 features (VandyLu/anomaly_diff
gaussian_diffusion.py ``FeatureExtractor('efficientnet')``); that network is not built here.

Conventions (DynAD appendix 7.1; reference JustinTebbe/Dynamic-noise-AD:test.py):
- input x (B,C,H,W) float in [-1, 1], C ∈ {1, 3}; mapped to [0, 1], grey repeated to 3 channels,
  ImageNet mean/std normalisation — all inside :meth:`ResNetFeatures.forward`;
- output ``{"layer2": (B,C2,H/8,W/8), "layer3": (B,C3,H/16,W/16)}`` with (C2, C3) = (128, 256)
  for resnet34 and (512, 1024) for the wide nets (:attr:`ArchSpec.channels`); layer4 and fc exist
  only so that the state dict is complete, they are never evaluated;
- batch norm always uses its running statistics (also under ``.train()``): a feature never
  depends on the other images of its batch.

One φ per consumer (:data:`PHI_BASE`, :data:`PHI_ADAPTED`): RAN's feature term always uses the
base φ (the file's weights, or the calibrated random init); DynAD's instances use the
domain-adapted copy when adaptation is on for them, so adapting DynAD's φ never changes RAN's
scores (``raydiff.scoring.dynad.phi_key``; docs/methods.md, φ).

Without a weights file (tag ``none``) φ is a seeded torchvision-style random init whose batch
norms should be calibrated on the normal training images (:func:`calibrate_batchnorm`). Domain
adaptation (DynAD section 4.3, eq. 11) is :func:`domain_adapt`; its docstring says how it follows
DynAD and DDAD.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from raydiff.config import FeaturesConfig
from raydiff.config.identity import PHI_KEYS, checked_sha256
from raydiff.errors import CheckpointError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: ``planes`` of the four stages (He et al. 2016, Table 1); a stage outputs planes · expansion channels.
PLANES: tuple[int, int, int, int] = (64, 128, 256, 512)
#: The feature maps φ returns (DynAD: blocks 2 and 3 for the map, block 2 for the KNN prior).
FEATURE_LAYERS: tuple[str, str] = ("layer2", "layer3")
#: KNN-prior features: layer2 average-pooled to this size, then flattened (reference test.py).
KNN_POOL: int = 16

WEIGHT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".safetensors")

#: The φ instances of a category (``CategoryContext.phi``): the base φ (RAN's feature term; DynAD's
#: instances without domain adaptation) and DynAD's domain-adapted copy of it.
PHI_BASE = "base"
PHI_ADAPTED = "adapted"


@dataclass(frozen=True)
class ArchSpec:
    """One φ architecture as torchvision builds it: ``ResNet(block, blocks, width_per_group=...)``."""

    #: ``basic``: two 3×3 convs (expansion 1); ``bottleneck``: 1×1, 3×3, 1×1 (expansion 4).
    block: Literal["basic", "bottleneck"]
    #: Blocks in each of the four stages.
    blocks: tuple[int, int, int, int]
    #: A bottleneck's inner width is planes · width_per_group / 64 (64: ResNet-50; 128: the wide nets).
    width_per_group: int = 64

    @property
    def expansion(self) -> int:
        return 1 if self.block == "basic" else 4

    @property
    def channels(self) -> dict[str, int]:
        """Channels of the returned maps: {"layer2": C2, "layer3": C3}."""
        return {"layer2": PLANES[1] * self.expansion, "layer3": PLANES[2] * self.expansion}

    @property
    def knn_dim(self) -> int:
        """Length of a KNN-prior feature (:func:`pooled_layer2`): C2 · 16 · 16."""
        return self.channels["layer2"] * KNN_POOL * KNN_POOL


#: ``features.arch`` → its architecture (torchvision.models.resnet: resnet34 = BasicBlock [3, 4, 6, 3];
#: wide_resnet50_2 / wide_resnet101_2 = Bottleneck [3, 4, 6, 3] / [3, 4, 23, 3], width_per_group 128).
#: The config's ``PhiArch`` lists the same names (tests/test_phi_arch.py checks both agree).
ARCHS: dict[str, ArchSpec] = {
    "resnet34": ArchSpec("basic", (3, 4, 6, 3)),
    "wide_resnet50_2": ArchSpec("bottleneck", (3, 4, 6, 3), width_per_group=128),
    "wide_resnet101_2": ArchSpec("bottleneck", (3, 4, 23, 3), width_per_group=128),
}


def arch_spec(arch: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``arch``; ValueError naming the valid ones otherwise."""
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown φ architecture {arch!r}; use one of {', '.join(ARCHS)}") from None


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def _conv3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)


def _downsample(inplanes: int, out: int, stride: int) -> nn.Sequential | None:
    """torchvision's shortcut projection (1×1 conv + BN) where the stride or the width changes."""
    if stride == 1 and inplanes == out:
        return None
    return nn.Sequential(_conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3×3 convs + identity (or 1×1-conv ``downsample``) shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, width_per_group: int = 64) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (v1.5: the stride on the 3×3 conv): 1×1 → 3×3 → 1×1 to
    planes·4 channels, + identity (or ``downsample``) shortcut; inner width planes·width_per_group/64."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, width_per_group: int = 64) -> None:
        super().__init__()
        width = planes * width_per_group // 64
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _stage(spec: ArchSpec, inplanes: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    """One stage (``layerN``) of ``blocks`` blocks, the first with ``stride``; → (stage, its output channels)."""
    block = BasicBlock if spec.block == "basic" else Bottleneck
    out = planes * spec.expansion
    layers = [block(inplanes, planes, stride, spec.width_per_group)]
    layers += [block(out, planes, 1, spec.width_per_group) for _ in range(blocks - 1)]
    return nn.Sequential(*layers), out


class ResNetFeatures(nn.Module):
    """A torchvision ResNet (``arch``, a key of :data:`ARCHS`) with its state-dict layout,
    returning the layer2 and layer3 maps.

    ``forward(x)``: x (B,C,H,W) float in [-1, 1], C ∈ {1, 3} → ``{"layer2": (B,C2,⌈H/8⌉,⌈W/8⌉),
    "layer3": (B,C3,⌈H/16⌉,⌈W/16⌉)}`` float32 (same dtype/device as the weights), (C2, C3) =
    ``self.channels``. Deterministic: batch norm always runs on its running statistics.
    """

    def __init__(self, arch: str = "resnet34") -> None:
        super().__init__()
        spec = arch_spec(arch)
        self.arch = arch
        self.channels = spec.channels
        self.knn_dim = spec.knn_dim
        self.conv1 = nn.Conv2d(3, PLANES[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(PLANES[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = PLANES[0]
        self.layer1, inplanes = _stage(spec, inplanes, PLANES[0], spec.blocks[0], stride=1)
        self.layer2, inplanes = _stage(spec, inplanes, PLANES[1], spec.blocks[1], stride=2)
        self.layer3, inplanes = _stage(spec, inplanes, PLANES[2], spec.blocks[2], stride=2)
        self.layer4, inplanes = _stage(spec, inplanes, PLANES[3], spec.blocks[3], stride=2)  # unused; keeps the state dict whole
        self.fc = nn.Linear(inplanes, 1000)  # unused; keeps the state dict whole
        # Not in the state dict (persistent=False): the files hold weights only.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> ResNetFeatures:
        """Switch train mode but keep every BatchNorm on its running statistics (see module doc)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] (B,1|3,H,W) → ImageNet-normalised (B,3,H,W)."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"φ expects images (B,C,H,W) with C in (1, 3), got shape {tuple(x.shape)}")
        x = (x.to(self.mean.dtype) + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.maxpool(self.relu(self.bn1(self.conv1(self.normalise(x)))))
        l2 = self.layer2(self.layer1(h))
        return {"layer2": l2, "layer3": self.layer3(l2)}


def init_random(model: ResNetFeatures, seed: int) -> ResNetFeatures:
    """torchvision's initialisation, drawn from a generator seeded with ``seed`` (global RNG untouched).

    Convs: Kaiming normal (fan_out, ReLU); BN: weight 1, bias 0, running mean 0 / var 1;
    fc: PyTorch's Linear default (Kaiming uniform a=√5, bias U(±1/√fan_in)).
    """
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=5**0.5, generator=g)
                bound = 1 / m.in_features**0.5
                nn.init.uniform_(m.bias, -bound, bound, generator=g)
    return model


# --------------------------------------------------------------------------------------------
# Loading torchvision / timm state dicts
# --------------------------------------------------------------------------------------------


def expected_state_shapes(arch: str = "resnet34") -> dict[str, tuple[int, ...]]:
    """Every state-dict key of :class:`ResNetFeatures` (``arch``) → shape (built on the meta device, free)."""
    with torch.device("meta"):
        model = ResNetFeatures(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _optional(key: str) -> bool:
    """Keys a file may omit: the unused classifier, and BN counters older torchvision files lack."""
    return key.startswith("fc.") or key.endswith("num_batches_tracked")


def _read_tensors(path: Path, arch: str) -> Mapping[str, object]:
    fix_format = (
        f"save `model.state_dict()` of a torchvision/timm {arch} with torch.save (.pth/.pt) "
        "or safetensors.torch.save_file (.safetensors)."
    )
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(path, f"not a readable safetensors file ({err}).", fix_format) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for pickled modules, RuntimeError for corrupt zips
        raise CheckpointError(
            path,
            f"torch.load(weights_only=True) cannot read it ({type(err).__name__}: {str(err).splitlines()[0]}).",
            fix_format + " Whole pickled models are refused on purpose (no arbitrary code on load).",
        ) from None
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict.", fix_format)
    return obj


def _mismatch(state: Mapping[str, torch.Tensor], arch: str) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrongly shaped) keys of ``state`` against ``arch``'s layout."""
    expected = expected_state_shapes(arch)
    missing = sorted(k for k in expected if k not in state and not _optional(k))
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    )
    return missing, unexpected, wrong


def load_weights(path: str | Path, arch: str = "resnet34") -> dict[str, torch.Tensor]:
    """Read a torchvision/timm state dict of ``arch`` (a key of :data:`ARCHS`) and check it
    strictly against our layout: every key and every shape.

    ``.pth``/``.pt``: ``torch.load(weights_only=True)``, a bare state dict or one wrapped as
    ``{"state_dict": ...}`` / ``{"model": ...}``; ``.safetensors``: ``safetensors.torch.load_file``.
    ``module.`` prefixes (DataParallel) are stripped; ``fc.*`` and ``num_batches_tracked`` may be
    absent. Returns CPU tensors (floating ones as float32). Raises :class:`CheckpointError` naming
    the file, the architecture asked for, the missing / unexpected / wrongly shaped keys, the
    architecture the file does fit (when it is one of :data:`ARCHS`) and the fix.
    """
    arch_spec(arch)
    path = Path(path)
    fix_config = (f"set features.weights to a torchvision/timm {arch} state dict (features.arch: {arch}), "
                  "or to null for a random init.")
    if not path.is_file():
        raise CheckpointError(path, f"{arch} weights file not found.", fix_config)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(
            path, f"unknown weights format {path.suffix!r} (expected one of {WEIGHT_SUFFIXES}).", fix_config
        )
    raw = _read_tensors(path, arch)
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(path, f"entry {key!r} is a {type(value).__name__}, not a tensor.", fix_config)
        key = str(key).removeprefix("module.")
        state[key] = value.float() if value.is_floating_point() else value

    missing, unexpected, wrong = _mismatch(state, arch)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if keys:
                more = f" … (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{more}")
        fits = next((a for a in ARCHS if a != arch and not any(_mismatch(state, a))), None)
        problem = f"not a {arch} state dict in torchvision/timm layout (" + "; ".join(parts) + ")."
        if fits:
            problem += f" It is a {fits} state dict."
            fix = f"set features.arch: {fits} to use this file, or point features.weights at {arch} weights."
        else:
            fix = (f"use the {arch} weights of torchvision ({arch}-*.pth) or timm ({arch} model.safetensors), "
                   f"or set features.arch to the file's architecture (one of {', '.join(ARCHS)}).")
        raise CheckpointError(path, problem, fix)
    return state


def build_features(
    features_cfg: FeaturesConfig, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[ResNetFeatures, str]:
    """The base φ of the run (``features.arch``): ImageNet weights from the configured local file
    (``features.weights``), else a seeded random init.

    Returns ``(module, tag)``: the module in eval mode with ``requires_grad`` off, on ``device``;
    tag ``"sha256:<the file's digest>"`` or ``"none"`` (random: docs/methods.md, dynamic). The tag
    names the bytes only: what they are (ImageNet or not) is the report's label, checked against
    ``features.expected_sha256`` (``raydiff.report_tables.weights_label``). The file is refused
    (ConfigError) when its digest differs from ``features.expected_sha256`` or from the
    ``features.weights_sha256`` recorded when the config was loaded. A random φ should then get
    :func:`calibrate_batchnorm` on the training images (and, for DynAD's copy, optionally
    :func:`domain_adapt`) before use.
    """
    model = ResNetFeatures(features_cfg.arch)
    if features_cfg.weights:
        path = Path(features_cfg.weights)
        sha = None
        if path.is_file():  # (a missing file: load_weights says so)
            sha = checked_sha256(str(path), False, PHI_KEYS, features_cfg.weights_sha256, features_cfg.expected_sha256)
        state = load_weights(path, features_cfg.arch)
        init_random(model, seed)  # fills fc when the file has no classifier
        result = model.load_state_dict(state, strict=False)
        assert not result.unexpected_keys and all(_optional(k) for k in result.missing_keys), result
        tag = f"sha256:{sha}"
    else:
        init_random(model, seed)
        tag = "none"
    model.requires_grad_(False)
    return model.to(device).eval(), tag


# --------------------------------------------------------------------------------------------
# Feature-map helpers shared by the variants
# --------------------------------------------------------------------------------------------


def cosine_distance(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """1 - cos along channels: (B,C,h,w) × 2 → (B,h,w) in [0, 2] (DynAD eq. 11 before the GAP)."""
    return 1 - F.cosine_similarity(fa, fb, dim=1)


def cosine_distance_map(fa: Mapping[str, torch.Tensor], fb: Mapping[str, torch.Tensor], size: int) -> torch.Tensor:
    """f_map = Σ over the layers of ``fa`` of (1 - cos_c(fa, fb)), each bilinearly upsampled.

    fa, fb: ``{layer: (B,C_l,h_l,w_l)}`` with the same keys. Returns (B,size,size) float, ≥ 0,
    higher = more anomalous (DynAD section 4.2; align_corners=False as ``postprocess.upsample``).
    """
    if set(fa) != set(fb):
        raise ValueError(f"feature dicts differ in layers: {sorted(fa)} vs {sorted(fb)}")
    total: torch.Tensor | None = None
    for name in fa:
        d = cosine_distance(fa[name], fb[name]).unsqueeze(1)
        d = F.interpolate(d, size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
        total = d if total is None else total + d
    if total is None:
        raise ValueError("no feature layers given")
    return total


def pooled_layer2(layer2: torch.Tensor) -> torch.Tensor:
    """KNN-prior feature: layer2 (B,C2,h,w) → adaptive-avg-pooled 16×16 → (B, C2·16·16) float32.

    At h < 16 (images under 128 px) adaptive pooling repeats cells (an upsampling).
    """
    return F.adaptive_avg_pool2d(layer2, KNN_POOL).flatten(1).float()


@torch.no_grad()
def knn_features(features: ResNetFeatures, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """:func:`pooled_layer2` of φ(images): images (N,C,H,W) in [-1, 1] → (N, ``features.knn_dim``)
    float32 on CPU (32768 for resnet34, 131072 for the wide nets)."""
    device = next(features.parameters()).device
    out = [
        pooled_layer2(features(images[i : i + batch_size].to(device))["layer2"]).cpu()
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, features.knn_dim)


# --------------------------------------------------------------------------------------------
# Batch-norm statistics for a randomly initialised φ
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def calibrate_batchnorm(features: ResNetFeatures, images: torch.Tensor, batch_size: int = 32) -> ResNetFeatures:
    """A copy of φ whose BatchNorm running statistics are measured on ``images`` (N,C,H,W) in [-1, 1].

    For the random-init φ (weights ``none``): torchvision's init leaves every BN at mean 0 / var 1,
    so in eval mode BN is the identity, activations grow block after block and 1 - cos between an
    image and a blurred copy of it is ~0.05 — f_map and the KNN prior barely see the image. One
    pass over the normal training images in batch-statistics mode (cumulative average,
    ``momentum=None``, the same recipe as ``torch.optim.swa_utils.update_bn``) fixes the scale;
    weights are unchanged. Deterministic for given images and batch size. Not needed (and not
    used) with ImageNet weights, whose statistics are kept.
    """
    calibrated = copy.deepcopy(features)
    device = next(calibrated.parameters()).device
    norms = [m for m in calibrated.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the batches
        bn.train()
    for start in range(0, images.shape[0], batch_size):
        calibrated(images[start : start + batch_size].to(device, torch.float32))
    for bn in norms:
        bn.momentum = 0.1
    return calibrated.eval()


# --------------------------------------------------------------------------------------------
# Domain adaptation (DynAD section 4.3)
# --------------------------------------------------------------------------------------------


def adaptation_loss(
    target: Mapping[str, torch.Tensor],
    phi_rec: Mapping[str, torch.Tensor],
    phi_img: Mapping[str, torch.Tensor],
    anchor: float,
) -> torch.Tensor:
    """Σ_j GAP(1 - cos_c(φ0_j(x), φ_j(x̂))) + anchor · Σ_j GAP(1 - cos_c(φ0_j(x), φ_j(x))).

    DynAD eq. 11 with the frozen original φ0 as the target (first term) plus DDAD's anchor of the
    adapted net to φ0 on the clean image (second term). GAP = mean over positions and the batch.
    """
    loss = torch.zeros((), device=next(iter(target.values())).device)
    for name in target:
        loss = loss + cosine_distance(target[name], phi_rec[name]).mean()
        if anchor:
            loss = loss + anchor * cosine_distance(target[name], phi_img[name]).mean()
    return loss


def domain_adapt(
    features: ResNetFeatures,
    images: torch.Tensor,
    reconstruct: Callable[[torch.Tensor], torch.Tensor],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    anchor: float = 0.1,
    losses: list[float] | None = None,
) -> ResNetFeatures:
    """Fine-tune a copy of φ so that reconstructions of normal images look like their originals.

    images (N,C,H,W) in [-1, 1] (normal training images); ``reconstruct(x) -> x̂`` same shape and
    range (the caller's diffusion reconstruction at a random level, DynAD's ``DA_rnd_step``; run
    under no_grad here). AdamW(lr) over ``epochs`` passes in a seeded random order, minimising
    :func:`adaptation_loss` over layer2 and layer3. Returns the adapted copy (eval mode,
    ``requires_grad`` off); ``features`` itself is unchanged. Per-step losses are appended to
    ``losses`` when given.

    How this follows the references (they differ; this is our documented choice):
    - DynAD's code (feature_extractor.py ``Domain_adaptation``) trains ONE net on
      1 - cos(φ(x̂), φ(x)), both sides trainable, with nothing that stops features collapsing to
      a constant (which makes the loss 0 and f_map useless). DDAD (feature_extractor.py
      ``domain_adaptation``) adds two anchors to a frozen pretrained copy, weight DLlambda
      (0.1 MVTec, 0.01 VisA). We keep the frozen original φ0 as the target of the reconstruction
      term (so no collapse is possible) and one DDAD-style anchor φ(x) ≈ φ0(x) so that the
      adapted net still describes clean images as φ0 does (f_map compares φ(x0) with φ(x̂0)).
    - Cosine along channels, averaged over positions (eq. 11's GAP, the same distance as f_map);
      both reference codes flatten each whole map into one vector instead.
    - BatchNorm stays on its running statistics (the references train it in batch mode): small
      batches of reconstructions would otherwise rewrite ImageNet statistics.
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    device = next(features.parameters()).device
    frozen = features.eval()
    adapted = copy.deepcopy(features).requires_grad_(True).train()
    optimiser = torch.optim.AdamW(adapted.parameters(), lr=lr)
    order_rng = np.random.default_rng(seed)
    n = images.shape[0]
    for _ in range(epochs):
        order = torch.as_tensor(order_rng.permutation(n))
        for start in range(0, n, batch_size):
            x = images[order[start : start + batch_size]].to(device, torch.float32)
            with torch.no_grad():
                x_hat = reconstruct(x).to(device, torch.float32)
                target = frozen(x)
            loss = adaptation_loss(target, adapted(x_hat), adapted(x), anchor)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if losses is not None:
                losses.append(float(loss.detach()))
    return adapted.requires_grad_(False).eval()
