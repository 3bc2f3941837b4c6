"""Stand-in following arimousa/DDAD reconstruction.py's interface (see ../README.md)."""
import torch


class Reconstruction:
    def __init__(self, unet, config):
        self.unet = unet
        self.config = config

    def _abar(self, t):
        m = self.config.model
        betas = torch.linspace(m.beta_start, m.beta_end, m.trajectory_steps, dtype=torch.float64).float()
        abar = torch.cat([torch.ones(1), torch.cumprod(1 - betas, 0)])  # abar[t + 1] = alpha-bar at step t
        return abar[t.long() + 1].view(-1, 1, 1, 1)

    def __call__(self, x, y0, w):
        m = self.config.model
        n = x.shape[0]
        a = self._abar(torch.full((n,), m.test_trajectoy_steps))
        xt = a.sqrt() * x + (1 - a).sqrt() * torch.randn_like(x)
        steps = list(range(0, m.test_trajectoy_steps, m.skip))[::-1]
        xs = [xt]
        with torch.no_grad():
            for i, t in enumerate(steps):
                t_next = steps[i + 1] if i + 1 < len(steps) else -1
                a, a_next = self._abar(torch.full((n,), t)), self._abar(torch.full((n,), t_next))
                e = self.unet(xs[-1], torch.full((n,), float(t)))
                y = a.sqrt() * y0 + (1 - a).sqrt() * e
                e = e - w * (1 - a).sqrt() * (y - xs[-1])
                x0 = (xs[-1] - (1 - a).sqrt() * e) / a.sqrt()
                s = m.eta * ((1 - a / a_next) * (1 - a_next) / (1 - a)).sqrt()
                xs.append(a_next.sqrt() * x0 + s * torch.randn_like(x) + ((1 - a_next) - s ** 2).sqrt() * e)
        return xs
