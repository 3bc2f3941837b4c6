"""DynAD (JustinTebbe/Dynamic-noise-AD) against ``raydiff.scoring.dynad``, in pixel space.

What is fed to both sides: raydiff's Gaussian pixel model (ε only; the reference's
``model(x, t)`` convention, ``t`` a float tensor of steps), φ = raydiff's ResNet-34 wrapped as
the reference's feature extractor (``FE(x)`` on ImageNet-normalised input → [layer1, layer2,
layer3]), the same images, the model's betas. The reference runs with its config (eta = 0:
DDIM, eta2 = w, KNN_metric l1, anomap_excluded_layers [0], anomap_weighting λ) with
``latent: true`` and the images as their own latents (z ≡ x: raydiff's ``dynamic-pixel``; the
reference's pixel branch normalises |Δ| with ImageNet statistics, which is not the paper's map).

Stages (each isolates one step: later stages feed both sides the same upstream tensors):

1. KNN bin per image: the reference's ``KNN`` + ``get_bins_and_mappings`` (test.py) and
   raydiff's ``KNNPrior`` on the same pooled layer2 features. raydiff excludes each training
   image from its own neighbours (docs/methods.md, dynamic); both are reported.
2. Start z_T̂ = √ᾱ_T̂ z0 (reference ``compute_alpha2``), at the reference's T̂.
3. Guided DDIM, step by step and ẑ0 (``sample.my_generalized_steps``), raydiff's
   ``reconstruct`` on the reference's grid (``ddim_grid: reference``: must be equal) and on the
   paper's grid (raydiff's default: a deviation, measured).
4. l_map (``anomaly_map.color_distance``) and f_map (``feature_distance_new``) on the
   reference's ẑ0: raydiff's upsampling uses align_corners=False, the reference True.
5. The final map and image score: the reference's test-set min-max normalisation, λ-weighting,
   kornia Gaussian blur σ = 4 and max (``heatmap_latent``), against raydiff's own
   post-processing (``combine`` + ``postprocess.smooth`` σ = 4) applied to the same
   normalised maps (equal up to the blur's implementation), and against raydiff's own
   normalisation with held-out statistics (a deviation: a score that depends on its image alone).
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydiff.features import ResNetFeatures, cosine_distance, knn_features
from raydiff.knn_prior import KNNPrior, noise_level
from raydiff.parity.compare import Stage
from raydiff.parity.inputs import ParityInputs
from raydiff.parity.refs import Reference
from raydiff.scoring import dynad
from raydiff.scoring.postprocess import smooth

REFERENCE = "dynad"
MODULES = ("utilities", "sample", "anomaly_map", "test")
#: Imported at module level by the reference but not on the compared path.
ABSENT = ("torchvision", "omegaconf", "timm", "consistencydecoder", "torchmetrics", "cv2")
METHOD = "dynad"

GUIDANCE_W = 4.0  # DynAD config.yaml eta2
LAMBDA = 0.85  # DynAD config.yaml anomap_weighting
T_MAX = 80  # DynAD config.yaml test_trajectoy_steps
STEPS = 10  # the reference's skip = T̂ / 10
KNN_K = 20
SIGMA = 4.0  # anomaly_map.py: sigma = 4, kernel 2·int(4σ + 0.5) + 1


class FeatureExtractor(torch.nn.Module):
    """raydiff's φ in the reference's interface: ImageNet-normalised (B,3,H,W) → [layer1, layer2, layer3]."""

    def __init__(self, phi: ResNetFeatures) -> None:
        super().__init__()
        self.phi = phi

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.phi
        h = p.maxpool(p.relu(p.bn1(p.conv1(x))))
        l1 = p.layer1(h)
        l2 = p.layer2(l1)
        return [l1, l2, p.layer3(l2)]


class EpsModel(torch.nn.Module):
    """raydiff's model in the references' ``model(x, t)`` → ε interface (t: float steps, cast to long)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.unet = model.unet  # a submodule, so `.to(device)` (DDAD calls it every step) moves it

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model.model_output(x, t.long().to(x.device))[0]


def eps_model(model: Any) -> EpsModel:
    return EpsModel(model)


def reference_config(image_size: int) -> Any:
    """The attributes of the reference's OmegaConf config that the compared functions read."""
    model = types.SimpleNamespace(
        device="cpu", eta=0.0, latent=True, anomap_excluded_layers=[0], anomap_weighting=LAMBDA,
        KNN_metric="l1", test_trajectoy_steps=T_MAX, eta2=GUIDANCE_W,
    )
    return types.SimpleNamespace(model=model, data=types.SimpleNamespace(image_size=image_size))


