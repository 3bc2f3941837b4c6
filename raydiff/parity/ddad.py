"""DDAD's guided reconstruction (arimousa/DDAD ``reconstruction.py``) against ``raydiff.scoring.dynad``.

DDAD noises the input to T = ``test_trajectoy_steps`` with one Gaussian draw and walks DDIM
back with its guidance ε̂ = ε - w √(1-ᾱ_t) (ỹ_t - x_t) (DDAD eq. 8-9), evaluating the UNet at
``range(0, T, skip)`` in reverse (T - skip … 0). raydiff's ``dynamic`` variants run the same
guidance (``dynad.reconstruct`` with ``start: noised``); the check feeds the reference raydiff's
noise draw (``torch.randn_like`` patched inside the call: the first call is the start's draw,
every later one multiplies η = 0 and is returned as zeros) and runs DDIM with η = 0, the
deterministic path DynAD uses. DDAD's own default is η = 1 (config.yaml ``eta: 1``), a
stochastic path raydiff does not offer; docs/parity.md says so.

DDAD's anomaly map (``anomaly_map.heat_map``: 3×3-patch-averaged feature distance plus
v·max(f)/max(i)·pixel distance) is not one of raydiff's maps (raydiff's dynamic variants use
DynAD's map, compared in :mod:`raydiff.parity.dynad`), so it is not compared.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from raydiff import diffusion as D
from raydiff.parity.compare import Stage
from raydiff.parity.dynad import eps_model
from raydiff.parity.inputs import ParityInputs
from raydiff.parity.refs import NoiseFeed, Reference, patched
from raydiff.scoring import dynad

REFERENCE = "ddad"
MODULES = ("reconstruction",)
ABSENT: tuple[str, ...] = ()
METHOD = "ddad-guided"

T_START = 250  # DDAD config.yaml test_trajectoy_steps
SKIP = 25  # DDAD config.yaml skip
W = 2.0  # DDAD config.yaml w


def reference_config(model: Any, steps: int) -> Any:
    sched = model.schedule
    return types.SimpleNamespace(model=types.SimpleNamespace(
        beta_start=float(sched.betas[0]), beta_end=float(sched.betas[-1]), trajectory_steps=steps,
        test_trajectoy_steps=T_START, skip=SKIP, eta=0.0, device="cpu",
    ))


def stages(ref: Reference, inputs: ParityInputs) -> list[Stage]:
    model = inputs.model("gaussian")
    if model.schedule.kind != "linear":
        raise ValueError("the DDAD check needs a linear-schedule model (DDAD rebuilds its betas with np.linspace)")
    x0 = inputs.images.float()
    g = torch.Generator().manual_seed(inputs.seed)
    noise = torch.randn(x0.shape, generator=g)
    config = reference_config(model, model.schedule.timesteps)
    rec = ref.module("reconstruction").Reconstruction(eps_model(model), config)
    with patched(torch, "randn_like", NoiseFeed([noise], then_zeros=True)):  # x_T's noise, then η = 0 terms
        xs = rec(x0, x0, W)
    out: list[Stage] = []
    sched = model.schedule
    tt = torch.full((x0.shape[0],), T_START, dtype=torch.long)
    out.append(Stage(METHOD, f"x_T (T = {T_START}), same noise", D.q_sample(sched, x0, tt, noise), xs[0].float(),
                     note="raydiff diffusion.q_sample"))
    eps_fn = eps_model(model)
    trace: list[torch.Tensor] = []
    steps = T_START // SKIP
    t_hat = torch.full((x0.shape[0],), T_START, dtype=torch.long)
    ours = dynad.reconstruct(lambda z, t: eps_fn(z, t), sched, x0, t_hat, steps, W, noise=noise,
                             grid="reference", trace=trace)
    for i in sorted({1, len(xs) // 2}):
        out.append(Stage(METHOD, f"x after guided DDIM step {i}", trace[i], xs[i].float(),
                         note="raydiff ddim_grid: reference, start: noised"))
    out.append(Stage(METHOD, "x̂0 (raydiff ddim_grid: reference)", ours, xs[-1].float()))
    paper = dynad.reconstruct(lambda z, t: eps_fn(z, t), sched, x0, t_hat, steps, W, noise=noise)
    out.append(Stage(METHOD, "x̂0 (raydiff default ddim_grid: paper)", paper, xs[-1].float(), deviation="dynamic",
                     note="first evaluation at T instead of T - skip"))
    return out
