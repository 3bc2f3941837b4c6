"""Stand-in for guided_diffusion/respace.py: a diffusion restricted to some of its steps."""

import numpy as np
import torch as th

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps, section_counts):
    """Kept steps, evenly spread per section (fractional stride, rounded); a string "250" or
    "10,20" or a list of counts. ("ddimN" is not needed by the check.)"""
    if isinstance(section_counts, str):
        section_counts = [int(c) for c in section_counts.split(",")]
    per, extra = divmod(num_timesteps, len(section_counts))
    kept, start = set(), 0
    for i, count in enumerate(section_counts):
        size = per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        pos = 0.0
        for _ in range(count):
            kept.add(start + round(pos))
            pos += stride
        start += size
    return kept


class _WrappedModel:
    def __init__(self, model, timestep_map, rescale_timesteps, original_num_steps):
        self.model, self.timestep_map = model, timestep_map
        self.rescale_timesteps, self.original_num_steps = rescale_timesteps, original_num_steps

    def __call__(self, x, ts, **kwargs):
        orig = th.tensor(self.timestep_map, device=ts.device, dtype=ts.dtype)[ts]
        if self.rescale_timesteps:
            orig = orig.float() * (1000.0 / self.original_num_steps)
        return self.model(x, orig, **kwargs)


class SpacedDiffusion(GaussianDiffusion):
    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        self.original_num_steps = len(kwargs["betas"])
        ac = np.cumprod(1.0 - np.asarray(kwargs["betas"], dtype=np.float64))
        self.timestep_map = sorted(self.use_timesteps)
        kept_ac = ac[self.timestep_map]
        kwargs["betas"] = 1.0 - kept_ac / np.concatenate([[1.0], kept_ac[:-1]])
        super().__init__(**kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map, self.rescale_timesteps, self.original_num_steps)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def _scale_timesteps(self, t):
        return t
