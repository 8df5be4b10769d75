"""Straightforward float64 re-implementations used as independent references by the tests."""
import numpy as np
import torch

from pathwatch.export.schedule import beta_schedule


def reference_inversion(eps_fn, x0, steps, taus, kind="cosine", clip=True):
    """DDIM inversion in numpy, float64 arithmetic with the state rounded to float32 between
    steps (the model runs in float32); returns (eps, x0_hat), each (K, B, C, H, W)."""
    abar_full = np.cumprod(1 - beta_schedule(kind, steps))
    abar = [abar_full[t] for t in taus] + [0.0]
    x, eps_out, x0_out = x0.double().numpy(), [], []
    for i, t in enumerate(taus):
        t_model = torch.full((x.shape[0],), t * 1000.0 / steps)
        e = eps_fn(torch.from_numpy(x).float(), t_model).detach().double().numpy()
        x0_hat = (x - np.sqrt(1 - abar[i]) * e) / np.sqrt(abar[i])
        if clip:
            x0_hat = np.clip(x0_hat, -1, 1)
        e = (x - np.sqrt(abar[i]) * x0_hat) / np.sqrt(1 - abar[i])
        eps_out.append(e)
        x0_out.append(x0_hat)
        x = (np.sqrt(abar[i + 1]) * x0_hat + np.sqrt(1 - abar[i + 1]) * e).astype(np.float32).astype(np.float64)
    return np.stack(eps_out), np.stack(x0_out)


def reference_6d(eps):
    """DiffPath's six statistics of a (K, B, C, H, W) array, per image."""
    k = eps.shape[0]
    d = np.diff(eps, axis=0) * k
    ax = (0, 2, 3, 4)
    return np.stack([eps.sum(ax), (eps ** 2).sum(ax), (eps ** 3).sum(ax),
                     d.sum(ax), (d ** 2).sum(ax), (d ** 3).sum(ax)], axis=1)


def random_unet(config):
    """A UNet with every weight random (the zero-initialised layers would hide wiring)."""
    from pathwatch.export.unet import UNetModel

    torch.manual_seed(0)
    m = UNetModel(config).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    return m
