"""One model per (category, model kind): a plain PyTorch training loop, no Ray.

``train_one(prepared, category, kind)`` trains the model kind on the category's ``train`` rows of
the prepared dataset (``raydiff.data.prepared``; ``holdout`` rows are never trained on) and leaves a checkpoint folder
(raydiff.models.checkpoint) with a success marker. The Ray launcher (raydiff.train.launch) runs
exactly this function inside a TorchTrainer worker.

Kinds (docs/methods.md, Models):

==============  =====================  ===============  =========================================
kind            noise (x_t and target)  UNet output      loss
==============  =====================  ===============  =========================================
pixel           gaussian               ε and v (2·C)    L_simple + λ·L_vlb (iDDPM L_hybrid)
pixel-simplex   simplex                ε (C)            L_simple
pixel-gmm       gmm                    ε (C)            L_simple
latent          gaussian (on latents)  ε (latent C)     L_simple; VAE trained/loaded first
==============  =====================  ===============  =========================================

The latent UNet predicts ε only: its only consumer, DynAD's scoring, runs deterministic DDIM,
which never uses a variance.

L_hybrid (Nichol & Dhariwal eq. 16) = L_simple + λ L_vlb with L_vlb = Σ_t L_t estimated as
T · L_t for the sampled t (improved-diffusion multiplies the per-t term by T/1000 with λ folded
in, which is the same for λ = 0.001). L_t uses the learned variance with a stop-gradient on the
predicted mean, so L_vlb trains only v. L_simple = mean (ε - ε_θ)² (DDPM eq. 14).

Determinism: every random draw of step k (batch indices, augmentation, t, noise) comes from
generators seeded with derive_seed(run seed, dataset, category, kind, k), so a run resumed from
a checkpoint continues exactly as if it had never stopped. EMA (decay d) uses diffusers'
EMAModel warm-up min(d, (1 + k)/(10 + k)).

Learning rate: AdamW at ``models.lr``, or (``lr_schedule: linear``) lr·(1 - k/N) at step k of the
category's N steps (guided-diffusion's ``_anneal_lr``; loss.csv logs each step's rate). Initial
weights: random, or a pretrained checkpoint (``models.NAME.init``, ``raydiff.models.guided``); the
EMA starts from the same weights.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from raydiff import diffusion as D
from raydiff.config import AugmentConfig, Config, config_to_dict, model_id
from raydiff.errors import CheckpointError, DatasetError
from raydiff.io import is_complete, write_marker
from raydiff.models import checkpoint as ckpt
from raydiff.models import latent as L
from raydiff.models.guided import init_unet
from raydiff.models.latent import match_channels
from raydiff.models.presets import build_unet, describe_unet
from raydiff.noise import describe_noise, sample_noise
from raydiff.paths import model_dir
from raydiff.placement import utc_now
from raydiff.seeding import derive_seed, generator

if TYPE_CHECKING:
    from raydiff.data.prepared import Prepared

#: Model kind → noise kind used for x_t, as the regression target and in the reverse process.
LOSS_COLUMNS = ("step", "loss", "loss_vlb", "lr", "seconds")

#: Called after every checkpoint: (folder, step, metrics). May raise (fault injection).
CheckpointHook = Callable[[Path, int, dict[str, float]], None]


# --------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------


def sample_training_noise(
    kind: str, shape: tuple[int, ...], seeds: Sequence[int], models_cfg: Any, device: torch.device | str
) -> Tensor:
    """Noise of ``kind`` (B,C,H,W), one seed per image (raydiff.noise.sample_noise)."""
    return sample_noise(kind, shape, list(seeds), models_cfg, device=device)  # type: ignore[arg-type]


def augment_batch(x: Tensor, aug: AugmentConfig, g: torch.Generator) -> Tensor:
    """Random flips / 90° rotations per image (Kashihara), drawn from ``g``; (B,C,S,S) → same.

    Per image: horizontal flip, then vertical flip, then k·90° (k ∈ 0..3), each as drawn. The
    draws are made on ``g``'s device and applied as masks over the whole batch (the flipped and
    rotated batches are selected per image with ``torch.where``), so nothing is read back to
    the host. Square images only (rotations keep the shape).
    """
    if not (aug.hflip or aug.vflip or aug.rotate90):
        return x
    draws = torch.randint(0, 2, (x.shape[0], 2), generator=g, device=g.device).to(x.device)
    rots = torch.randint(0, 4, (x.shape[0],), generator=g, device=g.device).to(x.device)
    per_image = (-1,) + (1,) * (x.dim() - 1)
    if aug.hflip:
        x = torch.where(draws[:, 0].view(per_image) == 1, x.flip(-1), x)
    if aug.vflip:
        x = torch.where(draws[:, 1].view(per_image) == 1, x.flip(-2), x)
    if aug.rotate90:
        out = x
        for k in (1, 2, 3):
            out = torch.where(rots.view(per_image) == k, torch.rot90(x, k, dims=(-2, -1)), out)
        x = out
    return x


def load_train_images(prepared: Prepared, category: str) -> tuple[Tensor, int]:
    """The category's ``train`` images as one float32 tensor (N,C,S,S) in [-1, 1], and C."""
    # lazy: data.images needs PIL and polars, which the GPU check's machine (whose bench.train
    # imports this module) does not have
    from raydiff.data.images import load_image

    cfg = prepared.cfg
    train = prepared.rows(category, "train")
    if train.height == 0:
        raise DatasetError(
            f"category {category}", "has no training images (split == 'train').",
            "check dataset.root and the category name; train/good must hold normal images.",
        )
    channels = prepared.channels_of(category)
    arrays = [load_image(p, cfg.dataset.image_size, channels, cfg.dataset.resize) for p in train["image_path"]]
    return torch.from_numpy(np.stack(arrays)), channels


