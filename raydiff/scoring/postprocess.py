"""Post-processing shared by the variants: normalisation, smoothing, image scores.

All functions take and return torch tensors; maps are (B, H, W) float32, higher = more anomalous.
None of them takes a statistic over the batch: each image's output depends on that image alone.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from raydiff.config import ImageScore, PostProcessConfig, Smoothing


#: Rings of pixels by distance to the image edge that get their own normalisation statistics:
#: 0, 1, 2 px from the edge, and everything further in (``ring_index``).
RINGS = 4

#: (mean, std) of one component: two floats (one for every pixel), or two sequences of ``RINGS``
#: values, one per ring (what ``raydiff.scoring.fit`` computes).
Stats = tuple[float, float] | tuple[tuple[float, ...], tuple[float, ...]]


def ring_index(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) long: each pixel's distance to the nearest edge, clipped to ``RINGS - 1``."""
    y = torch.arange(h, device=device).view(-1, 1)
    x = torch.arange(w, device=device).view(1, -1)
    d = torch.minimum(torch.minimum(y, h - 1 - y), torch.minimum(x, w - 1 - x))
    return d.clamp(max=RINGS - 1)


def normalise(raw: torch.Tensor, stats: Stats | None) -> torch.Tensor:
    """(raw - mean) / std with statistics of held-out normal images (identity when ``stats`` is None).

    Per-ring statistics (one mean/std per distance to the edge) take out what the position does to
    a normal pixel's score: a network predicts a pixel next to the image edge from half a
    neighbourhood, so normal edge pixels have wider error distributions than inner ones (at 32 px,
    no-diffusion's normal-pixel score std is 1.8 on the 1-px border vs 0.95 inside), and with one
    global mean/std the maxima of normal images land on the border (issue 17). The papers' code
    uses no position-dependent statistics; on their MVTec objects the border is mostly background.
    """
    if stats is None:
        return raw
    mean, std = stats
    if isinstance(mean, (int, float)) and isinstance(std, (int, float)):
        return (raw - mean) / max(float(std), 1e-12)
    ring = ring_index(raw.shape[-2], raw.shape[-1], raw.device)
    m = torch.tensor(mean, dtype=raw.dtype, device=raw.device)[ring]
    s = torch.tensor(std, dtype=raw.dtype, device=raw.device).clamp_min(1e-12)[ring]
    return (raw - m) / s


def gaussian_kernel1d(sigma: float, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius 4σ (scipy.ndimage.gaussian_filter's default truncate)."""
    radius = max(int(4.0 * sigma + 0.5), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def smooth(maps: torch.Tensor, kind: Smoothing, size: int, sigma: float) -> torch.Tensor:
    """Mean filter (size×size) or Gaussian (σ) with reflected borders; (B,H,W) → (B,H,W)."""
    if kind == "none" or (kind == "gaussian" and sigma <= 0) or (kind == "mean" and size <= 1):
        return maps
    x = maps.unsqueeze(1)
    if kind == "mean":
        pad_lo, pad_hi = (size - 1) // 2, size // 2
        x = F.pad(x, (pad_lo, pad_hi, pad_lo, pad_hi), mode="reflect" if min(maps.shape[-2:]) > size else "replicate")
        return F.avg_pool2d(x, size, stride=1).squeeze(1)
    k = gaussian_kernel1d(sigma, maps.device)
    r = (k.numel() - 1) // 2
    mode = "reflect" if min(maps.shape[-2:]) > r else "replicate"
    x = F.pad(x, (r, r, 0, 0), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, r, r), mode=mode)
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.squeeze(1)


def image_score(maps: torch.Tensor, rule: ImageScore, pool_size: int = 0, top_k: int = 64) -> torch.Tensor:
    """Image scores (B,) from maps (B,H,W).

    ``max``; ``mean``; ``topk-mean`` (mean of the top-k pixels, RAN); ``avgpool-max`` (max of an
    average pooling with kernel ``pool_size``, 0 = round(H/25) as in Kashihara).
    """
    flat = maps.flatten(1)
    if rule == "max":
        return flat.max(dim=1).values
    if rule == "mean":
        return flat.mean(dim=1)
    if rule == "topk-mean":
        return flat.topk(min(top_k, flat.shape[1]), dim=1).values.mean(dim=1)
    if rule == "avgpool-max":
        k = pool_size or max(1, round(maps.shape[-1] / 25))
        pooled = F.avg_pool2d(maps.unsqueeze(1), k, stride=1)
        return pooled.flatten(1).max(dim=1).values
    raise ValueError(f"unknown image score rule {rule!r}")


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (B,H,W) or (B,C,H,W) maps to size×size (no-op when already that size)."""
    squeeze = maps.dim() == 3
    x = maps.unsqueeze(1) if squeeze else maps
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.squeeze(1) if squeeze else x


def finish(
    maps: torch.Tensor, params: PostProcessConfig, final: Stats | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a variant's configured smoothing, the final per-ring standardisation (``final``, from
    the held-out images; see ``normalise``) and its image-score rule: → (maps (B,H,W), scores (B,))."""
    smoothed = smooth(maps, params.smoothing, params.smoothing_size, params.sigma)
    smoothed = normalise(smoothed, final)
    scores = image_score(smoothed, params.image_score, params.pool_size, params.top_k)
    return smoothed, scores
