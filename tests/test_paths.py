"""Diffusion paths against a straightforward float64 re-implementation written here."""
import numpy as np
import torch

from pathwatch.export.paths import ddim_inversion, ddim_sample, eps_fn_for, fixed_noise, forward_path
from pathwatch.export.schedule import ReducedSchedule
from pathwatch.export.unet import preset_config
from reference import random_unet, reference_inversion


def _model():
    return random_unet(preset_config("tiny", image_size=16, channel_mult=(1, 2)))


def test_inversion_matches_straightforward_float64_loop():
    model = _model()
    x0 = torch.rand(3, 3, 16, 16) * 2 - 1
    sched = ReducedSchedule.ddim("cosine", 1000, 5)
    with torch.no_grad():
        path = ddim_inversion(eps_fn_for(model), x0, sched)
        ref = reference_inversion(eps_fn_for(model), x0, 1000, sched.timesteps)[0]
    assert path.eps.shape == (5, 3, 3, 16, 16)
    np.testing.assert_allclose(path.eps.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_inversion_is_batch_invariant_and_deterministic():
    model = _model()
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    sched = ReducedSchedule.ddim("cosine", 1000, 3)
    with torch.no_grad():
        a = ddim_inversion(eps_fn_for(model), x0, sched).eps
        b = ddim_inversion(eps_fn_for(model), x0[2:], sched).eps
    torch.testing.assert_close(a[:, 2:], b, rtol=1e-5, atol=1e-5)


def test_forward_path_uses_fixed_noise():
    model = _model()
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    sched = ReducedSchedule.ddim("cosine", 1000, 4)
    z = fixed_noise((3, 16, 16), seed=7)
    assert torch.equal(z, fixed_noise((3, 16, 16), seed=7))
    with torch.no_grad():
        p = forward_path(eps_fn_for(model), x0, sched, z, clip_denoised=False)
    assert torch.equal(p.eps_true[0, 0], z) and torch.equal(p.eps_true[3, 1], z)
    # Tweedie: x0_hat recovers x0 exactly when the model's eps equals the true noise.
    abar = torch.tensor(sched.abar, dtype=torch.float32)
    xt = abar[2].sqrt() * x0 + (1 - abar[2]).sqrt() * z
    x0_hat = (xt - (1 - abar[2]).sqrt() * z) / abar[2].sqrt()
    torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)


def test_ddim_sample_shape_and_range():
    model = _model()
    x = ddim_sample(eps_fn_for(model), (2, 3, 16, 16), model.config, 5, torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 16, 16) and x.abs().max() <= 1