def stages(ref: Reference, inputs: ParityInputs) -> list[Stage]:
    util, sample, amap, test = (ref.module(m) for m in MODULES)
    model = inputs.model("gaussian")
    x0 = inputs.images.float()  # 1 or 3 channels: ImageNet normalisation broadcasts grey to RGB on both sides
    size = x0.shape[-1]
    config = reference_config(size)
    fe = FeatureExtractor(inputs.features).eval()
    betas = model.schedule.betas.float().cpu()
    out: list[Stage] = []

    # 1. KNN prior: the same pooled layer2 features for both.
    train = inputs.train_images.float()
    train_feats = knn_features(inputs.features, train)  # what raydiff's fit indexes
    test_feats = knn_features(inputs.features, x0)
    k = min(KNN_K, train_feats.shape[0] - 1)
    knn = test.KNN(config=config, k=k, num_bins=10)
    knn.fit(train_feats)
    distances, indices = knn.transform(test_feats.numpy())
    _, keys = test.get_bins_and_mappings(knn, distances, indices)
    ref_bins = torch.tensor(np.asarray(keys), dtype=torch.float64)
    ours_incl = KNNPrior.fit(train_feats, k=k, bins=10, exclude_self=False)
    ours_excl = KNNPrior.fit(train_feats, k=k, bins=10, exclude_self=True)
    out.append(Stage(METHOD, "KNN bin (training image among its own neighbours)",
                     torch.as_tensor(ours_incl.bin(test_feats), dtype=torch.float64), ref_bins,
                     note="raydiff KNNPrior(exclude_self=False)"))
    out.append(Stage(METHOD, "KNN bin (raydiff default: self excluded)",
                     torch.as_tensor(ours_excl.bin(test_feats), dtype=torch.float64), ref_bins,
                     deviation="dynamic", note="raydiff KNNPrior default"))
    # T̂: the reference's roundup() is local to test.validate(); its expression is applied here.
    steps_ref = np.maximum(np.asarray(keys), 2) / 10 * T_MAX
    res = np.ceil(steps_ref / 10) * 10
    res[np.logical_and(steps_ref % 10 < 5, steps_ref % 10 > 0)] -= 10
    t_hat = torch.as_tensor(res, dtype=torch.long)
    ours_t = torch.tensor([noise_level(int(b), T_MAX, 10) for b in keys], dtype=torch.long)
    out.append(Stage(METHOD, "T̂ from the bin", ours_t.double(), t_hat.double(),
                     note="raydiff knn_prior.noise_level vs test.py's expression"))

    # 2. Noiseless start at the reference's T̂.
    at = util.compute_alpha2(betas, t_hat, config)
    ref_start = x0 * at.sqrt()
    ours_trace: list[torch.Tensor] = []
    eps_fn = eps_model(model)
    z_ref_grid = dynad.reconstruct(lambda z, t: eps_fn(z, t), model.schedule, x0, t_hat, STEPS, GUIDANCE_W,
                                   grid="reference", trace=ours_trace)
    out.append(Stage(METHOD, "start z_T̂ = √ᾱ_T̂ z0", ours_trace[0], ref_start))

    # 3. Guided DDIM (reference: eta = 0, per-image sequences).
    skip = np.maximum(res / 10, 1).astype(int)
    seq = [torch.arange(0, int(end), int(st)) for end, st in zip(res, skip)]
    xs, _ = sample.my_generalized_steps(x0, ref_start, seq, eps_model(model), betas, config,
                                        eta2=GUIDANCE_W, eta3=0, constants_dict={}, eraly_stop=False)
    for i in sorted({1, len(xs) // 2}):
        out.append(Stage(METHOD, f"z after guided DDIM step {i}", ours_trace[i], xs[i].float(),
                         note="raydiff ddim_grid: reference"))
    z_ref = xs[-1].float()
    out.append(Stage(METHOD, "ẑ0 (raydiff ddim_grid: reference)", z_ref_grid, z_ref))
    z_paper = dynad.reconstruct(lambda z, t: eps_fn(z, t), model.schedule, x0, t_hat, STEPS, GUIDANCE_W)
    out.append(Stage(METHOD, "ẑ0 (raydiff default ddim_grid: paper)", z_paper, z_ref, deviation="dynamic",
                     note="first evaluation at T̂ (Alg. 1) instead of T̂ - T̂/10"))

    # 4. Raw maps on the reference's ẑ0.
    ref_l = amap.color_distance(z_ref, x0, config, out_size=size)[:, 0]
    out.append(Stage(METHOD, "l_map = mean_c |ẑ0 - z0|", dynad.latent_map(z_ref, x0, size), ref_l, kind="map"))
    ref_f = amap.feature_distance_new(z_ref, x0, fe, config)[:, 0]
    phi_x0 = inputs.features(x0)
    phi_hat = inputs.features(z_ref)
    ours_f = dynad.feature_map(phi_x0, phi_hat, size)
    out.append(Stage(METHOD, "f_map = Σ 1 - cos(φ(x0), φ(x̂0))", ours_f, ref_f, kind="map", deviation="dynamic",
                     note="upsampling align_corners=False (raydiff) vs True (reference)"))
    corners = sum(F.interpolate(cosine_distance(phi_x0[k], phi_hat[k]).unsqueeze(1), size=(size, size), mode="bilinear",
                                align_corners=True)[:, 0] for k in dynad.FEATURE_LAYERS)
    out.append(Stage(METHOD, "f_map, raydiff's cosine distances upsampled with align_corners=True", corners, ref_f,
                     kind="map", note="isolates the deviation above: the upsampling is the only difference"))

    # 5. Final map and image score. Reference: min-max over the whole test set (here: these images).
    ref_ln, ref_fn = amap.scale_values_between_zero_and_one([ref_l.unsqueeze(1)]), \
        amap.scale_values_between_zero_and_one([ref_f.unsqueeze(1)])
    ref_final = amap.heatmap_latent(ref_ln, ref_fn, config)[0][:, 0]
    combined = dynad.combine("parity", {"l_map": ref_ln[0][:, 0], "f_map": ref_fn[0][:, 0]}, None,
                             types.SimpleNamespace(lam=LAMBDA))
    ours_final = smooth(combined, "gaussian", 0, SIGMA)
    out.append(Stage(METHOD, "final map, the reference's normalisation (raydiff's smoothing)", ours_final,
                     ref_final, kind="map", note="kornia gaussian_blur2d vs raydiff postprocess.smooth"))
    out.append(Stage(METHOD, "image score = max, the reference's normalisation", ours_final.flatten(1).max(1).values,
                     ref_final.flatten(1).max(1).values, kind="score"))
    # raydiff's own normalisation (held-out statistics): the raw maps standardised with the
    # mean/std of the training images' maps (what `raydiff fit` computes on held-out images).
    stats = _train_stats(inputs, model, t_hat_of=ours_excl, size=size)
    ours_own = smooth(dynad.combine("parity", {"l_map": dynad.latent_map(z_paper, x0, size),
                                               "f_map": dynad.feature_map(phi_x0, inputs.features(z_paper), size)},
                                    stats, types.SimpleNamespace(lam=LAMBDA)), "gaussian", 0, SIGMA)
    out.append(Stage(METHOD, "final map, raydiff as configured (held-out statistics, paper grid)", ours_own,
                     ref_final, kind="map", deviation="dynamic"))
    out.append(Stage(METHOD, "image score, raydiff as configured", ours_own.flatten(1).max(1).values,
                     ref_final.flatten(1).max(1).values, kind="score", deviation="dynamic"))
    return out


def _train_stats(inputs: ParityInputs, model: Any, t_hat_of: KNNPrior, size: int) -> dict[str, tuple[float, float]]:
    """Mean/std of the raw l_map and f_map over (up to 8 of) the training images, as raydiff's fit
    takes them over held-out normal images (one global pair: the per-ring refinement is off here)."""
    x = inputs.train_images[:8].float()
    feats = knn_features(inputs.features, x)
    t_hat = torch.tensor([noise_level(int(b), T_MAX, 10) for b in t_hat_of.bin(feats)], dtype=torch.long)
    eps_fn = eps_model(model)
    z = dynad.reconstruct(lambda a, t: eps_fn(a, t), model.schedule, x, t_hat, STEPS, GUIDANCE_W)
    l_map = dynad.latent_map(z, x, size)
    f_map = dynad.feature_map(inputs.features(x), inputs.features(z), size)
    return {"l_map": (float(l_map.mean()), float(l_map.std())), "f_map": (float(f_map.mean()), float(f_map.std()))}
