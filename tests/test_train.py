"""Training: loss decreases, hybrid loss, exact resume, skip of finished folders, Ray sweep."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import polars as pl
import pytest
import torch

from raydiff import diffusion as D
from raydiff.config import Config, config_from_dict, config_to_dict
from raydiff.data.manifest import scan_mvtec
from raydiff.data.prepared import Prepared
from raydiff.data.splits import assign_holdout
from raydiff.data.textures import make_textures
from raydiff.io import is_complete
from raydiff.models.checkpoint import load_model, load_training_state
from raydiff.models.presets import build_unet
from raydiff.paths import model_dir
from raydiff.train.loop import augment_batch, diffusion_loss, train_one

pytestmark = pytest.mark.trains



@pytest.fixture(scope="module")
def textures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_textures(tmp_path_factory.mktemp("data") / "textures", size=32, n_train=16, n_test_good=2,
                         n_test_defect=2, categories=("brick", "grass"))


@pytest.fixture(scope="module")
def manifest(textures: Path) -> pl.DataFrame:
    return assign_holdout(scan_mvtec(textures), fraction=0.25, min_count=4, seed=0)


def make_cfg(tmp_path: Path, textures: Path, **models: object) -> Config:
    m = {"preset": "tiny", "train_steps": 4, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 2,
         "ema_decay": 0.9, "vae": {"vae_train_steps": 2}, **models}
    return config_from_dict({
        "dataset": {"root": str(textures), "image_size": 32},
        "models": m,
        "output": {"root": str(tmp_path / "out")},
        "variants": {"enabled": ["static-gaussian"]},
    })


def _loss_rows(folder: Path) -> list[dict[str, float]]:
    with (folder / "loss.csv").open() as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_loss_decreases_on_textures(tmp_path: Path, textures: Path, manifest: pl.DataFrame) -> None:
    cfg = make_cfg(tmp_path, textures, train_steps=50, batch_size=8, lr=2e-3, checkpoint_every=50)
    folder = train_one(Prepared.of(cfg, manifest), "brick", "pixel", device="cpu")
    assert folder == model_dir(cfg, "brick", "pixel") and is_complete(folder)
    rows = _loss_rows(folder)
    assert [r["step"] for r in rows] == list(range(1, 51))
    first = sum(r["loss"] for r in rows[:10]) / 10
    last = sum(r["loss"] for r in rows[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert all(r["loss_vlb"] > 0 for r in rows)
    assert (folder / "loss.png").stat().st_size > 1000
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["n_train_images"] == 12  # 16 train/good minus 4 holdout: holdout is never trained on
    assert meta["noise"]["kind"] == "gaussian"
    assert meta["learned_variance"] and meta["step"] == 50 and meta["versions"]["diffusers"]
    model = load_model(folder)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        eps, v = model.model_output(x, torch.tensor([10, 500]))
    assert eps.shape == v.shape == (2, 1, 32, 32) and torch.isfinite(v).all()
    # A finished folder is skipped: nothing is rewritten.
    stamp = (folder / "meta.json").stat().st_mtime_ns
    assert train_one(Prepared.of(cfg, manifest), "brick", "pixel", device="cpu") == folder
    assert (folder / "meta.json").stat().st_mtime_ns == stamp


def test_hybrid_loss_shapes_and_stop_gradient() -> None:
    torch.manual_seed(0)
    s = D.Schedule.build("linear", 1000)
    unet = build_unet("tiny", 3, 6, 16)
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 300, 999])
    x_t = D.q_sample(s, x0, t, noise)
    out = unet(x_t, t).sample
    assert out.shape == (4, 6, 16, 16)
    out.retain_grad()
    loss, simple, vlb = diffusion_loss(s, out, x0, x_t, t, noise, learned_variance=True, vlb_weight=0.001)
    assert torch.isfinite(vlb) and vlb > 0 and torch.isfinite(loss)
    torch.testing.assert_close(loss, simple + 0.001 * 1000 * vlb)
    # L_vlb trains only v: its gradient w.r.t. the ε channels is zero (stop-gradient on the mean).
    vlb.backward()
    assert out.grad[:, :3].abs().max() == 0 and out.grad[:, 3:].abs().max() > 0
    eps_only = unet.conv_out.out_channels // 2
    loss2, simple2, vlb2 = diffusion_loss(s, out[:, :eps_only].detach(), x0, x_t, t, noise, False, 0.001)
    assert vlb2 == 0 and loss2 == simple2


def test_augmentation_is_a_dihedral_map() -> None:
    from raydiff.config import AugmentConfig

    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(x, AugmentConfig(False, False, False), g), x)
    y = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(3))
    for i in range(2):
        images = [torch.rot90(f, k, (-2, -1)) for f in (x[i], x[i].flip(-1)) for k in range(4)]
        assert any(torch.equal(y[i], im) for im in images)


def test_killed_run_resumes_exactly(tmp_path: Path, textures: Path, manifest: pl.DataFrame) -> None:
    """Killed after its first checkpoint, a run continues at that step and ends where an
    uninterrupted run ends (every draw is seeded by the step)."""
    cfg = make_cfg(tmp_path, textures)
    calls: list[int] = []

    def fail_once(folder: Path, step: int, metrics: dict[str, float]) -> None:
        calls.append(step)
        if len(calls) == 1:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_one(Prepared.of(cfg, manifest), "grass", "pixel-gmm", device="cpu", on_checkpoint=fail_once)
    folder = model_dir(cfg, "grass", "pixel-gmm")
    assert not is_complete(folder) and load_training_state(folder).step == 2
    train_one(Prepared.of(cfg, manifest), "grass", "pixel-gmm", device="cpu", on_checkpoint=fail_once)
    assert calls == [2, 4] and is_complete(folder)
    meta = json.loads((folder / "meta.json").read_text())
    assert [s["start_step"] for s in meta["segments"]] == [0, 2]
    assert meta["noise_kind"] == "gmm" and not meta["learned_variance"]
    assert [r["step"] for r in _loss_rows(folder)] == [1, 2, 3, 4]

    other = tmp_path / "uninterrupted"
    train_one(Prepared.of(cfg, manifest), "grass", "pixel-gmm", out_dir=other, device="cpu")
    resumed, straight = load_model(folder).unet, load_model(other).unet
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [r["loss"] for r in _loss_rows(folder)] == [r["loss"] for r in _loss_rows(other)]


def test_latent_kind_trains_vae_and_unet(tmp_path: Path, textures: Path, manifest: pl.DataFrame) -> None:
    cfg = make_cfg(tmp_path, textures, train_steps=2)
    folder = train_one(Prepared.of(cfg, manifest), "brick", "latent", device="cpu")
    model = load_model(folder)
    assert model.vae is not None and model.latent_scale > 0 and not model.learned_variance
    assert model.meta["vae"]["source"] == "trained" and model.vae.config.scaling_factor == model.latent_scale
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, 4, 8, 8)
        eps, v = model.model_output(z, torch.tensor([5, 50]))
        assert eps.shape == z.shape and v is None
        assert model.decode(z).shape == (2, 1, 32, 32)


def test_checkpoint_of_another_config_is_not_resumed(tmp_path: Path, textures: Path, manifest: pl.DataFrame) -> None:
    from raydiff.errors import CheckpointError

    cfg = make_cfg(tmp_path, textures, train_steps=4, checkpoint_every=2)
    out = tmp_path / "shared-folder"

    def stop(folder: Path, step: int, metrics: dict[str, float]) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        train_one(Prepared.of(cfg, manifest), "brick", "pixel", out_dir=out, device="cpu", on_checkpoint=stop)
    with pytest.raises(CheckpointError, match="model_id"):
        train_one(Prepared.of(make_cfg(tmp_path, textures, lr=5e-4), manifest), "brick", "pixel", out_dir=out, device="cpu")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("training_runs", [0, 2])
def test_ray_sweep_resumes_and_skips(tmp_path: Path, textures: Path, manifest: pl.DataFrame, training_runs: int) -> None:
    """2 categories × 2 kinds on a local Ray (one Train run each, or packed into 2 runs): one
    worker is killed after its first checkpoint (FailureConfig restarts it; it resumes from its
    model folder, the step counter continues; a packed run skips what it finished); a second
    launch skips all four."""
    import ray

    from faults import fail_once_after_checkpoint

    from raydiff.train.launch import train_all

    cfg = make_cfg(tmp_path, textures, train_steps=4, checkpoint_every=2)
    cfg = config_from_dict({**config_to_dict(cfg), "ray": {"cpus_per_training": 0.5,  # all at once
                                                            "training_runs": training_runs}})
    flag = tmp_path / "failed-once"
    # The dashboard is on because Ray 2.60 Train V2's PlacementGroupCleaner polls the state API
    # (served by the dashboard); without it the cleaners never exit and a 2-CPU node stalls.
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    try:
        folders = train_all(Prepared.of(cfg, manifest), ["brick", "grass"], ["pixel", "latent"],
                            on_checkpoint=fail_once_after_checkpoint(flag))
        assert len(folders) == 4 and all(is_complete(f) for f in folders)
        assert flag.is_file()
        starts = {f"{f.parent.name}/{f.name}": [s["start_step"] for s in json.loads((f / "meta.json").read_text())["segments"]]
                  for f in folders}
        assert sorted(starts.values()) == [[0], [0], [0], [0, 2]], starts
        for f in folders:
            assert [r["step"] for r in _loss_rows(f)] == [1, 2, 3, 4]
        # Checkpoints are written once, to the model folders (the resume above read them): Ray holds
        # no copy, and Tune's automatic loggers wrote nothing.
        results = tmp_path / "out" / "ray_results"
        assert list(results.glob("train-*")), "the Train runs kept their state under ray_results"
        assert not list(results.rglob("checkpoint_*")), "a checkpoint was copied into ray_results"
        assert not list(results.rglob("events.out.tfevents*")) and not list(results.rglob("progress.csv"))
        stamps = {f: (f / "_SUCCESS").stat().st_mtime_ns for f in folders}
        start = time.perf_counter()
        assert train_all(Prepared.of(cfg, manifest), ["brick", "grass"], ["pixel", "latent"]) == folders
        assert time.perf_counter() - start < 5 and all((f / "_SUCCESS").stat().st_mtime_ns == stamps[f] for f in folders)
    finally:
        ray.shutdown()


def test_pack_jobs_balances_cost_and_keeps_every_job(tmp_path: Path, textures: Path) -> None:
    from raydiff.train.launch import estimated_cost, pack_jobs, training_order

    cfg = make_cfg(tmp_path, textures, train_steps=300)
    jobs = [{"category": c, "kind": k} for c in ("a", "b", "c") for k in ("pixel", "pixel-simplex", "pixel-gmm", "latent")]
    one_each = [[j] for j in training_order(cfg, jobs)]
    assert pack_jobs(cfg, jobs, 0) == one_each == pack_jobs(cfg, jobs, 12) == pack_jobs(cfg, jobs, 50)
    assert sorted(map(str, jobs)) == sorted(str(g[0]) for g in one_each)
    # Unpacked runs: category by category, the longest training of a category first.
    assert [g[0]["category"] for g in one_each] == sorted(j["category"] for j in jobs)
    for c in ("a", "b", "c"):
        costs = [estimated_cost(cfg, g[0]["kind"]) for g in one_each if g[0]["category"] == c]
        assert costs == sorted(costs, reverse=True)
    for runs in (1, 2, 5):
        groups = pack_jobs(cfg, jobs, runs)
        assert len(groups) == runs and pack_jobs(cfg, jobs, runs) == groups  # deterministic
        flat = [j for g in groups for j in g]
        assert sorted(map(str, flat)) == sorted(map(str, jobs))  # each job exactly once
        loads = [sum(estimated_cost(cfg, j["kind"]) for j in g) for g in groups]
        biggest = max(estimated_cost(cfg, j["kind"]) for j in jobs)
        assert max(loads) - min(loads) <= biggest  # greedy longest-first bound