def ema_update(ema: torch.nn.Module, online: torch.nn.Module, decay: float, foreach: bool = True) -> None:
    """ema ← decay·ema + (1 - decay)·online (parameters; buffers copied).

    ``foreach``: all parameters in one ``torch._foreach_lerp_`` call (one multi-tensor kernel
    launch per few hundred tensors on CUDA instead of one per tensor; the same values).
    """
    with torch.no_grad():
        pe = list(ema.parameters())
        po = [p.detach() for p in online.parameters()]
        if len(pe) != len(po):
            raise ValueError(f"EMA model has {len(pe)} parameters, the online model {len(po)}")
        if foreach and pe:
            torch._foreach_lerp_(pe, po, 1.0 - decay)
        else:
            for a, b in zip(pe, po, strict=True):
                a.lerp_(b, 1.0 - decay)
        for be, bo in zip(ema.buffers(), online.buffers(), strict=True):
            be.copy_(bo)


def make_optimizer(params: Any, mc: Any, fused: bool, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with ``models.lr`` / ``models.weight_decay``; the fused CUDA kernel when ``fused``
    and the device is CUDA (``train.fused_adamw``), else torch's default (foreach) kernels."""
    use_fused = fused and device.type == "cuda"
    return torch.optim.AdamW(params, lr=mc.lr, weight_decay=mc.weight_decay, **({"fused": True} if use_fused else {}))


class LossLog:
    """Per-step loss values kept on the device and fetched to the host in one go every
    ``train.log_every`` steps (and before each checkpoint): one host sync per flush instead of
    several per step. A non-finite loss is reported at the flush, naming its step; no
    checkpoint is written between a bad step and its flush, so the last good one is kept."""

    def __init__(self, rows: list[dict[str, float]], lr: float) -> None:
        self.rows, self.lr = rows, lr
        self._pending: list[tuple[int, float, Tensor, Tensor, float]] = []

    def add(self, step: int, seconds: float, loss: Tensor, vlb: Tensor, lr: float | None = None) -> None:
        """Step ``step``'s losses; ``lr``: the learning rate it used (default: the constructor's)."""
        self._pending.append((step, seconds, loss.detach(), vlb.detach(), self.lr if lr is None else lr))

    def flush(self, where: str, folder: Path) -> None:
        if not self._pending:
            return
        values = torch.stack([torch.stack([p[2].float(), p[3].float()]) for p in self._pending]).cpu().tolist()
        for (step, seconds, _, _, lr), (loss, vlb) in zip(self._pending, values, strict=True):
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"{where}: loss is {loss} at step {step - 1}; lower models.lr or models.grad_clip "
                    f"(the last good checkpoint in {folder} is kept)."
                )
            self.rows.append({"step": step, "loss": loss, "loss_vlb": vlb, "lr": lr, "seconds": seconds})
        self._pending.clear()


def ema_decay_at(step: int, decay: float) -> float:
    """diffusers EMAModel warm-up: min(decay, (1 + step) / (10 + step))."""
    return min(decay, (1 + step) / (10 + step))


