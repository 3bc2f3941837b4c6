"""The ``variants`` section: named ``VariantInstance``s (a method of ``METHOD_TABLE``, the model
it scores with, its parameters and per-category or per-group overrides) and which of them to
score. ``BUILTIN_VARIANTS`` are the ten names of the earlier fixed variant list;
``LegacyVariants`` is that list's config form (upgraded by ``raydiff.config.compat``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from raydiff.config.fields import Invalid
from raydiff.config.methods import (
    METHOD_TABLE,
    POSTPROCESS_PARAMS,
    DynamicConfig,
    KLConfig,
    MethodSpec,
    NoDiffusionConfig,
    StaticConfig,
    TrendConfig,
)
from raydiff.config.models import ModelSpec


@dataclass(frozen=True)
class BuiltinVariant:
    """A variant name a config may use without saying what it is (the ten variants of every
    earlier config): its method, model, and parameters that differ from the method's defaults."""

    method: str
    model: str
    params: Mapping[str, Any] = field(default_factory=dict)
    #: The field of ``LegacyVariants`` holding its parameters in the old config form.
    legacy_field: str = ""


BUILTIN_VARIANTS: dict[str, BuiltinVariant] = {
    "static-gaussian": BuiltinVariant("static", "pixel", {}, "static_gaussian"),
    "static-simplex": BuiltinVariant("static", "pixel-simplex", {}, "static_simplex"),
    "static-gmm": BuiltinVariant("static", "pixel-gmm", {"smoothing_size": 5}, "static_gmm"),
    "no-diffusion": BuiltinVariant("no-diffusion", "pixel", {}, "no_diffusion"),
    "dynamic": BuiltinVariant("dynamic", "latent", {}, "dynamic"),
    "dynamic-pixel": BuiltinVariant("dynamic", "pixel", {}, "dynamic_pixel"),
    "kl": BuiltinVariant("kl", "pixel", {}, "kl"),
    "trend": BuiltinVariant("trend", "pixel", {"output": "both"}, "trend"),
    "trend-intensity": BuiltinVariant("trend", "pixel", {"output": "intensity"}, "trend"),
    "trend-uncertainty": BuiltinVariant("trend", "pixel", {"output": "uncertainty"}, "trend"),
}


@dataclass(frozen=True)
class LegacyVariants:
    """The old form of the ``variants`` section (one fixed key per built-in variant, ``enabled``
    listing which to score); the loader turns it into variant instances."""

    enabled: tuple[str, ...] = tuple(BUILTIN_VARIANTS)
    static_gaussian: StaticConfig = StaticConfig()
    static_simplex: StaticConfig = StaticConfig()
    static_gmm: StaticConfig = StaticConfig(smoothing_size=5)
    no_diffusion: NoDiffusionConfig = NoDiffusionConfig()
    dynamic: DynamicConfig = DynamicConfig()
    dynamic_pixel: DynamicConfig = DynamicConfig()
    kl: KLConfig = KLConfig()
    #: Shared by ``trend``, ``trend-intensity`` and ``trend-uncertainty`` (one pass computes all three).
    trend: TrendConfig = TrendConfig()


@dataclass(frozen=True)
class VariantInstance:
    """One named scoring variant: a method, the model it scores with, its parameters, and its
    per-category overrides (resolved: category → the whole parameter dataclass)."""

    method: str
    model: str
    params: Any
    per_category: Mapping[str, Any] = field(default_factory=dict)
    #: The published result (a key of ``raydiff.config.published.PUBLISHED``) this instance
    #: reproduces with the paper's own settings; the report compares only such pairs.
    reproduces: str | None = None

    def params_for(self, category: str | None) -> Any:
        if category is None:
            return self.params
        return self.per_category.get(category, self.params)


