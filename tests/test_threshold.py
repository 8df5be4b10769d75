"""edge.threshold: the Pareto tail, exceedance clusters and the threshold they give, on samples
drawn from known distributions."""
import numpy as np
import pytest
from scipy.stats import genpareto

from pathwatch.edge.threshold import choose_threshold, exceedance_clusters, fit_tail


def test_pareto_tail_recovers_a_known_shape_and_quantile():
    rng = np.random.default_rng(0)
    s = genpareto.rvs(0.2, scale=1.0, size=4000, random_state=rng)
    tail = fit_tail(s, trigger=1, window=1)
    assert tail.xi == pytest.approx(0.2, abs=0.1)
    p = 1e-3
    assert tail.quantile(p) == pytest.approx(genpareto.isf(p, 0.2), rel=0.15)
    assert tail.survival(tail.quantile(p)) == pytest.approx(p, rel=1e-6)


def test_clusters_split_on_gaps_longer_than_the_window():
    over = np.zeros(30, bool)
    over[[2, 3, 5, 20, 21, 29]] = True
    assert [c.tolist() for c in exceedance_clusters(over, gap=2)] == [[2, 3, 5], [20, 21], [29]]


def test_correlated_frames_raise_the_threshold_through_the_cluster_count():
    rng = np.random.default_rng(1)
    iid = rng.standard_normal(3000)
    # Each value held for 5 frames: the same marginal distribution, exceedances in clusters.
    held = np.repeat(rng.standard_normal(600), 5)
    a = choose_threshold(iid, 0.5, 5.0, trigger=3, window=5)
    b = choose_threshold(held, 0.5, 5.0, trigger=3, window=5)
    assert a.tail.phi < 0.5 and b.tail.phi == 1.0  # isolated exceedances rarely make 3 of 5
    assert b.tail.theta == pytest.approx(0.2, abs=0.05)  # clusters of about five frames
    # Per frame, the tolerated exceedance follows 1 / (theta * phi).
    assert a.per_frame_exceedance == pytest.approx(0.5 / (18000 * a.tail.theta * a.tail.phi))


def test_more_false_alarms_allowed_means_a_lower_threshold_never_below_the_maximum():
    s = np.random.default_rng(2).gumbel(size=500)
    strict, lax = choose_threshold(s, 0.1, 5, 3, 5), choose_threshold(s, 100.0, 5, 1, 1)
    assert strict.value > lax.value >= s.max()
    assert "largest out-of-fold score" in lax.method