def diffusion_loss(
    s: D.Schedule, model_out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor, learned_variance: bool,
    vlb_weight: float, loss: str = "l2",
) -> tuple[Tensor, Tensor, Tensor]:
    """(total, L_simple, L_t in bits/dim) for one batch; see the module docstring. ``loss``: the
    ε term, ``l2`` (DDPM's L_simple) or ``l1`` (Kashihara eq. 7)."""
    eps, v = D.split_model_output(model_out.float(), x0.shape[1], learned_variance)
    simple = (eps - noise).abs().mean() if loss == "l1" else (eps - noise).square().mean()
    if v is None:
        return simple, simple, torch.zeros((), device=x0.device)
    frozen = torch.cat([eps.detach(), v], dim=1)  # stop-gradient on the mean (iDDPM §3.1)
    pm = D.p_mean_variance(s, frozen, x_t, t, learned_variance=True)
    vlb = D.vlb_term(s, x0, x_t, t, pm.mean, pm.log_var).mean()
    return simple + vlb_weight * s.timesteps * vlb, simple, vlb


def plot_loss(rows: list[dict[str, float]], path: Path, title: str) -> None:
    """Loss per step (light) and its running mean (dark), log scale; PNG via matplotlib Agg."""
    import matplotlib  # lazy: not on the GPU check's machine (bench.train imports this module)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot(steps, loss, lw=0.5, alpha=0.4, label="loss")
    ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def loss_csv(rows: list[dict[str, float]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOSS_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in LOSS_COLUMNS})
    return buf.getvalue()


def read_loss_csv(path: Path, up_to_step: int) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return [r for r in rows if r["step"] <= up_to_step]


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_resumable(folder: Path, meta: dict[str, Any], expect: dict[str, Any]) -> None:
    for key in ("kind", "channels", "image_size", "preset", "model_id"):
        if meta.get(key) != expect[key]:
            raise CheckpointError(
                folder / ckpt.META,
                f"holds a checkpoint with {key} = {meta.get(key)!r}, but this run has {expect[key]!r}.",
                "delete the folder (or choose another output root) to train this configuration.",
            )


