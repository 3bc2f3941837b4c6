"""The engine's GPU path, checked on the CPU: the precision setting, noise drawn where it is used
(per image, batch-independent, deterministic), no host syncs inside reverse loops or the training
step, and the throughput levers (channels_last, torch.compile wiring, fused AdamW, foreach EMA).

Host syncs are counted with a ``TorchDispatchMode`` that records the aten ops which force the
host to wait for the device: ``_local_scalar_dense`` (``.item()``, ``bool(t)``, ``int(t)``,
``float(t)``, ``if t:``) and data-dependent shapes (``nonzero``, ``masked_select``, ``unique``).
On the CPU such an op costs nothing, so the test asserts something stronger than "zero": the
count does not grow with the number of steps (every remaining read sits before or after the loop).
Device copies (a blocking ``.to(cuda)``) cannot be seen on the CPU; the device check runs the
same loops under ``torch.cuda.set_sync_debug_mode`` on a GPU (``raydiff.bench.gpu_check``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from raydiff import diffusion as D
from raydiff.bench.engine import random_models
from raydiff.config import BUILTIN_VARIANTS, config_from_dict
from raydiff.config.schema import ScoringConfig
from raydiff.data.prepared import Prepared
from raydiff.noise import sample_noise
from raydiff.noise.gmm import draw_gmm_maps, gmm_field, GMMMaps
from raydiff.noise.standardise import pairwise_sum, standardise
from raydiff.scoring import dynad, raw_components, score_batch
from raydiff.scoring.context import BatchCache, autocast_dtype, engine_context
from raydiff.seeding import generator

SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive"}


class SyncCounter(TorchDispatchMode):
    """Counts aten ops that make the host wait for the device (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func._schema.name.split("::")[-1] in SYNC_OPS:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


#: The built-in variant instances in the named form (each names its method and model).
BUILTINS = {name: {"method": b.method, "model": b.model} for name, b in BUILTIN_VARIANTS.items()}


def trend_instances(**params: Any) -> dict[str, Any]:
    """trend, trend-intensity and trend-uncertainty with ``params`` (one computation, three maps)."""
    outputs = {"trend": "both", "trend-intensity": "intensity", "trend-uncertainty": "uncertainty"}
    return {name: {"method": "trend", "model": "pixel", **params, "output": output} for name, output in outputs.items()}


def tiny_cfg(*enabled: str, **variants: Any) -> Any:
    """``variants``: instances in the named form, over the built-in ones; ``enabled``: those scored
    (default: the ones given, else static-gaussian)."""
    return config_from_dict({
        "dataset": {"image_size": 16},
        "models": {"preset": "tiny", "base_channels": 8, "vae": {"vae_downsample": 1, "latent_channels": 2}},
        "variants": {"enabled": list(enabled or variants) or ["static-gaussian"], **BUILTINS, **variants},
        "ray": {"gradient_chunk": 0},
    })


def tiny_context(cfg: Any, kinds: list[str], scoring: ScoringConfig | None = None) -> Any:
    from raydiff.features import build_features
    from raydiff.scoring.fit import FittedState

    models = random_models(cfg, 3, torch.device("cpu"), kinds)
    features, _ = build_features(cfg.features, seed=0)
    return engine_context(cfg, "c", models, features.eval(), FittedState(), "cpu", scoring=scoring)


def images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------ 1. precision


def test_precision_setting_resolves_per_device() -> None:
    assert autocast_dtype("auto", "cpu") is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16  # no CUDA needed to decide
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    cfg = config_from_dict({"scoring": {"precision": "bf16", "channels_last": True}})
    assert cfg.scoring == ScoringConfig(precision="bf16", channels_last=True)


def test_bf16_context_keeps_trend_gradient_and_phi_in_fp32() -> None:
    """Under bf16 scoring, trend's gradient pass and φ(x0) are bit for bit the fp32 ones."""
    cfg = tiny_cfg("trend", **trend_instances(levels=[25, 100, 200]))
    fp32 = tiny_context(cfg, ["pixel"], ScoringConfig(precision="fp32"))
    bf16 = tiny_context(cfg, ["pixel"], ScoringConfig(precision="bf16"))
    assert bf16.autocast_dtype is torch.bfloat16 and fp32.autocast_dtype is None
    x, ids = images(2), ["a", "b"]
    probe = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    outs = []
    for ctx in (fp32, bf16):
        cache = BatchCache(ctx, x, ids)
        shared, grad = cache.eps_and_input_grad("pixel", 100, "gaussian", probe)
        outs.append((shared["eps"], grad, cache.features_x0()["layer2"]))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
    # ...while an ordinary UNet call does run in bf16 (different rounding).
    e32 = BatchCache(fp32, x, ids).forward_eps("pixel", 100, "gaussian")["eps"]
    e16 = BatchCache(bf16, x, ids).forward_eps("pixel", 100, "gaussian")["eps"]
    assert not torch.equal(e32, e16) and torch.corrcoef(torch.stack([e32.flatten(), e16.flatten()]))[0, 1] > 0.99


@pytest.mark.slow
def test_full_length_200_step_chain_bf16_matches_fp32() -> None:
    """mvtec.yaml's static chain (t0 = 200, 200 ancestral steps) on a tiny random model: the bf16
    maps agree with fp32 (errors of 200 bf16 steps do not build up)."""
    cfg = tiny_cfg(**{"static-gaussian": {"method": "static", "model": "pixel", "t0": 200, "steps": 200, "sampler": "ddpm"}})
    x, ids = images(2, seed=3), ["a", "b"]
    maps = {}
    for precision in ("fp32", "bf16"):
        ctx = tiny_context(cfg, ["pixel"], ScoringConfig(precision=precision))
        res = score_batch(ctx, x, ids, ["static-gaussian"])["static-gaussian"]
        assert res.forwards_per_image == 200
        maps[precision] = torch.from_numpy(res.maps)
    assert torch.isfinite(maps["bf16"]).all()
    corr = torch.corrcoef(torch.stack([maps["fp32"].flatten().double(), maps["bf16"].flatten().double()]))[0, 1]
    assert corr >= 0.95, float(corr)
    span = float(maps["fp32"].max() - maps["fp32"].min())
    assert float((maps["fp32"].amax((1, 2)) - maps["bf16"].amax((1, 2))).abs().max()) <= 0.05 * span


# ------------------------------------------------------------------ 2. noise on the device


@pytest.mark.parametrize("kind", ["gaussian", "simplex", "gmm"])
def test_noise_is_per_image_and_deterministic_with_many_threads(kind: str) -> None:
    """With 2 threads (torch may split a batched reduction differently for different numbers of
    maps), an image's noise is still bit for bit the same in any batch."""
    cfg = tiny_cfg().model_spec("pixel")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seeds = [11, 22, 33, 44, 55]
        together = sample_noise(kind, (5, 3, 64, 64), seeds, cfg)
        again = sample_noise(kind, (5, 3, 64, 64), seeds, cfg)
        alone = sample_noise(kind, (1, 3, 64, 64), [33], cfg)
        mixed = sample_noise(kind, (3, 3, 64, 64), [55, 33, 99], cfg)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(together, again)
    assert torch.equal(together[2], alone[0]) and torch.equal(together[2], mixed[1])
    assert torch.equal(together[4], mixed[0])


def test_gaussian_noise_comes_from_a_generator_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import raydiff.noise as N

    devices: list[str] = []
    real = N.generator

    def spy(seed: int, device: Any = "cpu") -> torch.Generator:
        devices.append(str(torch.device(device)))
        return real(seed, device)

    monkeypatch.setattr(N, "generator", spy)
    out = N.sample_noise("gaussian", (2, 1, 8, 8), [1, 2], tiny_cfg().model_spec("pixel"), device=torch.device("cpu"))
    assert devices == ["cpu", "cpu"]
    assert torch.equal(out[1, 0], torch.randn((1, 8, 8), generator=generator(2))[0])


def test_batched_standardise_and_gmm_field_are_per_map() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(7, 3, 33, 31, generator=g) * 5 + 2
    out = standardise(maps)
    for i in range(7):
        assert torch.equal(out[i], standardise(maps[i : i + 1])[0])
    flat = out.reshape(21, -1).double()
    torch.testing.assert_close(flat.mean(1), torch.zeros(21, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(21, dtype=torch.float64), atol=1e-5, rtol=0)
    x = torch.rand(4, 1000, generator=g, dtype=torch.float64)
    torch.testing.assert_close(pairwise_sum(x), x.sum(-1), rtol=1e-12, atol=0)
    cfg = tiny_cfg().model_spec("pixel-gmm").gmm
    parts = [draw_gmm_maps(generator(s), 3, 20, 24, cfg) for s in (1, 2, 3)]
    both = gmm_field(GMMMaps.cat(parts), 20, 24)
    assert torch.equal(both[3:6], gmm_field(parts[1], 20, 24))
    with pytest.raises(ValueError, match="constant"):
        standardise(torch.ones(2, 4, 4))


def test_noise_draws_are_counted_by_the_batch_cache() -> None:
    cfg = tiny_cfg(**{"static-simplex": {"method": "static", "model": "pixel-simplex", "t0": 20, "steps": 4, "sampler": "ddpm"}})
    ctx = tiny_context(cfg, ["pixel-simplex"])
    _, cache, _ = raw_components(ctx, images(2), ["a", "b"], ["static-simplex"])
    # One shared forward draw (x_t0) + one per ancestral step but the last.
    assert cache.noise_draws == {("simplex", (2, 3, 16, 16)): 4}


# ------------------------------------------------------------------ 3. no host syncs in loops


def _syncs(fn: Any) -> list[str]:
    with SyncCounter() as counter:
        fn()
    return counter.ops


@pytest.mark.parametrize("variant,kind", [("static-gaussian", "pixel"), ("static-simplex", "pixel-simplex"),
                                          ("static-gmm", "pixel-gmm"), ("no-diffusion", "pixel")])
def test_reverse_chains_read_nothing_back_per_step(variant: str, kind: str) -> None:
    counts = []
    for steps in (3, 9):
        sampler = "ddim" if variant == "no-diffusion" else "ddpm"
        # smoothing_size 11: the method's default (the built-in static-gmm's is 5).
        cfg = tiny_cfg(**{variant: {"method": BUILTIN_VARIANTS[variant].method, "model": kind, "t0": 30, "steps": steps,
                                    "sampler": sampler, "smoothing_size": 11}})
        ctx = tiny_context(cfg, [kind])
        counts.append(len(_syncs(lambda c=ctx: raw_components(c, images(2), ["a", "b"], [variant]))))
    assert counts[0] == counts[1] == 0, counts


def test_dynad_reconstruction_masks_finished_images_without_syncs() -> None:
    """Images with fewer steps than the others (T̂ < S) are masked, not branched on: the only read
    is the number of steps, before the loop; and the result equals each image run alone."""
    torch.manual_seed(0)
    from raydiff.models.presets import build_unet

    unet = build_unet("tiny", 3, 3, 16, base_channels=8).eval().requires_grad_(False)
    sched = D.Schedule.build("linear", 1000)
    eps_fn = lambda z, t: unet(z, t).sample  # noqa: E731
    z0 = images(4, seed=2)
    t_hat = torch.tensor([40, 3, 0, 80])
    counts = {}
    for steps in (4, 8):
        with SyncCounter() as c:
            out = dynad.reconstruct(eps_fn, sched, z0, t_hat, steps, w=2.0)
        counts[steps] = len(c.ops)
        for i in range(4):
            alone = dynad.reconstruct(eps_fn, sched, z0[i : i + 1], t_hat[i : i + 1], steps, w=2.0)
            torch.testing.assert_close(out[i : i + 1], alone, rtol=1e-5, atol=1e-5)
    assert counts == {4: 1, 8: 1}, counts
    assert torch.equal(out[2], z0[2])  # T̂ = 0: no step at all


@pytest.mark.trains
def test_training_step_reads_nothing_back_per_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training loop's host reads do not grow with the number of steps (loss values are
    fetched every train.log_every steps). AdamW runs its fused kernel here, as on CUDA with
    train.fused_adamw (the default kernels keep a step counter on the host and read it)."""
    import raydiff.train.loop as loop
    from raydiff.data.manifest import scan_mvtec
    from raydiff.data.splits import assign_holdout
    from raydiff.data.textures import make_textures

    root = make_textures(tmp_path / "data", size=16, n_train=8, n_test_good=1, n_test_defect=1, categories=("brick",))
    manifest = assign_holdout(scan_mvtec(root), fraction=0.25, min_count=2, seed=0)
    monkeypatch.setattr(loop, "make_optimizer", lambda p, mc, fused, dev: torch.optim.AdamW(p, lr=mc.lr, fused=True))
    counts = {}
    for steps in (3, 7):
        cfg = config_from_dict({
            "dataset": {"root": str(root), "image_size": 16},
            "models": {"preset": "tiny", "base_channels": 8, "train_steps": steps, "batch_size": 2,
                       "checkpoint_every": steps},
            "train": {"log_every": 1000},
            "output": {"root": str(tmp_path / f"out{steps}")},
        })
        for kind in ("pixel", "pixel-simplex"):
            ops = _syncs(lambda c=cfg, k=kind: loop.train_one(Prepared.of(c, manifest), "brick", k, device="cpu", resume=False))
            counts[(steps, kind)] = len(ops)
    assert counts[(3, "pixel")] == counts[(7, "pixel")], counts
    assert counts[(3, "pixel-simplex")] == counts[(7, "pixel-simplex")], counts


# ------------------------------------------------------------------ 4. levers


def test_channels_last_gives_the_same_maps() -> None:
    cfg = tiny_cfg(**{"static-gaussian": {"method": "static", "model": "pixel", "t0": 20, "steps": 3}})
    x, ids = images(2), ["a", "b"]
    plain = score_batch(tiny_context(cfg, ["pixel"]), x, ids, ["static-gaussian"])["static-gaussian"]
    cl_ctx = tiny_context(cfg, ["pixel"], ScoringConfig(channels_last=True))
    weight = next(p for p in cl_ctx.models["pixel"].unet.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    cl = score_batch(cl_ctx, x, ids, ["static-gaussian"])["static-gaussian"]
    torch.testing.assert_close(torch.from_numpy(cl.maps), torch.from_numpy(plain.maps), rtol=1e-4, atol=1e-4)


def test_compile_setting_compiles_each_unet_once_and_scores_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """scoring.compile wraps every UNet once per context (static shapes) and every UNet call goes
    through the wrapper. The wrapper here counts calls (real compilation is measured by the
    device check; on this CPU inductor's C++ build of a UNet takes minutes)."""
    compiled: list[dict[str, Any]] = []

    def fake_compile(module: torch.nn.Module, **kwargs: Any) -> Any:
        record = {"kwargs": kwargs, "calls": 0}
        compiled.append(record)

        def run(*args: Any) -> Any:
            record["calls"] += 1
            return module(*args)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = tiny_cfg(**{"static-gaussian": {"method": "static", "model": "pixel", "t0": 20, "steps": 3}},
                   kl={"method": "kl", "model": "pixel", "timesteps": [5, 20]})
    cfg = dataclasses.replace(cfg, variants=dataclasses.replace(cfg.variants, enabled=("static-gaussian", "kl")))
    ctx = tiny_context(cfg, ["pixel"], ScoringConfig(compile=True))
    assert [c["kwargs"] for c in compiled] == [{"dynamic": False}]
    _, cache, _ = raw_components(ctx, images(2), ["a", "b"], ["static-gaussian", "kl"])
    assert compiled[0]["calls"] == sum(cache.forwards.values()) == 4  # 20 is shared by both


def test_foreach_ema_and_fused_adamw_fallback() -> None:
    from raydiff.models.presets import build_unet
    from raydiff.train.loop import ema_update, make_optimizer

    torch.manual_seed(0)
    online = build_unet("tiny", 1, 1, 16, base_channels=8)
    a, b = (build_unet("tiny", 1, 1, 16, base_channels=8) for _ in range(2))
    b.load_state_dict(a.state_dict())
    ema_update(a, online, 0.9, foreach=True)
    ema_update(b, online, 0.9, foreach=False)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    mc = tiny_cfg().model_spec("pixel")
    opt = make_optimizer(online.parameters(), mc, fused=True, device=torch.device("cpu"))
    assert not opt.defaults.get("fused")  # CUDA only: the CPU keeps torch's default kernels


def test_loss_log_fetches_in_bulk_and_names_a_non_finite_step(tmp_path: Path) -> None:
    from raydiff.train.loop import LossLog

    rows: list[dict[str, float]] = []
    log = LossLog(rows, lr=1e-3)
    log.add(1, 0.1, torch.tensor(0.5), torch.tensor(0.01))
    log.add(2, 0.2, torch.tensor(0.4), torch.zeros(()))
    assert rows == []  # nothing read back before the flush
    log.flush("c/pixel", tmp_path)
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 0.5), (2, pytest.approx(0.4))]
    log.add(3, 0.3, torch.tensor(float("nan")), torch.zeros(()))
    with pytest.raises(FloatingPointError, match="loss is nan at step 2"):
        log.flush("c/pixel", tmp_path)
    assert len(rows) == 2


def test_bench_reads_mvtec_yaml_without_its_dataset_and_honours_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from raydiff.bench.engine import bench_config, bench_scoring
    from raydiff.config import load_config

    monkeypatch.delenv("MVTEC_ROOT", raising=False)
    repo = Path(__file__).resolve().parents[1]
    cfg = bench_config(repo / "configs" / "mvtec.yaml", {"dataset.image_size": 16, "models.preset": "tiny"})
    ref = load_config(repo / "configs" / "mvtec.yaml", {"dataset.root": "/anywhere"})
    assert cfg.variants == ref.variants and cfg.features.weights is None
    said: list[str] = []
    res = bench_scoring(cfg, "cpu", batch=3, n_images=2, variants=["kl"], peak_tflops=1.0, say=said.append)
    assert res["batch"] == 3 and res["n_images"] == 3 and "not capped" in said[0]
    row = res["rows"][-1]
    assert row["unet_forwards_per_image"] == 3 and row["unet_backwards_per_image"] == 0 and row["mfu"] > 0
