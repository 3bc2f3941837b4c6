"""A pretrained init (issue 29, RAN): guided-diffusion checkpoints renamed into diffusers'
UNet2DModel (raydiff/models/guided.py), the strict loader and its errors, the init and
lr_schedule settings, and what `raydiff plan` says about them.

The checkpoints here are random tensors in guided-diffusion's key layout, built from the key
names and shapes of its ``UNetModel`` (``guided_shapes`` below, written from the layout, not from
the reference code). Their numbers are checked against the guided-diffusion arithmetic written
out here (legacy per-head qkv attention, scale-shift res block, cos-first timestep embedding);
the whole network against the reference code is `raydiff parity --method ran-init`
(docs/parity.md).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from safetensors.torch import save_file

from raydiff.config import InitConfig, ModelSpec, config_from_dict, load_config, model_id, run_id
from raydiff.data.prepared import Prepared
from raydiff.errors import CheckpointError, ConfigError
from raydiff.models import guided as G
from raydiff.models.checkpoint import fold_class_label
from raydiff.models.presets import build_unet, count_parameters

REPO = Path(__file__).resolve().parents[1]
ENV = "GUIDED_DIFFUSION_256_COND"


def guided_shapes(mc: int, mult: tuple[int, ...], nrb: int, attn: tuple[int, ...], cin: int = 3, cout: int = 6,
                  classes: int | None = None, updown: bool = True, scale_shift: bool = True) -> dict[str, tuple[int, ...]]:
    """Key → shape of guided-diffusion's ``UNetModel`` state dict (unet.py's module tree)."""
    s: dict[str, tuple[int, ...]] = {}
    ted = 4 * mc

    def lin(p: str, o: int, i: int) -> None:
        s[f"{p}.weight"], s[f"{p}.bias"] = (o, i), (o,)

    def conv(p: str, o: int, i: int, k: int = 3) -> None:
        s[f"{p}.weight"], s[f"{p}.bias"] = (o, i, k, k), (o,)

    def norm(p: str, c: int) -> None:
        s[f"{p}.weight"], s[f"{p}.bias"] = (c,), (c,)

    def res(p: str, i: int, o: int) -> None:
        norm(f"{p}.in_layers.0", i)
        conv(f"{p}.in_layers.2", o, i)
        lin(f"{p}.emb_layers.1", (2 if scale_shift else 1) * o, ted)
        norm(f"{p}.out_layers.0", o)
        conv(f"{p}.out_layers.3", o, o)
        if i != o:
            conv(f"{p}.skip_connection", o, i, 1)

    def att(p: str, c: int) -> None:
        norm(f"{p}.norm", c)
        s[f"{p}.qkv.weight"], s[f"{p}.qkv.bias"] = (3 * c, c, 1), (3 * c,)
        s[f"{p}.proj_out.weight"], s[f"{p}.proj_out.bias"] = (c, c, 1), (c,)

    lin("time_embed.0", ted, mc)
    lin("time_embed.2", ted, ted)
    if classes:
        s["label_emb.weight"] = (classes, ted)
    conv("input_blocks.0.0", mc, cin)
    ch, chans, b = mc, [mc], 1
    for lv, m in enumerate(mult):
        for _ in range(nrb):
            res(f"input_blocks.{b}.0", ch, m * mc)
            ch = m * mc
            if lv in attn:
                att(f"input_blocks.{b}.1", ch)
            chans.append(ch)
            b += 1
        if lv < len(mult) - 1:
            res(f"input_blocks.{b}.0", ch, ch) if updown else conv(f"input_blocks.{b}.0.op", ch, ch)
            chans.append(ch)
            b += 1
    res("middle_block.0", ch, ch)
    att("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    o = 0
    for lv in reversed(range(len(mult))):
        for i in range(nrb + 1):
            res(f"output_blocks.{o}.0", ch + chans.pop(), mult[lv] * mc)
            ch = mult[lv] * mc
            k = 1
            if lv in attn:
                att(f"output_blocks.{o}.1", ch)
                k = 2
            if lv and i == nrb:
                res(f"output_blocks.{o}.{k}", ch, ch) if updown else conv(f"output_blocks.{o}.{k}.conv", ch, ch)
            o += 1
    norm("out.0", ch)
    conv("out.2", cout, mc)
    return s


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*v, generator=g) * 0.2 for k, v in shapes.items()}


SMALL = {"mc": 32, "mult": (1, 2, 2), "nrb": 2, "attn": (1, 2)}


# --------------------------------------------------------------------------------------------
# The converter
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("updown,scale_shift,classes", [(True, True, 10), (False, False, None)])
def test_layout_is_read_back_and_every_tensor_lands_once(updown: bool, scale_shift: bool, classes: int | None) -> None:
    state = random_state(guided_shapes(**SMALL, classes=classes, updown=updown, scale_shift=scale_shift))
    arch = G.infer_arch(state)
    assert arch == G.GuidedArch(3, 6, 32, (1, 2, 2), 2, (1, 2), updown, scale_shift, classes)
    new, source = G.convert_state_dict(state, arch, head_channels=16)
    unet = UNet2DModel(**G.unet_kwargs(arch, 16, head_channels=16))
    unet.load_state_dict(new, strict=True)  # every parameter filled, nothing left over
    assert sum(v.numel() for v in new.values()) == sum(v.numel() for v in state.values()) == count_parameters(unet)
    assert set(source.values()) == set(state)
    assert torch.equal(new["conv_in.weight"], state["input_blocks.0.0.weight"])
    assert torch.equal(new["time_embedding.linear_2.bias"], state["time_embed.2.bias"])
    up = "up_blocks.0.upsamplers.0" + ("" if updown else ".conv")
    # the deepest level (2) has attention, so its upsampler is the third layer of output block 2
    assert torch.equal(new[f"{up}.{'conv1.weight' if updown else 'weight'}"],
                       state[f"output_blocks.2.2.{'in_layers.2.weight' if updown else 'conv.weight'}"])


def test_qkv_is_split_per_head_in_the_legacy_order() -> None:
    """One attention block: guided-diffusion's AttentionBlock (QKVAttentionLegacy) written out here
    against the converted diffusers Attention."""
    state = random_state(guided_shapes(**SMALL))
    arch = G.infer_arch(state)
    heads, c = 4, 64  # level 2: 64 channels in 4 heads of 16
    new, _ = G.convert_state_dict(state, arch, head_channels=c // heads)
    unet = UNet2DModel(**G.unet_kwargs(arch, 16, head_channels=c // heads)).eval()
    unet.load_state_dict(new, strict=True)
    x = torch.randn(2, c, 4, 4, generator=torch.Generator().manual_seed(1))
    p = "input_blocks.7.1"  # level 2's first res block + attention: 1 + 2·3 = 7
    h = F.group_norm(x.reshape(2, c, 16), 32, state[f"{p}.norm.weight"], state[f"{p}.norm.bias"], 1e-5)
    qkv = F.conv1d(h, state[f"{p}.qkv.weight"], state[f"{p}.qkv.bias"])  # (B, 3C, T): per head [q; k; v]
    q, k, v = qkv.reshape(2 * heads, 3 * (c // heads), 16).split(c // heads, dim=1)
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(c // heads), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(2, c, 16)
    ref = x + F.conv1d(a, state[f"{p}.proj_out.weight"], state[f"{p}.proj_out.bias"]).reshape(2, c, 4, 4)
    with torch.no_grad():
        ours = unet.down_blocks[2].attentions[0](x)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    # A wrong head width loads (the shapes do not say) but computes something else: the head
    # count must come from the UNet the checkpoint is loaded into.
    new_wrong, _ = G.convert_state_dict(state, arch, head_channels=c // 2)
    unet.load_state_dict(new_wrong, strict=True)
    with torch.no_grad():
        assert not torch.allclose(unet.down_blocks[2].attentions[0](x), ref, atol=1e-3)


def test_scale_shift_res_block_and_timestep_embedding() -> None:
    state = random_state(guided_shapes(**SMALL))
    arch = G.infer_arch(state)
    new, _ = G.convert_state_dict(state, arch, head_channels=16)
    unet = UNet2DModel(**G.unet_kwargs(arch, 16, head_channels=16)).eval()
    unet.load_state_dict(new, strict=True)
    # guided-diffusion's timestep_embedding: [cos(t·f), sin(t·f)], f = 10000^(-i/half)
    t = torch.tensor([0.0, 7.0, 999.0])
    f = torch.exp(-math.log(10000) * torch.arange(16) / 16)
    assert torch.allclose(unet.time_proj(t), torch.cat([torch.cos(t[:, None] * f), torch.sin(t[:, None] * f)], 1), atol=1e-5)
    # ResBlock with use_scale_shift_norm (32 -> 64 channels: 1x1 skip), input_blocks.4 = level 1's first
    p, x = "input_blocks.4.0", torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(2))
    emb = torch.randn(2, 128, generator=torch.Generator().manual_seed(3))
    h = F.conv2d(F.silu(F.group_norm(x, 32, state[f"{p}.in_layers.0.weight"], state[f"{p}.in_layers.0.bias"])),
                 state[f"{p}.in_layers.2.weight"], state[f"{p}.in_layers.2.bias"], padding=1)
    scale, shift = F.linear(F.silu(emb), state[f"{p}.emb_layers.1.weight"], state[f"{p}.emb_layers.1.bias"]).chunk(2, 1)
    h = F.group_norm(h, 32, state[f"{p}.out_layers.0.weight"], state[f"{p}.out_layers.0.bias"]) * (1 + scale[..., None, None]) + shift[..., None, None]
    h = F.conv2d(F.silu(h), state[f"{p}.out_layers.3.weight"], state[f"{p}.out_layers.3.bias"], padding=1)
    ref = F.conv2d(x, state[f"{p}.skip_connection.weight"], state[f"{p}.skip_connection.bias"]) + h
    with torch.no_grad():
        ours = unet.down_blocks[1].resnets[0](x, emb)
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()


def test_the_guided_preset_is_openais_256_network() -> None:
    """OpenAI's 256x256_diffusion.pt layout (train.sh's flags), shapes only, fits preset guided at
    256 px exactly: 553,838,086 parameters with the 1000-class embedding."""
    with torch.device("meta"):
        state = {k: torch.empty(v) for k, v in guided_shapes(256, (1, 1, 2, 2, 4, 4), 2, (3, 4, 5), classes=1000).items()}
        unet = build_unet("guided", 3, 6, 256, num_class_embeds=1000)
    arch = G.infer_arch(state)
    assert (arch.model_channels, arch.channel_mult, arch.attention_levels, arch.num_classes) == (256, (1, 1, 2, 2, 4, 4), (3, 4, 5), 1000)
    new, _ = G.convert_state_dict(state, arch, int(unet.config.attention_head_dim))
    ours = unet.state_dict()
    assert set(new) == set(ours) and all(new[k].shape == ours[k].shape for k in ours)
    assert count_parameters(unet) == 553_838_086
    assert unet.config.attention_head_dim == 64 and unet.config.attn_norm_num_groups == 32
    kw = G.unet_kwargs(arch, 256)
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in unet.config.items() if k in kw} == kw


def test_folding_the_class_label_keeps_the_output() -> None:
    torch.manual_seed(0)
    unet = build_unet("guided", 3, 6, 32, base_channels=32, num_class_embeds=5).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.05)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 700])
    with torch.no_grad():
        want = unet(x, t, class_labels=torch.tensor([4, 4])).sample
        fold_class_label(unet, 4)
        got = unet(x, t).sample
    assert unet.class_embedding is None and unet.config.num_class_embeds is None
    assert torch.allclose(got, want, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The strict loader (models.NAME.init)
# --------------------------------------------------------------------------------------------


def _spec(path: Path, **init: object) -> ModelSpec:
    return ModelSpec(preset="guided", base_channels=32, variance="learned", init=InitConfig(checkpoint=str(path), **init))


TINY_256 = {"mc": 32, "mult": (1, 1, 2, 2, 4, 4), "nrb": 2, "attn": (3, 4, 5)}


def test_init_loads_strictly_and_resets_the_label_embedding(tmp_path: Path) -> None:
    state = random_state(guided_shapes(**TINY_256, classes=1000))
    path = tmp_path / "gd.safetensors"
    save_file(state, str(path))
    torch.manual_seed(0)
    unet, info = G.init_unet(_spec(path, class_label=3), 3, 6, 32)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and info["class_rows"] == 15
    assert unet.class_embedding.weight.shape == (15, 128)  # RAN: a fresh 15-row embedding
    new, _ = G.convert_state_dict(state, G.infer_arch(state), 64)
    ours = unet.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in new.items() if k != "class_embedding.weight")
    # keep: the file's 1000 rows; a weights-only .pt loads the same
    torch.save(state, tmp_path / "gd.pt")
    kept, info = G.init_unet(_spec(tmp_path / "gd.pt", class_embedding="keep", class_label=999), 3, 6, 32)
    assert torch.equal(kept.class_embedding.weight, state["label_emb.weight"]) and info["class_label"] == 999


def test_init_errors_name_the_file_and_the_first_keys(tmp_path: Path) -> None:
    def saved(state: dict[str, torch.Tensor], name: str) -> Path:
        save_file(state, str(tmp_path / name))
        return tmp_path / name

    good = random_state(guided_shapes(**TINY_256))
    wide = saved(random_state(guided_shapes(**{**TINY_256, "mc": 64})), "wide.safetensors")
    with pytest.raises(CheckpointError, match=r"wide\.safetensors.*wrong shapes: time_embed\.0\.weight \(256, 64\)") as err:
        G.init_unet(_spec(wide), 3, 6, 32)
    assert "model_channels 64" in str(err.value) and "preset guided" in str(err.value)
    extra = saved({**good, "feat_rec1.0.weight": torch.ones(512)}, "extra.safetensors")  # RAN's feature head
    with pytest.raises(CheckpointError, match=r"1 tensors fit no module.*feat_rec1\.0\.weight"):
        G.init_unet(_spec(extra), 3, 6, 32)
    lacking = saved({k: v for k, v in good.items() if k != "out.0.bias"}, "lacking.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks: conv_norm_out\.bias"):
        G.init_unet(_spec(lacking), 3, 6, 32)
    with pytest.raises(CheckpointError, match="maps 3 to 6 channels; models.model needs 1 to 2"):
        G.init_unet(_spec(saved(good, "rgb.safetensors")), 1, 2, 32)
    with pytest.raises(CheckpointError, match="sha256 is .* but models.model.init.sha256 says 0000"):
        G.init_unet(_spec(tmp_path / "rgb.safetensors", sha256="0" * 64), 3, 6, 32)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match="module.pt: torch.load\\(weights_only=True\\) cannot read it"):
        G.read_state_dict(tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match="not a guided-diffusion UNetModel state dict: key 'time_embed.0.weight'"):
        G.infer_arch({"conv.weight": torch.ones(1)}, "x.pt")


# --------------------------------------------------------------------------------------------
# Config: ids, ${VAR}, lr schedule, plan
# --------------------------------------------------------------------------------------------


def _cfg(init: dict | None = None, **model: object) -> object:
    m = {"arch": "pixel", "variance": "learned", "preset": "guided", **model}
    if init is not None:
        m["init"] = init
    return config_from_dict({"dataset": {"root": "/x", "categories": ["bottle"]}, "models": {"ran": m},
                             "variants": {"kl": {"method": "kl", "model": "ran"}}})


def test_init_ids_hash_the_files_content_not_its_path(tmp_path: Path) -> None:
    state = random_state(guided_shapes(**TINY_256))
    save_file(state, str(tmp_path / "a.safetensors"))
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "b.safetensors").write_bytes((tmp_path / "a.safetensors").read_bytes())
    scratch = _cfg()
    unset = _cfg({"checkpoint": None, "expected": "OpenAI's 256x256_diffusion.pt", "classes": 15})
    a = _cfg({"checkpoint": str(tmp_path / "a.safetensors")})
    b = _cfg({"checkpoint": str(tmp_path / "copy" / "b.safetensors")})
    assert model_id(unset, "ran", "bottle") == model_id(scratch, "ran", "bottle") and run_id(unset) == run_id(scratch)
    assert a.model_spec("ran").init.sha256 == hashlib.sha256((tmp_path / "a.safetensors").read_bytes()).hexdigest()
    assert model_id(a, "ran", "bottle") == model_id(b, "ran", "bottle") != model_id(scratch, "ran", "bottle")
    save_file(random_state(guided_shapes(**TINY_256), seed=1), str(tmp_path / "copy" / "b.safetensors"))
    assert model_id(_cfg({"checkpoint": str(tmp_path / "copy" / "b.safetensors")}), "ran", "bottle") != model_id(a, "ran", "bottle")
    # A stored config carries the digest: it loads (same ids) without the file.
    from raydiff.config import config_to_dict

    stored = config_to_dict(a)
    (tmp_path / "a.safetensors").unlink()
    assert model_id(config_from_dict(stored, upgrade=True), "ran", "bottle") == model_id(a, "ran", "bottle")
    with pytest.raises(ConfigError, match=r"models\.ran\.init\.checkpoint: .*a\.safetensors is not a file"):
        _cfg({"checkpoint": str(tmp_path / "a.safetensors")})
    with pytest.raises(ConfigError, match="is not a sha256 digest"):
        _cfg({"checkpoint": None, "sha256": "abc"})
    with pytest.raises(ConfigError, match="latent model"):
        _cfg({"checkpoint": str(tmp_path / "copy" / "b.safetensors")}, arch="latent", preset="tiny")


def test_papers_config_init_comes_from_an_optional_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    cfg = load_config(REPO / "configs" / "mvtec-papers.yaml", {"dataset.root": "/x"})
    ran = cfg.model_spec("ran")  # RAN's train.sh: batch 2, 10k steps, lr 1e-4 annealed to 0, EMA 0.997
    assert (ran.batch_size, ran.train_steps, ran.lr, ran.lr_schedule, ran.ema_decay, ran.preset) == (
        2, 10_000, 1e-4, "linear", 0.997, "guided")
    assert ran.init.checkpoint is None and ran.init.describe().startswith("from scratch (not the paper's")
    monkeypatch.setenv(ENV, str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match=f"environment variable {ENV}=.*missing.pt is not a file"):
        load_config(REPO / "configs" / "mvtec-papers.yaml", {"dataset.root": "/x"})
    save_file(random_state(guided_shapes(**TINY_256)), str(tmp_path / "gd.safetensors"))
    monkeypatch.setenv(ENV, str(tmp_path / "gd.safetensors"))
    init = load_config(REPO / "configs" / "mvtec-papers.yaml", {"dataset.root": "/x"}).model_spec("ran").init
    assert init.checkpoint == str(tmp_path / "gd.safetensors") and init.describe().startswith("guided-diffusion checkpoint")
    assert (init.class_embedding, init.classes) == ("reset", 15)


def test_lr_schedule_linear_anneals_to_zero() -> None:
    spec = ModelSpec(lr=1e-4, lr_schedule="linear")
    assert [spec.lr_at(k, 4) for k in range(5)] == pytest.approx([1e-4, 7.5e-5, 5e-5, 2.5e-5, 0.0])
    assert ModelSpec(lr=3e-4).lr_at(99, 100) == 3e-4


def test_plan_prints_each_models_init(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from raydiff.cli import main

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("MVTEC_ROOT", "/x")
    result = CliRunner().invoke(main, ["plan", "--config", str(REPO / "configs" / "mvtec-papers.yaml"),
                                       "--categories", "bottle"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    ran = next(i for i, line in enumerate(lines) if line.startswith("  ran: pixel guided"))
    assert "10000 steps x 2, lr 0.0001 linear to 0" in lines[ran] and "ema 0.997" in lines[ran]
    assert lines[ran + 1].strip() == ("init: from scratch (not the paper's: it starts from OpenAI's class-conditional "
                                      "256x256_diffusion.pt (guided-diffusion); set init.checkpoint)")
    assert sum(line.strip() == "init: from scratch" for line in lines) == 5  # the other five models


# --------------------------------------------------------------------------------------------
# Training from the init, with the annealed learning rate
# --------------------------------------------------------------------------------------------


@pytest.mark.trains
def test_training_starts_from_the_checkpoint_and_anneals_lr(tmp_path: Path) -> None:
    from raydiff.data.manifest import scan_mvtec
    from raydiff.data.splits import assign_holdout
    from raydiff.data.textures import make_textures
    from raydiff.models.checkpoint import UNET_EMA, load_model, load_unet
    from raydiff.train.loop import train_one

    root = make_textures(tmp_path / "tex", size=32, n_train=6, n_test_good=1, n_test_defect=1, categories=("brick",))
    manifest = assign_holdout(scan_mvtec(root), fraction=0.0, min_count=0, seed=0)
    state = random_state(guided_shapes(**TINY_256, classes=1000))
    save_file(state, str(tmp_path / "gd.safetensors"))
    cfg = config_from_dict({
        "dataset": {"root": str(root), "image_size": 32, "channels": "rgb", "holdout_fraction": 0},
        "models": {"ran": {"arch": "pixel", "variance": "learned", "preset": "guided", "base_channels": 32,
                           "batch_size": 2, "train_steps": 4, "checkpoint_every": 4, "lr": 1e-3, "lr_schedule": "linear",
                           "ema_decay": 0.5, "grad_clip": 0.0,
                           "init": {"checkpoint": str(tmp_path / "gd.safetensors"), "class_label": 7}}},
        "variants": {"kl": {"method": "kl", "model": "ran"}}, "output": {"root": str(tmp_path / "out")}})
    folder = train_one(Prepared.of(cfg, manifest), "brick", "ran", device="cpu")
    with (folder / "loss.csv").open() as f:
        rows = list(csv.DictReader(f))
    # step k (1-based in loss.csv) trains at lr·(1 - (k-1)/4)
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["init"]["sha256"] == cfg.model_spec("ran").init.sha256 and meta["init"]["class_label"] == 7
    # the online weights moved away from the file's (4 AdamW steps) but started there: the
    # ones no gradient reaches (other rows of the label embedding) are still the fresh init's
    ema = load_unet(folder, UNET_EMA)
    new, _ = G.convert_state_dict(state, G.infer_arch(state), 64)
    drift = max((ema.state_dict()[k] - v).abs().max().item() for k, v in new.items() if k != "class_embedding.weight")
    assert 0 < drift < 0.05
    model = load_model(folder)  # scoring: label 7 folded into the time embedding
    assert model.unet.class_embedding is None
    # In float64: the folded bias b + e was rounded to float32 once (~1e-7 relative); these
    # random 0.2-std weights amplify that to ~5e-5 of the output in a float32 forward pass.
    x, t = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2 - 1, torch.tensor([5, 400])
    with torch.no_grad():
        want = ema.double()(x, t, class_labels=torch.tensor([7, 7])).sample
        got = model.unet.double()(x, t).sample
    assert (got - want).abs().max() <= 1e-7 * want.abs().max(), ((got - want).abs().max(), want.abs().max())


# --------------------------------------------------------------------------------------------
# The parity check (raydiff parity --method ran-init) on the stand-in
# --------------------------------------------------------------------------------------------

STANDIN = REPO / "tests" / "parity_standins" / "anomaly_diff"


def _parity(reference: Path) -> dict[str, str]:
    from raydiff.config import DEFAULT_CONFIG
    from raydiff.parity.inputs import random_inputs
    from raydiff.parity.run import run_parity

    inputs = random_inputs(load_config(DEFAULT_CONFIG, {"dataset.image_size": 16, "models.base_channels": 8,
                                                        "dataset.root": "/nonexistent"}), batch=2, n_train=4)
    return {r.stage: r.status for r in run_parity(inputs, {"ran": reference}, ["ran-init"]).rows}


def test_ran_init_parity_is_equal_on_the_standin_and_catches_the_other_qkv_order(tmp_path: Path) -> None:
    import shutil

    status = _parity(STANDIN)
    assert len(status) == 3 and set(status.values()) == {"equal"}, status
    broken = tmp_path / "anomaly_diff"
    shutil.copytree(STANDIN, broken, ignore=shutil.ignore_patterns("__pycache__"))
    unet = broken / "guided_diffusion" / "unet.py"
    old = "reshape(b, self.heads, 3, c // self.heads, hh * ww)"
    assert unet.read_text().count(old) == 1
    # QKVAttention (use_new_attention_order): [q; k; v] over all heads, then heads: same shapes
    unet.write_text(unet.read_text().replace(old, "reshape(b, 3, self.heads, c // self.heads, hh * ww).transpose(1, 2)"))
    assert set(_parity(broken).values()) == {"DIFFERS"}


def test_report_provenance_says_a_model_trained_from_scratch_is_not_the_papers(tmp_path: Path) -> None:
    import polars as pl

    from raydiff.paths import model_dir
    from raydiff.report import provenance_html
    from raydiff.report_tables import with_provenance

    cfg = config_from_dict({
        "dataset": {"root": "/x", "categories": ["bottle"]}, "output": {"root": str(tmp_path)},
        "models": {"ran": {"arch": "pixel", "variance": "learned", "init": {"expected": "OpenAI's 256x256_diffusion.pt"}},
                   "plain": {"arch": "pixel"}},
        "variants": {"kl": {"method": "kl", "model": "ran"}, "s": {"method": "static", "model": "plain"}}})
    for name, source in (("ran", "scratch"), ("plain", "scratch")):  # as train_one records it
        folder = model_dir(cfg, "bottle", name)
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"init": {"source": source}}))
    table = with_provenance(pl.DataFrame({"category": ["bottle", "bottle"], "variant": ["kl", "s"]}), cfg)
    assert table["init"].to_list() == ["scratch", None]  # Fučka-like models start from scratch anyway
    assert "fine-tunes a pretrained checkpoint was trained from scratch" in provenance_html(table)
    (model_dir(cfg, "bottle", "ran") / "meta.json").write_text(json.dumps({"init": {"source": "checkpoint"}}))
    table = with_provenance(pl.DataFrame({"category": ["bottle"], "variant": ["kl"]}), cfg)
    assert table["init"].to_list() == ["pretrained"] and "Not the papers' setting" not in provenance_html(table)
