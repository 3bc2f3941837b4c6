"""Stand-in following JustinTebbe/Dynamic-noise-AD utilities.py's interface (see ../README.md)."""
import torch


def compute_alpha2(beta, t, config):
    abar = torch.cat([torch.ones(1), torch.cumprod(1 - beta.float(), 0)])
    return abar[t.long() + 1].view(-1, 1, 1, 1)
