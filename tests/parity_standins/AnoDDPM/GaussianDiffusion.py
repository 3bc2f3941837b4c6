"""CI stand-in for Julian-Wyatt/AnoDDPM ``GaussianDiffusion.py`` (written for raydiff's parity tests).

The reference's calling convention, an independent implementation of its equations:

- ``get_beta_schedule(n, "linear" | "cosine")``: numpy float64 betas (linear 1e-4 → 0.02 scaled by
  1000 / n; cosine: 1 - f(t+1)/f(t), f(t) = cos²((t/n + 0.008)/1.008 · π/2), capped at 0.999);
- ``generate_simplex_noise(simplex, x, t, random_param, octave, persistence, frequency, in_channels)``:
  one fresh seed per channel, the same map for every image of the batch, never rescaled;
- ``GaussianDiffusionModel(img_size, betas, img_channels, loss_type, loss_weight, noise)`` with
  ``noise_fn(x, t)``, ``sample_q(x_0, t, noise)`` (0-based t: ᾱ = cumprod(1 - β)[t]),
  ``p_mean_variance(model, x_t, t)`` (``model(x, t) -> ε``; x̂0 clamped to [-1, 1]; σ² = β_t for
  t ≥ 1, "fixed large"), ``sample_p(model, x_t, t, denoise_fn)`` (``"gauss"``: ``torch.randn_like``,
  ``"noise_fn"``: the model's noise, any other string: ``generate_simplex_noise``; no noise at t = 0)
  and ``forward_backward(model, x, see_whole_sequence, t_distance, denoise_fn)``: noise to
  t_distance - 1, then sample_p at t_distance - 1, …, 0; ``"half"`` returns [x, x_t, every step].

Noise is looked up at call time (``generate_simplex_noise``, ``torch.randn_like``), as in the reference.
"""

import math

import numpy as np
import torch

from simplex import Simplex_CLASS


def get_beta_schedule(num_diffusion_steps, name="cosine"):
    n = int(num_diffusion_steps)
    if name == "linear":
        return np.linspace(1e-4 * 1000 / n, 0.02 * 1000 / n, n, dtype=np.float64)
    if name == "cosine":
        def level(s):
            return math.cos((s / n + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1.0 - level(i + 1) / level(i), 0.999) for i in range(n)], dtype=np.float64)
    raise NotImplementedError(name)


def _at(table, t, like):
    """table[t] (float64 numpy, t LongTensor (B,)) as float32 (B, 1, 1, 1) on like's device."""
    values = torch.as_tensor(table[t.detach().cpu().numpy()], dtype=torch.float32)
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.device)


def generate_simplex_noise(Simplex_instance, x, t, random_param=False, octave=6, persistence=0.8, frequency=64,
                           in_channels=1):
    noise = torch.empty(x.shape, dtype=torch.float32)
    slice_t = t.detach().cpu().numpy()[:1]
    for c in range(in_channels):
        Simplex_instance.newSeed()
        one = Simplex_instance.rand_3d_fixed_T_octaves(tuple(x.shape[-2:]), slice_t, octave, persistence, frequency)
        noise[:, c] = torch.from_numpy(one[0]).float()
    return noise.to(x.device)


class GaussianDiffusionModel:
    def __init__(self, img_size, betas, img_channels=1, loss_type="l2", loss_weight="none", noise="gauss"):
        self.img_size, self.img_channels = img_size, img_channels
        self.num_timesteps = len(betas)
        if noise == "gauss":
            self.noise_fn = lambda x, t: torch.randn_like(x)
        else:
            self.simplex = Simplex_CLASS()
            self.noise_fn = lambda x, t: generate_simplex_noise(self.simplex, x, t, False, in_channels=img_channels)
        b = np.asarray(betas, dtype=np.float64)
        self.betas = b
        self.abar = np.cumprod(1.0 - b)
        self.abar_prev = np.concatenate([[1.0], self.abar[:-1]])
        self.post_var = b * (1.0 - self.abar_prev) / (1.0 - self.abar)

    def sample_q(self, x_0, t, noise):
        return _at(np.sqrt(self.abar), t, x_0) * x_0 + _at(np.sqrt(1.0 - self.abar), t, x_0) * noise

    def p_mean_variance(self, model, x_t, t, estimate_noise=None):
        eps = model(x_t, t) if estimate_noise is None else estimate_noise
        x0 = ((x_t - _at(np.sqrt(1.0 - self.abar), t, x_t) * eps) / _at(np.sqrt(self.abar), t, x_t)).clamp(-1, 1)
        # q(x_{t-1} | x_t, x0): mean = (√ᾱ_{t-1} β_t x0 + √α_t (1 - ᾱ_{t-1}) x_t) / (1 - ᾱ_t)
        denom = 1.0 - self.abar
        mean = (_at(np.sqrt(self.abar_prev) * self.betas / denom, t, x_t) * x0
                + _at(np.sqrt(1.0 - self.betas) * (1.0 - self.abar_prev) / denom, t, x_t) * x_t)
        var = np.concatenate([[self.post_var[1]], self.betas[1:]])  # β_t; t = 0 is never used
        return {"mean": mean, "variance": _at(var, t, x_t), "log_variance": _at(np.log(var), t, x_t),
                "pred_x_0": x0}

    def sample_p(self, model, x_t, t, denoise_fn="gauss"):
        out = self.p_mean_variance(model, x_t, t)
        if not isinstance(denoise_fn, str):
            z = denoise_fn(x_t, t)
        elif denoise_fn in ("gauss", "random"):
            z = torch.randn_like(x_t)
        elif denoise_fn == "noise_fn":
            z = self.noise_fn(x_t, t).float()
        else:
            z = generate_simplex_noise(self.simplex, x_t, t, False, in_channels=self.img_channels).float()
        keep = (t != 0).float().reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.device)
        return {"sample": out["mean"] + keep * torch.exp(0.5 * out["log_variance"]) * z, "pred_x_0": out["pred_x_0"]}

    def forward_backward(self, model, x, see_whole_sequence="half", t_distance=None, denoise_fn="gauss"):
        if t_distance == 0:
            return x.detach()
        t_distance = self.num_timesteps if t_distance is None else int(t_distance)
        seq = [x.detach().cpu()]
        start = torch.full((x.shape[0],), t_distance - 1, dtype=torch.long, device=x.device)
        x = self.sample_q(x, start, self.noise_fn(x, start).float())
        if see_whole_sequence == "half":
            seq.append(x.detach().cpu())
        for step in range(t_distance - 1, -1, -1):
            tt = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
            with torch.no_grad():
                x = self.sample_p(model, x, tt, denoise_fn)["sample"]
            if see_whole_sequence:
                seq.append(x.detach().cpu())
        return seq if see_whole_sequence else x.detach()
