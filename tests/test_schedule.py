import math

import numpy as np
import pytest

from pathwatch.export.schedule import ReducedSchedule, beta_schedule, ddim_timesteps


def test_ddim_striding_is_improved_diffusion_convention():
    assert ddim_timesteps(4000, 10) == list(range(0, 4000, 400))
    assert ddim_timesteps(1000, 3) == [0, 334, 668]  # stride 334 is the first giving 3 steps
    assert ddim_timesteps(1000, 1) == [0]
    with pytest.raises(ValueError, match="K=0"):
        ddim_timesteps(1000, 0)


def test_cosine_abar_follows_the_formula_until_the_beta_cap():
    betas = beta_schedule("cosine", 1000)
    abar = np.cumprod(1 - betas)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abar[499] == pytest.approx(f(500 / 1000) / f(0), rel=1e-9)
    assert betas.max() == pytest.approx(0.999)


def test_linear_schedule_scales_with_steps():
    b = beta_schedule("linear", 4000)
    assert b[0] == pytest.approx(0.000025) and b[-1] == pytest.approx(0.005)


def test_reduced_schedule_tables():
    s = ReducedSchedule.ddim("cosine", 4000, 10)
    full = np.cumprod(1 - beta_schedule("cosine", 4000))
    assert np.array_equal(s.abar, full[list(range(0, 4000, 400))])
    assert s.abar_next[-1] == 0.0 and s.abar_next[0] == s.abar[1]
    assert s.model_timesteps().tolist() == [t / 4 for t in range(0, 4000, 400)]
    with pytest.raises(ValueError, match="strictly increasing"):
        ReducedSchedule("cosine", 1000, (5, 3))


def test_placements():
    from pathwatch.export.schedule import placed_timesteps

    assert placed_timesteps(1000, 3, "uniform") == [0, 334, 668]
    assert placed_timesteps(1000, 3, "quadratic") == [0, 111, 444]
    assert placed_timesteps(1000, 10, "quadratic") == [0, 10, 40, 90, 160, 250, 360, 490, 640, 810]
    assert ReducedSchedule.placed("cosine", 1000, 3, "quadratic").timesteps == (0, 111, 444)
    with pytest.raises(ValueError, match="two steps on one timestep"):
        placed_timesteps(1000, 40, "quadratic")
    with pytest.raises(ValueError, match="placement 'log'"):
        placed_timesteps(1000, 3, "log")
