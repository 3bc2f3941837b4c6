"""torchvision's ResNet state-dict layouts, written out from ``torchvision.models.resnet`` (not
imported: there is no CPU wheel of torchvision on every platform): the independent reference the
φ tests compare raydiff's ``ResNetFeatures`` with (tests/test_features.py, tests/test_phi_arch.py)."""

from __future__ import annotations

#: torchvision's ``ResNet*_Weights.IMAGENET1K_V1.meta["num_params"]``.
TORCHVISION_PARAMS = {"resnet34": 21_797_672, "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696}
#: torchvision.models: (block, layers, width_per_group) of each architecture.
TORCHVISION_ARCHS = {"resnet34": ("basic", [3, 4, 6, 3], 64), "wide_resnet50_2": ("bottleneck", [3, 4, 6, 3], 128),
                     "wide_resnet101_2": ("bottleneck", [3, 4, 23, 3], 128)}


def torchvision_layout(arch: str) -> list[tuple[str, tuple[int, ...]]]:
    """torchvision's state-dict keys and shapes for ``arch``, from ``ResNet._make_layer``: a stem
    conv 7×7/2 + BN; per stage, blocks (BasicBlock: conv3x3, bn, conv3x3, bn; Bottleneck: conv1x1
    to width = planes·width_per_group/64, bn, conv3x3 (stride), bn, conv1x1 to planes·4, bn) with a
    conv1x1 + BN ``downsample`` where the stride or the width changes; fc to 1000 classes."""
    block, layers, width_per_group = TORCHVISION_ARCHS[arch]
    expansion = 1 if block == "basic" else 4
    out: list[tuple[str, tuple[int, ...]]] = []

    def bn(prefix: str, c: int) -> None:
        out.extend([(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
                    (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())])

    out.append(("conv1.weight", (64, 3, 7, 7)))
    bn("bn1", 64)
    inplanes = 64
    for stage, (blocks, planes) in enumerate(zip(layers, [64, 128, 256, 512]), start=1):
        for i in range(blocks):
            stride = 2 if (i == 0 and stage > 1) else 1
            p = f"layer{stage}.{i}"
            if block == "basic":
                out.append((f"{p}.conv1.weight", (planes, inplanes, 3, 3)))
                bn(f"{p}.bn1", planes)
                out.append((f"{p}.conv2.weight", (planes, planes, 3, 3)))
                bn(f"{p}.bn2", planes)
            else:
                width = int(planes * (width_per_group / 64.0))
                out.append((f"{p}.conv1.weight", (width, inplanes, 1, 1)))
                bn(f"{p}.bn1", width)
                out.append((f"{p}.conv2.weight", (width, width, 3, 3)))
                bn(f"{p}.bn2", width)
                out.append((f"{p}.conv3.weight", (planes * expansion, width, 1, 1)))
                bn(f"{p}.bn3", planes * expansion)
            if stride != 1 or inplanes != planes * expansion:
                out.append((f"{p}.downsample.0.weight", (planes * expansion, inplanes, 1, 1)))
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    out += [("fc.weight", (1000, 512 * expansion)), ("fc.bias", (1000,))]
    return out
