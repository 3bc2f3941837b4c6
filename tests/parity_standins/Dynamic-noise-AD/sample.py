"""Stand-in following Dynamic-noise-AD sample.py's my_generalized_steps interface (see ../README.md)."""
import torch

from utilities import compute_alpha2


def my_generalized_steps(y, x, seq, model, b, config, eta2, eta3, constants_dict, eraly_stop=True):
    n, m = x.shape[0], seq[0].shape[0]
    xs, preds = [x], []
    with torch.no_grad():
        for idx in range(m - 1, -1, -1):
            t = torch.stack([s[idx] for s in seq])
            t_next = torch.stack([s[idx - 1] for s in seq]) if idx else torch.full((n,), -1)
            a, a_next = compute_alpha2(b, t, config), compute_alpha2(b, t_next, config)
            e = model(xs[-1], t)
            e = e - eta2 * (1 - a).sqrt() * (a.sqrt() * y + (1 - a).sqrt() * e - xs[-1])
            x0 = (xs[-1] - (1 - a).sqrt() * e) / a.sqrt()
            preds.append(x0)
            s = config.model.eta * ((1 - a / a_next) * (1 - a_next) / (1 - a)).sqrt()
            xs.append(a_next.sqrt() * x0 + s * torch.randn_like(x) + ((1 - a_next) - s ** 2).sqrt() * e)
    return xs, preds
