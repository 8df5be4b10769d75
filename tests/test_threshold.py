"""edge.threshold: the Pareto tail, exceedance clusters and the threshold they give, on samples
drawn from known distributions."""
import numpy as np
import pytest
from scipy.stats import genpareto

from pathwatch.edge.alerts import AlertPolicy, AlertTracker
from pathwatch.edge.threshold import (alert_statistic, choose_threshold, exceedance_clusters,
                                      fit_tail)


def test_pareto_tail_recovers_a_known_shape_and_quantile():
    rng = np.random.default_rng(0)
    s = genpareto.rvs(0.2, scale=1.0, size=4000, random_state=rng)
    tail = fit_tail(s, trigger=1, window=1)
    assert tail.xi == pytest.approx(0.2, abs=0.1)
    p = 1e-3
    assert tail.quantile(p) == pytest.approx(genpareto.isf(p, 0.2), rel=0.15)
    assert tail.survival(tail.quantile(p)) == pytest.approx(p, rel=1e-6)


@pytest.mark.parametrize("k", [4, 24, 120])
def test_the_predictive_quantile_is_exceeded_as_often_as_asked(k):
    """k independent exponential excesses over u (the shape the alert tail is mostly held
    at): the score read off each sample's fit is exceeded with probability p on average over
    samples. The plug-in quantile is exceeded about 7x (k = 4), 1.7x (24) and 1.1x (120) as
    often."""
    import math

    from pathwatch.edge.threshold import TailFit

    rng = np.random.default_rng(3)
    zeta, p = 0.2, 1e-3
    fits = [TailFit(u=0.0, zeta=zeta, xi=0.0, sigma=float(rng.exponential(1.0, k).mean()),
                    theta=1.0, phi=1.0, frames=int(k / zeta), max_score=0.0)
            for _ in range(20000)]
    assert fits[0].independent_excesses == k
    exceeded = lambda z: zeta * math.exp(-z)  # the true tail  # noqa: E731
    predictive = np.mean([exceeded(t.predictive_quantile(p)) for t in fits]) / p
    plug_in = np.mean([exceeded(t.quantile(p)) for t in fits]) / p
    assert predictive == pytest.approx(1.0, abs=0.1), predictive
    assert plug_in > 1.1, plug_in


def test_runs_not_frames_count_as_independent_excesses():
    # Each value held for 5 frames: five times the excess frames, the same information.
    s = np.random.default_rng(4).exponential(1.0, 400)
    once, held = fit_tail(s, 1, 1), fit_tail(np.repeat(s, 5), 1, 1)
    assert held.zeta * held.frames >= 4.5 * once.zeta * once.frames
    assert held.independent_excesses <= 1.5 * once.independent_excesses


def test_clusters_split_on_gaps_longer_than_the_window():
    over = np.zeros(30, bool)
    over[[2, 3, 5, 20, 21, 29]] = True
    assert [c.tolist() for c in exceedance_clusters(over, gap=2)] == [[2, 3, 5], [20, 21], [29]]


def test_the_alert_statistic_is_the_rules_kth_largest_of_each_window():
    s = np.array([1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 0.0])
    # 3rd largest of each 5 frames: [1 9 2 8 3] -> 3, [9 2 8 3 7] -> 7, [2 8 3 7 0] -> 3
    assert alert_statistic(s, 3, 5).tolist() == [3.0, 7.0, 3.0]
    assert alert_statistic(s[:2], 3, 5).tolist() == [1.0]  # shorter than a window: one window


def test_correlated_frames_raise_the_threshold():
    rng = np.random.default_rng(1)
    iid = rng.standard_normal(3000)
    # Each value held for 5 frames: the same marginal distribution, exceedances in clusters.
    held = np.repeat(rng.standard_normal(600), 5)
    a = choose_threshold(iid, 0.5, 5.0, trigger=3, window=5)
    b = choose_threshold(held, 0.5, 5.0, trigger=3, window=5)
    assert a.tail.phi < 0.5 and b.tail.phi == 1.0  # isolated exceedances rarely make 3 of 5
    # Same marginal, but held frames come over in threes: the 3-of-5 statistic has the
    # frames' own tail, independent ones a much lighter one.
    assert b.value > a.value + 0.5
    # Per frame, the tolerated exceedance of the statistic follows 1 / theta.
    assert a.per_frame_exceedance == pytest.approx(0.5 / (18000 * a.alert_tail.theta))


def _alerts(scores: np.ndarray, fps: float, threshold: float) -> int:
    tracker = AlertTracker("t", AlertPolicy(trigger_frames=3, window_frames=5, quiet_s=3.0,
                                            cooldown_s=10.0))
    return sum(e.state == "start" for i, s in enumerate(scores)
               for e in tracker.update(i / fps, float(s), threshold))


@pytest.mark.parametrize("rho", [0.0, 0.6])
def test_a_threshold_realizes_its_target_rate_on_the_process_it_was_fitted_on(rho):
    """Ten 2-minute windows of a known process at 5 fps each choose a threshold for 20
    alerts an hour, which the real alert rule then meets over 3 hours of the same process.
    Frames score like a tile's negative log-likelihood: chi-square with 6 degrees of freedom,
    from independent (rho 0) or AR(1)-correlated Gaussians. (Counting how often a lower
    level's exceedances made 3 of 5 and assuming that share at the threshold realized under
    a fiftieth of the target here.)"""
    from scipy.signal import lfilter

    rng = np.random.default_rng(7)

    def process(n):
        x = lfilter([np.sqrt(1 - rho ** 2)], [1, -rho], rng.standard_normal((6, n)), axis=1)
        return (x ** 2).sum(axis=0)

    fps, target = 5.0, 20.0
    realized = []
    for _ in range(10):
        z = choose_threshold(process(600), target, fps, 3, 5).value
        realized.append(_alerts(process(int(3 * 3600 * fps)), fps, z) / 3.0)
    assert target / 2 <= np.median(realized) <= 2 * target, realized
    assert max(realized) <= 10 * target, realized


def test_more_false_alarms_allowed_means_a_lower_threshold_never_below_the_window():
    s = np.random.default_rng(2).gumbel(size=500)
    strict, lax = choose_threshold(s, 0.1, 5, 3, 5), choose_threshold(s, 1000.0, 5, 3, 5)
    assert strict.value > lax.value
    # Never below what the window itself would have alerted on, by the same rule.
    assert lax.value == alert_statistic(s, 3, 5).max()
    assert "largest 3-of-5 statistic" in lax.method


def test_a_threshold_resting_on_few_runs_says_so_and_names_the_fix():
    rng = np.random.default_rng(5)
    short = choose_threshold(rng.exponential(1.0, 20), 0.5, 10.0, 3, 5)
    long = choose_threshold(rng.exponential(1.0, 3000), 0.5, 10.0, 3, 5)
    assert "calibration.seconds" in short.method and "calibration.seconds" not in long.method
    assert short.alert_tail.independent_excesses < 5 <= long.alert_tail.independent_excesses
