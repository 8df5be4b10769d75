"""Torch SSIM map against scikit-image's structural_similarity on real photos."""
import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import structural_similarity

from pathwatch.export.ssim import ssim_map, ssim_window_size


def _pair(seed=0):
    rng = np.random.default_rng(seed)
    img = data.astronaut()[100:164, 150:214].astype(np.float64) / 127.5 - 1  # a 64x64 crop
    noisy = np.clip(img + rng.normal(0, 0.2, img.shape), -1, 1)
    return img.transpose(2, 0, 1), noisy.transpose(2, 0, 1)


@pytest.mark.parametrize("sigma", [1.5, 1.0])
def test_ssim_map_matches_scikit_image(sigma):
    a, b = _pair()
    _, ref = structural_similarity(a, b, channel_axis=0, gaussian_weights=True, sigma=sigma,
                                   use_sample_covariance=False, data_range=2.0, full=True)
    exact = ssim_map(torch.from_numpy(a)[None], torch.from_numpy(b)[None], sigma=sigma)
    np.testing.assert_allclose(exact[0].numpy(), ref, atol=1e-5)  # float64: same algorithm
    fast = ssim_map(torch.from_numpy(a)[None].float(), torch.from_numpy(b)[None].float(), sigma=sigma)
    np.testing.assert_allclose(fast[0].numpy(), ref, atol=1e-4)  # float32, as in graphs


def test_ssim_of_identical_images_is_one():
    a, _ = _pair()
    t = torch.from_numpy(a)[None].float()
    assert torch.allclose(ssim_map(t, t), torch.ones_like(t), atol=1e-5)


def test_window_size():
    assert ssim_window_size(1.5) == 11
