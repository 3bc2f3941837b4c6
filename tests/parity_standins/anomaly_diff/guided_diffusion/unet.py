"""Stand-in for guided_diffusion/unet.py: ``UNetModel(**kwargs)(x, timesteps, y)`` with the
reference's constructor arguments and state-dict key names (time_embed, label_emb,
input_blocks.N.M, middle_block, output_blocks, out; ResBlock in_layers / emb_layers /
out_layers / skip_connection; AttentionBlock norm / qkv / proj_out with per-head [q; k; v]
rows). Written for raydiff's CI from the layout, not copied; only what
raydiff/parity/ran_init.py uses (2-D, no fp16, no gradient checkpointing, conv resampling only
with ``resblock_updown``)."""

import math

import torch as th
import torch.nn as nn
import torch.nn.functional as F


def _norm(ch):
    return nn.GroupNorm(32, ch)


def _embedding(t, dim):
    half = dim // 2
    freqs = th.exp(-math.log(10000) * th.arange(half, dtype=th.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return th.cat([th.cos(args), th.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, out_ch, scale_shift, up=False, down=False):
        super().__init__()
        self.scale_shift, self.up, self.down = scale_shift, up, down
        self.in_layers = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, (2 if scale_shift else 1) * out_ch))
        self.out_layers = nn.Sequential(_norm(out_ch), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def _resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x, emb):
        h = self.in_layers[1](self.in_layers[0](x))
        h, x = self._resample(h), self._resample(x)
        h = self.in_layers[2](h)
        e = self.emb_layers(emb)[..., None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[1](h))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch, head_channels):
        super().__init__()
        self.heads = ch // head_channels
        self.norm = _norm(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        b, c, hh, ww = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat)).reshape(b, self.heads, 3, c // self.heads, hh * ww)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, H, c, T)
        w = th.softmax(th.einsum("bhct,bhcs->bhts", q, k) / math.sqrt(c // self.heads), dim=-1)
        a = th.einsum("bhts,bhcs->bhct", w, v).reshape(b, c, -1)
        return (flat + self.proj_out(a)).reshape(b, c, hh, ww)


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions,
                 dropout=0, channel_mult=(1, 2, 4, 8), conv_resample=True, dims=2, num_classes=None,
                 use_checkpoint=False, use_fp16=False, num_heads=1, num_head_channels=-1, num_heads_upsample=-1,
                 use_scale_shift_norm=False, resblock_updown=False, use_new_attention_order=False):
        super().__init__()
        assert resblock_updown and num_head_channels > 0 and not use_new_attention_order, "not in the stand-in"
        emb = 4 * model_channels
        self.model_channels, self.num_classes = model_channels, num_classes
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb)
        ch = model_channels
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skips, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, emb, mult * model_channels, use_scale_shift_norm)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_head_channels))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(ResBlock(ch, emb, ch, use_scale_shift_norm, down=True)))
                skips.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, emb, ch, use_scale_shift_norm),
                                                    AttentionBlock(ch, num_head_channels),
                                                    ResBlock(ch, emb, ch, use_scale_shift_norm))
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb, channel_mult[level] * model_channels, use_scale_shift_norm)]
                ch = channel_mult[level] * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_head_channels))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, emb, ch, use_scale_shift_norm, up=True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(self, x, timesteps, y=None):
        assert (y is not None) == (self.num_classes is not None)
        emb = self.time_embed(_embedding(timesteps, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(th.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
