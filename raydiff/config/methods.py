"""The scoring methods: ``METHOD_TABLE`` and each method's params class (the post-processing
every method shares, ``PostProcessConfig``, then static, no-diffusion, dynamic, kl and trend).

Per method, ``METHOD_TABLE`` gives the module that computes it (``raydiff.scoring.METHODS``),
its params class, the timesteps it uses, the architectures it scores, whether it uses φ, and
which parameters only its ``combine`` reads (instances that differ only there, or in
post-processing, share one computation). Config parsing, the timestep check, fitting, scoring,
``raydiff plan`` and the report read it; ``tests/test_variant_table.py`` walks it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from raydiff.config.fields import ID_UNLESS_DEFAULT, Invalid, _range

Smoothing = Literal["none", "mean", "gaussian"]
ImageScore = Literal["max", "avgpool-max", "topk-mean", "mean"]
#: σ² of a ddpm reverse step (``raydiff.diffusion.p_mean_variance``).
ReverseVariance = Literal["model", "fixed-large"]
#: The scoring methods (``METHOD_TABLE``; a variant instance names one).
Method = Literal["static", "no-diffusion", "dynamic", "kl", "trend"]


@dataclass(frozen=True)
class PostProcessConfig:
    """What every method does to its combined map (``raydiff.scoring.postprocess``): the
    parameters each params class below inherits (a class may change ``smoothing``'s and
    ``image_score``'s defaults). Serialised after the method's own parameters."""

    smoothing: Smoothing = "none"
    smoothing_size: int = field(default=11, metadata=_range(1, 255))
    sigma: float = field(default=4.0, metadata=_range(0.0, 100.0))
    image_score: ImageScore = "max"
    #: The avgpool-max kernel; 0 = round(image_size / 25) (Kashihara).
    pool_size: int = field(default=0, metadata=_range(0, 255))
    top_k: int = field(default=64, metadata=_range(1, 1_000_000))
    #: ``true``: component statistics per ring of distance to the image edge and a final per-ring
    #: rescaling (issue 17's border fix; docs/methods.md, Normalisation). ``false``: one global
    #: mean/std per component and no final rescaling, as the papers (their code has no
    #: position-dependent statistics). Hashed into run ids only when off.
    border_rings: bool = field(default=True, metadata=ID_UNLESS_DEFAULT)


def _check_steps(p: Any, prefix: str) -> None:
    if p.steps > p.t0:
        raise Invalid((f"{prefix}.steps", f"{prefix}.t0"), f"'{prefix}.steps' = {p.steps} exceeds t0 = {p.t0}.",
                      "use steps <= t0.")


@dataclass(frozen=True)
class StaticConfig(PostProcessConfig):
    """Kashihara "diffusion" / Fučka: noise to t0 with the model's noise kind, reverse to 0."""

    t0: int = field(default=200, metadata=_range(1, 100_000))
    #: Reverse steps from t0 to 0 (DDPM ancestral uses t0 steps when ``steps == t0``).
    steps: int = field(default=200, metadata=_range(1, 100_000))
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    #: σ² of the ddpm steps: ``model`` (the model's learned variance, β̃ for an ε-only model) or
    #: ``fixed-large`` (β_t: Fučka eq. 5, Kashihara). Unused by ddim.
    variance: ReverseVariance = "model"
    #: Clip x̂0 to [-1, 1] in every reverse step (guided-diffusion's ``clip_denoised``); Kashihara
    #: eq. 5 does not clip (``false``). Hashed into run ids only when off.
    clip_x0: bool = field(default=True, metadata=ID_UNLESS_DEFAULT)
    smoothing: Smoothing = "mean"

    def check(self, prefix: str) -> None:
        _check_steps(self, prefix)


@dataclass(frozen=True)
class NoDiffusionConfig(PostProcessConfig):
    """Kashihara no-diffusion: the input itself is taken as x_t0 and reversed to 0."""

    t0: int = field(default=50, metadata=_range(1, 100_000))
    steps: int = field(default=5, metadata=_range(1, 100_000))
    sampler: Literal["ddpm", "ddim"] = "ddim"
    variance: ReverseVariance = "model"
    #: As ``StaticConfig.clip_x0`` (Kashihara eq. 5: off). Hashed into run ids only when off.
    clip_x0: bool = field(default=True, metadata=ID_UNLESS_DEFAULT)
    image_score: ImageScore = "avgpool-max"

    def check(self, prefix: str) -> None:
        _check_steps(self, prefix)


@dataclass(frozen=True)
class DynamicConfig(PostProcessConfig):
    """DynAD: KNN-prior noise level, noiseless start, guided DDIM (DDAD), pixel+feature map."""

    t_max: int = field(default=80, metadata=_range(1, 100_000))
    #: 0: T̂ per image from the KNN prior (DynAD's dynamic conditioning). N > 0: T̂ = N for every
    #: image (DynAD Table 5's static levels 20/40/60/80).
    fixed_level: int = field(default=0, metadata=_range(0, 100_000))
    #: ``noiseless``: z_T̂ = √ᾱ z0 (DynAD); ``noised``: plus √(1-ᾱ) ε, the usual start (DynAD Table 6).
    start: Literal["noiseless", "noised"] = "noiseless"
    #: Use the domain-adapted φ (DynAD §4.3; for its KNN prior and f_map) when
    #: ``features.domain_adaptation_epochs`` > 0; false: the unadapted φ and a KNN prior over it
    #: (DynAD Table 6's "DA" column). Hashed into run ids only when off.
    domain_adaptation: bool = field(default=True, metadata=ID_UNLESS_DEFAULT)
    ddim_steps: int = field(default=10, metadata=_range(1, 10_000))
    #: ``paper``: the UNet is first evaluated at T̂ (Alg. 1); ``reference``: at T̂ - ⌊T̂/S⌋, down to
    #: 0, as the authors' code walks it (``raydiff.scoring.dynad.ddim_timesteps``). Hashed into
    #: run ids only when not the default (configs written before it keep their ids).
    ddim_grid: Literal["paper", "reference"] = field(default="paper", metadata=ID_UNLESS_DEFAULT)
    guidance_w: float = field(default=4.0, metadata=_range(0.0, 100.0))
    #: map = lam * l_map + (1 - lam) * f_map.
    lam: float = field(default=0.85, metadata=_range(0.0, 1.0))
    knn_k: int = field(default=20, metadata=_range(1, 10_000))
    bins: int = field(default=10, metadata=_range(1, 1000))
    smoothing: Smoothing = "gaussian"


@dataclass(frozen=True)
class KLConfig(PostProcessConfig):
    """RAN: per-pixel KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) at several t, plus a feature term."""

    timesteps: tuple[int, ...] = (20, 200, 400)
    #: 0: single steps t of the model's own schedule. N > 0: the chain respaced to N steps
    #: (improved-diffusion ``space_timesteps``; RAN's reference scores on 250), and
    #: ``timesteps`` are steps of that chain (RAN: 5, 50, 100 ≈ 20, 201, 401 of 1000).
    chain_steps: int = field(default=0, metadata=_range(0, 100_000))
    #: Clip x̂0 to [-1, 1] in p_θ's mean (RAN's reference: ``clip_denoised=True``).
    clip_x0: bool = False
    #: One noise draw per t (RAN's reference) instead of one draw shared by every t (and by
    #: the other variants that noise the same model at the same t).
    fresh_noise: bool = False
    #: ``held-out``: each KL map and the feature map standardised with held-out normal statistics;
    #: ``per-image``: the reference's (each t's KL z-scored over the image's channels and pixels,
    #: the feature map raw; ``raydiff.scoring.ran_kl``). Hashed into run ids only when set.
    normalise: Literal["held-out", "per-image"] = field(default="held-out", metadata=ID_UNLESS_DEFAULT)
    #: map = (1 - feature_weight) * kl_map + feature_weight * feature_map (RAN: 1:1).
    feature_weight: float = field(default=0.5, metadata=_range(0.0, 1.0))
    image_score: ImageScore = "topk-mean"

    def check(self, prefix: str) -> None:
        if not self.timesteps or min(self.timesteps) < 1:
            raise Invalid((f"{prefix}.timesteps",), f"'{prefix}.timesteps' must be non-empty and >= 1.",
                          "e.g. [20, 200, 400].")


@dataclass(frozen=True)
class TrendConfig(PostProcessConfig):
    """Kim et al.: DFT trend of reconstruction error and of model uncertainty over noise levels."""

    levels: tuple[int, ...] = (25, 50, 75, 100, 150, 200, 300, 400)
    #: Which trend the map adds up: ``both`` (Kim et al.), or one of them (their ablations).
    #: Instances that differ only here share one computation.
    output: Literal["both", "intensity", "uncertainty"] = "both"
    reconstruction: Literal["one-step", "ddim"] = "one-step"
    ddim_steps: int = field(default=5, metadata=_range(1, 10_000))
    #: Uncertainty map: 0 = |Jᵀr| for one fixed Gaussian probe r (METHODS' reading of Kim et al.,
    #: the reproducing instances spell it); K > 0 = Hutchinson's estimate of diag(J) from K
    #: Rademacher probes (K gradient passes per level; ``raydiff.scoring.kim_trend``). Default 1:
    #: the same cost as 0 and better on MPDD, MagneticTile's pixels and the demo (docs/results.md,
    #: "Trend's uncertainty"). Hashed into run ids unless 0 (the default before 2026-12-06), so a
    #: run scored with the one-probe map is never mistaken for one scored with the diagonal.
    probes: int = field(default=1, metadata={**_range(0, 256), **ID_UNLESS_DEFAULT, "id_default": 0})
    smoothing: Smoothing = "gaussian"

    def check(self, prefix: str) -> None:
        if len(self.levels) < 3 or list(self.levels) != sorted(set(self.levels)):
            raise Invalid((f"{prefix}.levels",), f"'{prefix}.levels' must be at least 3 strictly increasing "
                          f"timesteps, got {list(self.levels)}.", "list levels such as [25, 50, 100, 200, 400].")


#: Parameters that only post-process a variant's combined map (``raydiff.scoring.postprocess``).
POSTPROCESS_PARAMS: tuple[str, ...] = tuple(f.name for f in fields(PostProcessConfig))


@dataclass(frozen=True)
class MethodSpec:
    """One scoring method (one row of ``METHOD_TABLE``)."""

    name: str
    #: Module of ``raydiff.scoring`` (a key of ``raydiff.scoring.METHODS``) with its maths.
    module: str
    #: Its parameter dataclass.
    params: type
    #: The diffusion timesteps its parameters use (each must be < the model's timesteps).
    timesteps: Callable[[Any], list[int]]
    #: Model architectures it can score with.
    archs: tuple[str, ...] = ("pixel",)
    #: It uses the feature extractor φ: its scores depend on ``features.arch`` and ``features.weights``
    #: (the ``feature_weights`` column of the metrics says which: ``raydiff.report_tables.weights_label``).
    uses_features: bool = False
    #: Parameters read only by ``combine`` (besides ``POSTPROCESS_PARAMS``): instances of one
    #: model that differ only in these share one ``components`` call per batch (one family).
    combine_only: tuple[str, ...] = ()


def _t0(p: Any) -> list[int]:
    return [p.t0]


def _kl_timesteps(p: Any) -> list[int]:
    # On a respaced chain the timesteps are steps of the chain (checked against chain_steps).
    return [] if p.chain_steps else list(p.timesteps)


METHOD_TABLE: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("static", "kashihara_static", StaticConfig, _t0),
        MethodSpec("no-diffusion", "kashihara_no_diffusion", NoDiffusionConfig, _t0),
        MethodSpec("dynamic", "dynad", DynamicConfig, lambda p: [max(p.t_max, p.fixed_level)], ("pixel", "latent"),
                   True, ("lam",)),
        MethodSpec("kl", "ran_kl", KLConfig, _kl_timesteps, uses_features=True, combine_only=("feature_weight",)),
        MethodSpec("trend", "kim_trend", TrendConfig, lambda p: list(p.levels), combine_only=("output",)),
    )
}
METHODS_LIST: tuple[str, ...] = tuple(METHOD_TABLE)
