"""Path features against independent float64 computations written in the tests."""
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from pathwatch.export.features import FeatureSpec, features_from_path, power_sums
from pathwatch.export.paths import ddim_inversion, eps_fn_for
from pathwatch.export.pipeline import DiffPathPipeline, features_for_specs
from pathwatch.export.schedule import ReducedSchedule
from pathwatch.export.unet import preset_config
from reference import random_unet, reference_6d, reference_inversion


@pytest.fixture(scope="module")
def setup():
    model = random_unet(preset_config("tiny", image_size=16, channel_mult=(1, 2)))
    x0 = torch.rand(3, 3, 16, 16) * 2 - 1
    sched = ReducedSchedule.ddim("cosine", 1000, 4)
    return model, x0, sched


def test_diffpath6d_equals_straightforward_computation(setup):
    model, x0, sched = setup
    feats, heat = DiffPathPipeline(model, sched, FeatureSpec("diffpath6d"))(x0)
    eps, _ = reference_inversion(eps_fn_for(model), x0, 1000, sched.timesteps)
    # atol: deps_dt is K * (sum eps_last - sum eps_first), a difference of sums of size ~70.
    np.testing.assert_allclose(feats.numpy(), reference_6d(eps), rtol=1e-4, atol=5e-4)
    assert heat.shape == (3, 16, 16)


def test_diffpath1d_is_root_of_squared_derivative_sum(setup):
    model, x0, sched = setup
    f6, _ = DiffPathPipeline(model, sched, FeatureSpec("diffpath6d"))(x0)
    f1, _ = DiffPathPipeline(model, sched, FeatureSpec("diffpath1d"))(x0)
    torch.testing.assert_close(f1[:, 0], f6[:, 4].sqrt())


def test_uint8_input_equals_float_input(setup):
    model, _, sched = setup
    img = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    x0 = img.permute(0, 3, 1, 2).float() / 127.5 - 1
    a, _ = DiffPathPipeline(model, sched, FeatureSpec(), uint8_input=True)(img)
    b, _ = DiffPathPipeline(model, sched, FeatureSpec())(x0)
    torch.testing.assert_close(a, b)


def test_ssim_family_against_scikit_image(setup):
    model, x0, sched = setup
    lam = 2.0
    eps, x0_hat = reference_inversion(eps_fn_for(model), x0, 1000, sched.timesteps)
    x = x0.double().numpy()
    w = np.stack([[1 - structural_similarity(x[b], x0_hat[k, b], channel_axis=0, gaussian_weights=True,
                                             sigma=1.5, use_sample_covariance=False, data_range=2.0,
                                             full=True)[1].mean(0)
                   for b in range(x.shape[0])] for k in range(sched.k)])  # (K, B, H, W)
    gain = (1 + lam * w)[:, :, None]
    specs = [FeatureSpec("amplified-eps", lam=lam), FeatureSpec("6d+ssim", lam=lam),
             FeatureSpec("error", "inversion", lam=lam)]
    (amp, amp_heat), (ssim6, ssim_heat), (err, err_heat) = features_for_specs(model, sched, specs, x0)
    np.testing.assert_allclose(amp.numpy(), reference_6d(gain * eps), rtol=2e-4, atol=2e-3)
    np.testing.assert_allclose(amp_heat.numpy(), w.sum(0), atol=2e-4)

    s = w.sum((2, 3))  # (K, B)
    ssim_stats = np.stack([s.sum(0), (s ** 2).sum(0), (np.diff(s, axis=0) * sched.k).sum(0)], 1)
    np.testing.assert_allclose(ssim6.numpy()[:, 6:], ssim_stats, rtol=2e-4, atol=1e-3)
    np.testing.assert_allclose(ssim6.numpy()[:, :6], reference_6d(eps), rtol=1e-4, atol=5e-4)

    abar = sched.abar[:, None, None, None, None]
    eps_true = (reference_inversion_states(model, x0, sched) - np.sqrt(abar) * x[None]) / np.sqrt(1 - abar)
    e = gain * (eps - eps_true) ** 2
    np.testing.assert_allclose(err.numpy(), reference_6d(e), rtol=5e-4, atol=1e-3)
    np.testing.assert_allclose(err_heat.numpy(), e.sum(0).mean(1), rtol=5e-4, atol=1e-3)


def reference_inversion_states(model, x0, sched):
    """The x_i the inversion visits, rebuilt from the reference eps and x0_hat."""
    eps, x0_hat = reference_inversion(eps_fn_for(model), x0, 1000, sched.timesteps)
    abar_next = sched.abar_next[:, None, None, None, None]
    nxt = np.sqrt(abar_next) * x0_hat + np.sqrt(1 - abar_next) * eps
    return np.concatenate([x0.double().numpy()[None], nxt[:-1]])


def test_lambda_zero_reduces_to_diffpath6d(setup):
    model, x0, sched = setup
    (a, _), (b, _) = features_for_specs(model, sched, [FeatureSpec("amplified-eps", lam=0.0),
                                                      FeatureSpec("diffpath6d")], x0)
    torch.testing.assert_close(a, b)


def test_forward_trajectory_error_features(setup):
    model, x0, sched = setup
    spec = FeatureSpec("error", "forward", lam=1.0)
    f, heat = DiffPathPipeline(model, sched, spec)(x0)
    f2, _ = DiffPathPipeline(model, sched, spec)(x0[1:])
    assert f.shape == (3, 6) and (heat >= 0).all()
    torch.testing.assert_close(f[1:], f2, rtol=1e-5, atol=1e-5)  # fixed noise: batch invariant


def test_power_sums_k1_has_zero_derivative_terms():
    v = torch.randn(1, 2, 3, 4, 4)
    p = power_sums(v)
    assert torch.all(p[:, 3:] == 0)


def test_spec_validation_and_names():
    assert len(FeatureSpec("6d+ssim").names) == 9
    assert FeatureSpec("error", "forward").label.startswith("error/forward")
    with pytest.raises(ValueError, match="variant 'bogus'"):
        FeatureSpec("bogus")
    with pytest.raises(ValueError, match="'error' variant only"):
        FeatureSpec("6d+ssim", "forward")