def train_one(
    prepared: Prepared,
    category: str,
    kind: str,
    out_dir: Path | None = None,
    device: torch.device | str | None = None,
    resume: bool = True,
    on_checkpoint: CheckpointHook | None = None,
    progress: Callable[[str], None] | None = None,
    where: dict[str, Any] | None = None,
) -> Path:
    """Train model ``kind`` for ``category``; return its checkpoint folder.

    A folder with a success marker is returned at once (nothing is trained). With ``resume``
    a folder holding a checkpoint continues from its step; otherwise it is overwritten. A
    checkpoint is written every ``checkpoint_every`` steps (of the model's spec) and at the end, then
    ``on_checkpoint(folder, step, metrics)`` is called; the marker is written last.

    ``meta.json`` records each training segment (a start or a resume): the step it started at,
    the torch device, UTC start/end times and ``where`` (the Ray node id and GPU ids of a Ray
    worker).
    """
    cfg = prepared.cfg
    folder = Path(out_dir) if out_dir is not None else model_dir(cfg, category, kind)
    if is_complete(folder):
        return folder
    if kind not in cfg.models.names:
        raise ValueError(f"unknown model {kind!r}; this config's models: {', '.join(cfg.models.names)}")
    say = progress or (lambda _msg: None)
    mc = cfg.models.spec(kind)
    dev = torch.device(device) if device is not None else _default_device()
    autocast_dtype = torch.bfloat16 if dev.type == "cuda" else None
    ckpt.recover(folder)

    from raydiff.runs import versions  # polars/pyarrow: not needed by the step functions above

    images, channels = load_train_images(prepared, category)
    images = images.to(dev)
    # The budget of this category: train_steps, or train_epochs over its training images.
    total_steps = mc.steps_for(int(images.shape[0]))
    seed = derive_seed(cfg.seed, "train", cfg.dataset.dataset_name, category, kind)
    noise_kind = mc.noise
    learned_variance = mc.learned_variance
    aug = mc.augment_for(category)
    schedule = D.Schedule.from_config(mc).to(dev)
    meta: dict[str, Any] = {
        "format": ckpt.FORMAT_VERSION, "kind": kind, "category": category, "dataset": cfg.dataset.dataset_name,
        "model_id": model_id(cfg, kind, category), "arch": mc.arch, "variance": mc.variance, "seed": seed, "run_seed": cfg.seed, "noise_kind": noise_kind,
        "learned_variance": learned_variance, "channels": channels, "image_size": cfg.dataset.image_size,
        "preset": mc.preset, "schedule": schedule.describe(), "train_steps": total_steps,
        "train_epochs": mc.train_epochs, "n_train_images": int(images.shape[0]), "augment": config_to_dict(aug), "config": config_to_dict(cfg),
        "versions": versions(),
    }
    start_state = ckpt.load_training_state(folder, dev) if resume and ckpt.has_checkpoint(folder) else None
    if start_state is not None:
        _check_resumable(folder, start_state.meta, meta)

    # ---- latent kind: the autoencoder first (trained once, saved with every checkpoint) ----
    vae, vae_to_save, scale = None, None, None
    if mc.is_latent:
        vae, vae_to_save, scale, vae_meta = _prepare_vae(cfg, kind, category, folder, images, channels, seed, aug,
                                                         start_state, dev, autocast_dtype, say)
        meta.update(vae=vae_meta, latent_scale=scale, latent_channels=int(vae.config.latent_channels))
    sample_channels = int(meta.get("latent_channels") or channels)
    sample_size = cfg.dataset.image_size >> (len(vae.config.block_out_channels) - 1) if vae is not None else cfg.dataset.image_size
    meta["sample_size"] = sample_size
    meta["noise"] = describe_noise(noise_kind, mc, sample_size)  # type: ignore[arg-type]

    # ---- networks, optimizer, resumed state ----
    torch.manual_seed(seed)
    tc = cfg.train
    out_channels = sample_channels * (2 if learned_variance else 1)
    if mc.init.checkpoint is not None:  # a pretrained start (RAN); a resumed run overwrites it below
        say(f"{category}/{kind}: initialising from {mc.init.checkpoint}")
        unet, meta["init"] = init_unet(mc, sample_channels, out_channels, sample_size, kind)
        unet = unet.to(dev)
    else:
        unet = build_unet(mc.preset, sample_channels, out_channels, sample_size, mc.base_channels, mc.padding).to(dev)
        meta["init"] = {"source": "scratch", "describe": mc.init.describe()}
    # A class-conditional init: every pass conditions on the one label (scoring folds it in:
    # raydiff.models.checkpoint.fold_class_label).
    labels = (torch.full((mc.batch_size,), mc.init.class_label, dtype=torch.long, device=dev)
              if unet.class_embedding is not None else None)
    if tc.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = make_optimizer(unet.parameters(), mc, tc.fused_adamw, dev)
    step, rows, segments, elapsed = 0, [], [], 0.0
    if start_state is not None:
        unet.load_state_dict(start_state.unet.state_dict())
        ema.load_state_dict(start_state.ema_unet.state_dict())
        if start_state.optimizer_state is not None:
            opt.load_state_dict(start_state.optimizer_state)
        step = start_state.step
        rows = read_loss_csv(folder / "loss.csv", step)
        segments = list(start_state.meta.get("segments", []))
        elapsed = rows[-1]["seconds"] if rows else 0.0
        say(f"{category}/{kind}: resuming at step {step}")
    segment = {"start_step": step, "device": str(dev), **(where or {}), "started": utc_now(), "ended": None}
    segments.append(segment)
    meta.update(unet=describe_unet(unet), segments=segments)

    log = LossLog(rows, mc.lr)

    def save(step_now: int, final: bool) -> None:
        log.flush(f"{category}/{kind}", folder)
        segment["ended"] = utc_now()
        files = {"loss.csv": loss_csv(rows)}
        ckpt.save_checkpoint(folder, unet, ema, opt, step_now, meta, vae=vae_to_save, files=files)
        try:
            plot_loss(rows, folder / "loss.png", f"{cfg.dataset.dataset_name}/{category}/{kind}")
        except Exception as err:  # a plot must never fail a training run
            say(f"loss plot failed: {err}")
        window = rows[-min(len(rows), mc.checkpoint_every):] if rows else []
        metrics = {
            "step": float(step_now), "loss": float(np.mean([r["loss"] for r in window])) if window else math.nan,
            "loss_vlb": float(np.mean([r["loss_vlb"] for r in window])) if window else math.nan,
            "lr": rows[-1]["lr"] if rows else mc.lr, "seconds": rows[-1]["seconds"] if rows else 0.0,
            "finished": float(final),
        }
        if on_checkpoint is not None:
            on_checkpoint(folder, step_now, metrics)

    # ---- the loop ----
    unet.train()
    t0 = time.perf_counter() - elapsed
    n = images.shape[0]
    batch = mc.batch_size  # drawn with replacement: any batch size works for small categories
    # No host sync inside a step: every draw is made on the device by a generator seeded per
    # step, augmentation is masks, and the loss stays on the device until ``log`` is flushed.
    while step < total_steps:
        g = generator(derive_seed(seed, "step", step), dev)
        idx = torch.randint(n, (batch,), generator=g, device=dev)
        x0 = augment_batch(images[idx], aug, g)
        if vae is not None:
            with torch.no_grad(), torch.autocast(dev.type, dtype=autocast_dtype or torch.bfloat16,
                                                 enabled=autocast_dtype is not None):
                # A grayscale dataset into an RGB (pretrained) VAE: channels repeated, as scoring encodes.
                x_vae = match_channels(x0, vae.config.in_channels).to(vae.dtype)
                x0 = vae.encode(x_vae).latent_dist.mean.float() * scale
        t = torch.randint(0, schedule.timesteps, (batch,), generator=g, device=dev)
        noise_seeds = [derive_seed(seed, "noise", step, i) for i in range(batch)]
        noise = sample_training_noise(noise_kind, tuple(x0.shape), noise_seeds, mc, dev).to(dev, torch.float32)
        x_t = D.q_sample(schedule, x0, t, noise)
        x_in = x_t.contiguous(memory_format=torch.channels_last) if tc.channels_last else x_t
        with torch.autocast(dev.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            out = unet(x_in, t, class_labels=labels).sample
        loss, _simple, vlb = diffusion_loss(schedule, out, x0, x_t, t, noise, learned_variance, mc.vlb_weight, mc.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if mc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), mc.grad_clip)
        lr = mc.lr_at(step, total_steps)  # models.lr_schedule: constant, or linear to 0 over the steps
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        ema_update(ema, unet, ema_decay_at(step, mc.ema_decay), foreach=tc.foreach_ema)
        step += 1
        log.add(step, round(time.perf_counter() - t0, 4), loss, vlb, lr)
        logged = step % tc.log_every == 0
        if logged:
            log.flush(f"{category}/{kind}", folder)
        if step % mc.checkpoint_every == 0 or step == total_steps:
            save(step, final=step == total_steps)  # flushes the log too
            logged = True
        if logged and rows:  # progress at log_every and at each checkpoint, with an ETA
            spent = rows[-1]["seconds"]
            left = f", ETA {spent / step * (total_steps - step):.0f} s" if 0 < step < total_steps else ""
            say(f"{category}/{kind}: step {step}/{total_steps} loss {rows[-1]['loss']:.4f}{left}")
    if not ckpt.has_checkpoint(folder) or ckpt.checkpoint_step(folder) != step:
        save(step, final=True)  # resumed at the last step without a final checkpoint
    write_marker(folder, {"what": "trained model", "kind": kind, "category": category, "steps": step,
                          "seconds": rows[-1]["seconds"] if rows else 0.0})
    return folder


