"""UNet presets, checkpoint folders (round trip, damaged files) and the latent autoencoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from raydiff import diffusion as D
from raydiff.errors import CheckpointError, ConfigError
from raydiff.io import write_marker
from raydiff.models import checkpoint as ckpt
from raydiff.models import latent as L
from raydiff.models.presets import build_unet, count_parameters, unet_levels



def _blocks(unet: torch.nn.Module) -> list[tuple[str, int]]:
    return [(b.__class__.__name__, b.resnets[0].out_channels) for b in unet.down_blocks]


def test_preset_architecture_at_256() -> None:
    unet = build_unet("ddad", 3, 6, 256)
    assert _blocks(unet) == [
        ("DownBlock2D", 64), ("DownBlock2D", 64), ("DownBlock2D", 128),
        ("AttnDownBlock2D", 128), ("AttnDownBlock2D", 256), ("AttnDownBlock2D", 256),
    ]
    # attention at 32/16/8 px: level i works at 256 / 2**i.
    attn_px = [256 >> i for i, (name, _) in enumerate(_blocks(unet)) if name.startswith("Attn")]
    assert attn_px == [32, 16, 8]
    assert unet.config.layers_per_block == 2
    assert count_parameters(unet) == 31_381_318
    assert [b.__class__.__name__ for b in unet.up_blocks][:3] == ["AttnUpBlock2D"] * 3


def test_presets_at_smaller_sizes_keep_relative_attention() -> None:
    assert unet_levels("ddad", 256) == 6 and unet_levels("ddad", 128) == 6 and unet_levels("ddad", 64) == 5
    unet = build_unet("ddad", 1, 2, 64)
    names = [n for n, _ in _blocks(unet)]
    assert len(names) == 5 and 64 >> (len(names) - 1) >= 4
    assert [64 >> i for i, n in enumerate(names) if n.startswith("Attn")] == [8, 4]  # 256/32, 256/64 → size/8, /16
    tiny = build_unet("tiny", 3, 6, 64)
    assert _blocks(tiny) == [("DownBlock2D", 16), ("DownBlock2D", 32), ("AttnDownBlock2D", 64)]
    assert tiny.config.layers_per_block == 1 and count_parameters(tiny) == 717_814
    assert build_unet("tiny", 3, 6, 64, base_channels=8).config.block_out_channels == (8, 16, 32)
    with pytest.raises(ConfigError, match="not divisible"):
        build_unet("ddad", 3, 3, 100)
    with pytest.raises(ConfigError, match="unknown preset"):
        build_unet("huge", 3, 3, 64)  # type: ignore[arg-type]


def test_unet_output_shapes() -> None:
    torch.manual_seed(0)
    unet = build_unet("tiny", 3, 6, 32).eval()
    out = unet(torch.randn(2, 3, 32, 32), torch.tensor([1, 999])).sample
    assert out.shape == (2, 6, 32, 32)
    eps, v = D.split_model_output(out, 3, learned_variance=True)
    assert eps.shape == v.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="expected 3"):
        D.split_model_output(out, 3, learned_variance=False)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _meta(channels: int = 1, learned: bool = True) -> dict:
    return {"kind": "pixel", "channels": channels, "learned_variance": learned, "noise_kind": "gaussian",
            "schedule": D.Schedule.build("linear", 1000).describe(), "image_size": 16}


def _trained_checkpoint(folder: Path) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    unet = build_unet("tiny", 1, 2, 16)
    ema = build_unet("tiny", 1, 2, 16)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    for _ in range(2):
        unet(torch.randn(2, 1, 16, 16), torch.tensor([3, 500])).sample.square().mean().backward()
        opt.step()
        opt.zero_grad()
    ckpt.save_checkpoint(folder, unet, ema, opt, 2, _meta(), files={"loss.csv": "step,loss\n"})
    return unet, ema, opt


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    unet, ema, opt = _trained_checkpoint(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "loss.csv", "meta.json", "optimizer.safetensors", "train_state.json", "unet", "unet_ema"]
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in folder.rglob("*"))  # no pickle
    with pytest.raises(CheckpointError, match="has not finished"):
        ckpt.load_model(folder)
    write_marker(folder)
    model = ckpt.load_model(folder)
    assert model.learned_variance and model.channels == 1 and model.kind == "pixel" and model.vae is None
    assert not model.unet.training and not any(p.requires_grad for p in model.unet.parameters())
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 10, 999])
    with torch.no_grad():
        eps, v = model.model_output(x, t)
        ref = ema.eval()(x, t).sample
    assert torch.equal(torch.cat([eps, v], 1), ref)
    torch.testing.assert_close(model.schedule.alphas_cumprod, D.Schedule.build("linear", 1000).alphas_cumprod)
    # Training state: online weights and the optimizer state come back exactly.
    state = ckpt.load_training_state(folder)
    assert state.step == 2
    for a, b in zip(state.unet.parameters(), unet.parameters(), strict=True):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(state.unet.parameters(), lr=1e-3)
    opt2.load_state_dict(state.optimizer_state)
    for (ka, va), (kb, vb) in zip(opt2.state_dict()["state"].items(), opt.state_dict()["state"].items(), strict=True):
        assert ka == kb and all(torch.equal(va[n], vb[n]) for n in va)
    assert opt2.state_dict()["param_groups"][0]["lr"] == 1e-3


def test_checkpoint_replaces_previous_atomically(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    unet, ema, opt = _trained_checkpoint(folder)
    ckpt.save_checkpoint(folder, unet, ema, opt, 7, _meta())
    assert ckpt.checkpoint_step(folder) == 7
    assert not (folder / "loss.csv").exists()  # the whole folder is the new checkpoint
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))
    # A crash between the two renames leaves only .old-*: recover puts it back.
    folder.rename(tmp_path / ".old-ck-cafe")
    ckpt.recover(folder)
    assert ckpt.checkpoint_step(folder) == 7 and not list(tmp_path.glob(".old-*"))


def test_nan_weights_raise_checkpoint_error(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    _trained_checkpoint(folder)
    write_marker(folder)
    weights = folder / "unet_ema" / ckpt.WEIGHTS
    state = load_file(str(weights))
    key = sorted(state)[3]
    state[key][..., 0] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError) as err:
        ckpt.load_model(folder)
    msg = str(err.value)
    assert str(weights) in msg and key in msg and "NaN" in msg and "Fix:" in msg


def test_missing_and_mismatched_files_raise_checkpoint_error(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    _trained_checkpoint(folder)
    write_marker(folder)
    cfg_path = folder / "unet_ema" / "config.json"
    config = json.loads(cfg_path.read_text())
    config["block_out_channels"] = [16, 32, 32]
    cfg_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not fit"):
        ckpt.load_model(folder)
    (folder / "unet_ema" / ckpt.WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=ckpt.WEIGHTS) as err:
        ckpt.load_model(folder)
    assert "raydiff train" in str(err.value) and str(folder) in str(err.value)
    (folder / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json"):
        ckpt.load_model(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_model(tmp_path / "nowhere")


def test_meta_channels_must_match_unet(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    unet, ema, opt = _trained_checkpoint(folder)
    ckpt.save_checkpoint(folder, unet, ema, opt, 2, _meta(channels=3))
    write_marker(folder)
    with pytest.raises(CheckpointError, match="in / 2 out channels"):
        ckpt.load_model(folder)


# --------------------------------------------------------------------------------------------
# Latent autoencoder
# --------------------------------------------------------------------------------------------


def test_vae_build_encode_decode_and_scale() -> None:
    torch.manual_seed(0)
    vae = L.build_vae("tiny", 1, 32, latent_channels=4, downsample=2)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        z = L.encode(vae.eval(), x, 2.0)
        assert z.shape == (3, 4, 8, 8)
        torch.testing.assert_close(z, 2.0 * vae.encode(x).latent_dist.mean)  # deterministic: the mean
        assert L.decode(vae, z, 2.0, 1).shape == (3, 1, 32, 32)
        std = L.latent_std(vae, x, batch_size=2)
    torch.testing.assert_close(torch.tensor(std), z.double().std(unbiased=False).float() / 2, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="divisible"):
        L.build_vae("tiny", 1, 36, 4, 3)


def test_vae_training_reduces_reconstruction_loss() -> None:
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 6.28, 16), torch.linspace(0, 6.28, 16), indexing="ij")
    images = torch.stack([torch.sin(xx * (1 + k % 3) + k) * torch.cos(yy) for k in range(8)])[:, None] * 0.8
    vae = L.build_vae("tiny", 1, 16, latent_channels=4, downsample=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = L.vae_loss(vae, images, 1e-6, g)[1].item()
    L.train_vae(vae, images, steps=30, lr=3e-3, kl_weight=1e-6, batch_size=8, seed=0)
    with torch.no_grad():
        after = L.vae_loss(vae, images, 1e-6, torch.Generator().manual_seed(0))[1].item()
    assert after < 0.5 * before


def test_pretrained_vae_path_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vae_path"):
        L.load_pretrained_vae(tmp_path)
    vae = L.build_vae("tiny", 3, 16, 4, 1)
    vae.save_pretrained(tmp_path / "vae")
    loaded = L.load_pretrained_vae(tmp_path / "vae")
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert L.encode(loaded, x, 1.0).shape == (1, 4, 8, 8)  # grayscale into an RGB VAE
        assert L.decode(loaded, L.encode(loaded, x, 1.0), 1.0, 1).shape == (1, 1, 16, 16)


def test_reflect_padding_survives_save_and_load(tmp_path: Path) -> None:
    import torch.nn as nn

    from raydiff.models.checkpoint import UNET_EMA, load_unet

    torch.manual_seed(0)
    unet = build_unet("tiny", 3, 3, 16, base_channels=8, padding="reflect").eval()
    assert {m.padding_mode for m in unet.modules() if isinstance(m, nn.Conv2d) and m.padding != (0, 0)} == {"reflect"}
    unet.save_pretrained(tmp_path / UNET_EMA, safe_serialization=True)
    loaded = load_unet(tmp_path).eval()
    assert {m.padding_mode for m in loaded.modules() if isinstance(m, nn.Conv2d) and m.padding != (0, 0)} == {"reflect"}
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 400])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t).sample, unet(x, t).sample)
        zeros = build_unet("tiny", 3, 3, 16, base_channels=8)
        zeros.load_state_dict(unet.state_dict())
        assert not torch.allclose(zeros.eval()(x, t).sample, unet(x, t).sample)  # the mode matters at the edge
