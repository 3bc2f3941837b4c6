"""Stand-in following Dynamic-noise-AD anomaly_map.py's interface (see ../README.md)."""
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _imagenet(x):
    return ((x + 1) / 2 - MEAN) / STD


def color_distance(image1, image2, config, out_size=256):
    if not config.model.latent:
        image1, image2 = _imagenet(image1), _imagenet(image2)
    d = (image1 - image2).abs().mean(dim=1, keepdim=True)
    return F.interpolate(d, size=out_size, mode="bilinear", align_corners=True) if config.model.latent else d


def feature_distance_new(output, target, FE, config):
    fa, fb = FE(_imagenet(target)), FE(_imagenet(output))
    size = config.data.image_size
    total = torch.zeros(fa[0].shape[0], 1, size, size)
    for i, (a, b) in enumerate(zip(fa, fb)):
        if i in config.model.anomap_excluded_layers:
            continue
        d = (1 - F.cosine_similarity(a, b)).unsqueeze(1)
        total += F.interpolate(d, size=size, mode="bilinear", align_corners=True)
    return total


def scale_values_between_zero_and_one(tensors):
    lo = min(float(t.min()) for t in tensors)
    hi = max(float(t.max()) for t in tensors)
    return [(t - lo) / (hi - lo) for t in tensors]


def heatmap_latent(l1_latent, cos_list, config):
    lam = config.model.anomap_weighting
    out = []
    for l1, cos in zip(l1_latent, cos_list):
        m = gaussian_blur2d(lam * l1 + (1 - lam) * cos, kernel_size=(33, 33), sigma=(4.0, 4.0))
        out.append(m.sum(dim=1, keepdim=True))
    return out