def _prepare_vae(
    cfg: Config, kind: str, category: str, folder: Path, images: Tensor, channels: int, seed: int, aug: AugmentConfig,
    start_state: ckpt.TrainingState | None, dev: torch.device, autocast_dtype: torch.dtype | None,
    say: Callable[[str], None],
) -> tuple[Any, Any, float, dict[str, Any]]:
    """→ (vae for encoding, vae to save in the checkpoint or None, latent scale, meta['vae'])."""
    mc = cfg.models.spec(kind)
    lc = mc.vae
    if lc.vae_path:
        info: dict[str, Any] = L.pretrained_vae_info(lc, kind)  # by content, checked before it is read
        vae = L.load_pretrained_vae(lc.vae_path, dev)
        scale = lc.scale or float(getattr(vae.config, "scaling_factor", 0.0) or 0.0) or None
        to_save = None
    elif start_state is not None:
        vae = ckpt.load_vae_for_checkpoint(folder, start_state.meta, dev)
        return vae, vae, float(start_state.meta["latent_scale"]), dict(start_state.meta["vae"])
    else:
        torch.manual_seed(derive_seed(seed, "vae-init"))
        vae = L.build_vae(mc.preset, channels, cfg.dataset.image_size, lc.latent_channels,
                          lc.vae_downsample, mc.padding).to(dev)
        say(f"{category}/{kind}: training the VAE for {lc.vae_train_steps} steps")
        vae_rows: list[float] = []
        L.train_vae(vae, images, lc.vae_train_steps, lc.vae_lr, lc.vae_kl_weight, mc.batch_size,
                    derive_seed(seed, "vae"), augment=lambda x, g: augment_batch(x, aug, g),
                    log=lambda _s, loss: vae_rows.append(loss), autocast_dtype=autocast_dtype)
        scale = lc.scale
        info = {"source": "trained", "steps": lc.vae_train_steps,
                "final_loss": float(np.mean(vae_rows[-20:])) if vae_rows else None}
        to_save = vae
    if scale is None:
        scale = 1.0 / L.latent_std(vae, images, mc.batch_size)
        info["scale_from"] = "1/std of training latents"
    if to_save is not None:
        to_save.register_to_config(scaling_factor=float(scale))
    return vae, to_save, float(scale), info