def _check_against_model(name: str, inst: VariantInstance, spec: ModelSpec) -> None:
    """Every timestep a variant uses (with each category's overrides) is one its model has."""
    keys = (*(f"variants.{name}.{f.name}" for f in fields(inst.params)), f"models.{inst.model}.timesteps",
            f"variants.{name}")
    for category, params in [(None, inst.params), *inst.per_category.items()]:
        on = f" (for {category})" if category else ""
        levels = METHOD_TABLE[inst.method].timesteps(params)
        if any(t >= spec.timesteps for t in levels):
            raise Invalid(keys, f"variant '{name}' uses timestep {max(levels)}{on} >= the timesteps of its model "
                          f"'{inst.model}' ({spec.timesteps}).", f"keep every timestep below {spec.timesteps}.")
        if isinstance(params, KLConfig) and params.chain_steps:
            if params.chain_steps > spec.timesteps:
                raise Invalid(keys, f"variant '{name}': chain_steps = {params.chain_steps}{on} exceeds its model's "
                              f"{spec.timesteps} timesteps.", f"use chain_steps <= {spec.timesteps}.")
            if max(params.timesteps) >= params.chain_steps:
                raise Invalid(keys, f"variant '{name}': timesteps {list(params.timesteps)}{on} are steps of the "
                              f"{params.chain_steps}-step chain and must be below {params.chain_steps}.",
                              "lower them (RAN: [5, 50, 100] on a 250-step chain).")


def _builtin_instances() -> dict[str, VariantInstance]:
    return {
        name: VariantInstance(b.method, b.model, METHOD_TABLE[b.method].params(**b.params))
        for name, b in BUILTIN_VARIANTS.items()
    }


@dataclass(frozen=True)
class VariantsConfig:
    """The config's variant instances (name → VariantInstance, config order) and which of them
    to score (``enabled``). The ``variant`` column of every table is the instance name."""

    instances: Mapping[str, VariantInstance] = field(default_factory=_builtin_instances)
    enabled: tuple[str, ...] = tuple(BUILTIN_VARIANTS)

    def instance(self, name: str) -> VariantInstance:
        try:
            return self.instances[name]
        except KeyError:
            raise KeyError(f"unknown variant {name!r}; this config's variants: {', '.join(self.instances)}") from None

    def params(self, name: str, category: str | None = None) -> Any:
        """The parameter dataclass of instance ``name`` (with ``category``'s overrides)."""
        return self.instance(name).params_for(category)

    def model(self, name: str) -> str:
        """The name of the model instance ``name`` scores with."""
        return self.instance(name).model

    def method(self, name: str) -> MethodSpec:
        return METHOD_TABLE[self.instance(name).method]

    def with_params(self, name: str, **changes: Any) -> VariantsConfig:
        """These variants with ``changes`` applied to instance ``name``'s parameters (and to each
        of its per-category ones). Not re-checked: for tests and benchmarks."""
        from dataclasses import replace

        inst = self.instance(name)
        new = replace(inst, params=replace(inst.params, **changes),
                      per_category={c: replace(p, **changes) for c, p in inst.per_category.items()})
        return replace(self, instances={**self.instances, name: new})

    def check_shared_prior(self) -> None:
        """Every enabled dynamic instance shares one KNN prior per category (fit step): in each
        category (with its overrides) their k and bins must agree."""
        dynamic = [v for v in self.enabled if self.instance(v).method == "dynamic"]
        categories = {c for v in dynamic for c in self.instance(v).per_category}
        for category in [None, *sorted(categories)]:
            rows = [(v, self.params(v, category)) for v in dynamic]
            if len({(p.knn_k, p.bins) for _, p in rows}) > 1:
                names = ", ".join(f"{v} ({p.knn_k}/{p.bins})" for v, p in rows)
                on = f" for {category}" if category else ""
                raise Invalid(("variants",), f"the dynamic variants {names} differ in knn_k/bins{on}; they share "
                              "one KNN prior per category.", "give every dynamic variant the same knn_k and bins.")

    def family(self, name: str, category: str | None = None) -> str:
        """The instance whose ``components`` call ``name`` shares: the first instance (in config
        order) with the same method, model and parameters apart from post-processing and
        ``combine``-only ones (with ``category``'s overrides). Defined over every instance,
        enabled or not, so a family (and the noise its leader's name seeds) does not depend on
        which instances are enabled."""
        key = self._family_key(name, category)
        return next(n for n in self.instances if self._family_key(n, category) == key)

    def _family_key(self, name: str, category: str | None) -> tuple[Any, ...]:
        inst = self.instance(name)
        spec = METHOD_TABLE[inst.method]
        skip = set(POSTPROCESS_PARAMS) | set(spec.combine_only)
        params = inst.params_for(category)
        kept = tuple((f.name, getattr(params, f.name)) for f in fields(params) if f.name not in skip)
        return (spec.module, inst.model, kept)
