"""edge.density: numpy scoring against sklearn, model selection, JSON round trip, errors."""
import json

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pathwatch.edge.density import (COVARIANCE_TYPES, GaussianKDE, GaussianMixtureDensity, fit_gmm,
                          fit_kde, load_density)

ATOL = 1e-6


def split(X, seed=0, n_test=300):
    idx = np.random.default_rng(seed).permutation(len(X))
    return X[idx[n_test:]], X[idx[:n_test]]


@pytest.fixture(scope="module")
def digits():
    """Real data: the 8x8 digits, PCA-reduced to 6 dims (1797 samples)."""
    return split(PCA(6, random_state=0).fit_transform(load_digits().data))


@pytest.fixture(scope="module")
def skewed():
    """Correlated, heavy-tailed, positive-skew 6-D data, like path statistics."""
    rng = np.random.default_rng(11)
    n = 1500
    base = np.column_stack([rng.gamma(1.5, size=n), rng.lognormal(0.0, 0.6, n),
                            rng.exponential(size=n), rng.standard_normal(n),
                            rng.gamma(4.0, size=n), rng.chisquare(3, n)])
    mix = np.eye(6) + np.triu(np.full((6, 6), 0.4), 1)
    return split(base @ mix * [1.0, 3.0, 0.5, 10.0, 2.0, 40.0] + 5.0)


@pytest.fixture(scope="module")
def blobs():
    """Four well-separated Gaussian clusters with different full covariances."""
    rng = np.random.default_rng(3)
    parts = []
    for centre in rng.normal(0.0, 6.0, (4, 6)):
        a = rng.normal(size=(6, 6))
        parts.append(rng.multivariate_normal(centre, a @ a.T / 6 + 0.1 * np.eye(6), 200))
    return np.vstack(parts)


@pytest.fixture(params=["digits", "skewed"])
def data(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("cov", COVARIANCE_TYPES)
def test_gmm_scores_match_sklearn_pipeline(data, cov):
    train, test = data
    far = test * 3.0 + 10.0  # large Mahalanobis distances too
    query = np.vstack([test, far])
    pipe = Pipeline([("scale", StandardScaler()),
                     ("gmm", GaussianMixture(5, covariance_type=cov, random_state=0,
                                             max_iter=200))]).fit(train)
    expected = pipe.score_samples(query)

    direct = GaussianMixtureDensity.from_sklearn(pipe["scale"], pipe["gmm"])
    np.testing.assert_allclose(direct.score(query), expected, rtol=0, atol=ATOL)
    # fit_gmm with a one-candidate grid is that same pipeline, end to end.
    fitted = fit_gmm(train, components=(5,), covariance_types=(cov,))
    np.testing.assert_allclose(fitted.score(query), expected, rtol=0, atol=ATOL)


def test_bic_selection_finds_the_clusters(blobs):
    model = fit_gmm(blobs, selection="bic")
    assert (model.n_components, model.covariance_type) == (4, "full")
    table = model.candidates
    assert len(table) == 5 * 4
    assert {(c["n_components"], c["covariance_type"]) for c in table} == {
        (k, cov) for k in (1, 2, 4, 8, 16) for cov in COVARIANCE_TYPES}
    best = min(table, key=lambda c: c["criterion"])
    assert (best["n_components"], best["covariance_type"]) == (4, "full")
    assert model.selection == "bic" and model.summary()["label"] == "gmm full k=4 (bic)"


def test_cv_selection_finds_the_clusters(blobs):
    model = fit_gmm(blobs, components=(1, 2, 4, 8), selection="cv", folds=3)
    assert (model.n_components, model.covariance_type) == (4, "full")
    assert len(model.candidates) == 4 * 4
    best = max(model.candidates, key=lambda c: c["criterion"])
    assert (best["n_components"], best["covariance_type"]) == (4, "full")
    assert model.selection == "cv"


def test_components_clamped_to_sample_count(blobs):
    small = blobs[::40]  # 20 samples in 6-D: at most 20 // 7 = 2 components
    model = fit_gmm(small, covariance_types=("diag",))
    assert [c["n_components"] for c in model.candidates] == [1, 2]
    model = fit_gmm(small, covariance_types=("diag",), selection="cv", folds=5)  # 16 per fit
    assert [c["n_components"] for c in model.candidates] == [1, 2]


def exact_kde(points, bandwidth):
    """sklearn KernelDensity as one leaf, so it sums every kernel exactly. With the default
    leaf_size its tree pruning can be off by far more than 1e-6 for queries far from all
    points (scikit-learn issues #7492, #27186); in-distribution it agrees to ~1e-12."""
    return KernelDensity(kernel="gaussian", bandwidth=bandwidth, leaf_size=len(points)).fit(points)


def test_kde_1d_raw_statistic_matches_sklearn():
    """DiffPath-1D: KernelDensity(bandwidth=5) on the raw statistic, 1-D arrays in."""
    rng = np.random.default_rng(5)
    stat = np.sqrt(rng.chisquare(40, 800) * 90.0)  # sqrt(sum eps^2)-like, around 60
    held_out = np.sqrt(rng.chisquare(40, 200) * 90.0)
    far = np.array([0.0, 500.0])
    model = fit_kde(stat, bandwidth=5.0, standardize=False)
    default = KernelDensity(kernel="gaussian", bandwidth=5).fit(stat[:, None])
    np.testing.assert_allclose(model.score(held_out), default.score_samples(held_out[:, None]),
                               rtol=0, atol=ATOL)
    exact = exact_kde(stat[:, None], 5.0).score_samples(far[:, None])
    np.testing.assert_allclose(model.score(far), exact, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(model.score(held_out[:, None]), model.score(held_out))


@pytest.mark.parametrize("rule", ["scott", "silverman", 0.3])
def test_kde_matches_sklearn_pipeline(digits, rule):
    train, test = digits
    pipe = Pipeline([("scale", StandardScaler()),
                     ("kde", KernelDensity(kernel="gaussian", bandwidth=rule))]).fit(train)
    model = fit_kde(train, bandwidth=rule, standardize=True)
    assert model.bandwidth == pipe["kde"].bandwidth_
    np.testing.assert_allclose(model.score(test), pipe.score_samples(test), rtol=0, atol=ATOL)
    far = test * 2.0 + 5.0
    exact = exact_kde(model.points, model.bandwidth).score_samples(pipe["scale"].transform(far))
    np.testing.assert_allclose(model.score(far), exact, rtol=0, atol=ATOL)


def test_kde_subsample_is_capped_and_deterministic(skewed):
    train, test = skewed
    model = fit_kde(train, max_points=300, seed=1)
    assert model.points.shape == (300, 6) and model.n_fit == len(train)
    np.testing.assert_array_equal(model.points, fit_kde(train, max_points=300, seed=1).points)
    standardised = StandardScaler().fit_transform(train)
    assert all((standardised == p).all(axis=1).any() for p in model.points)
    exact = exact_kde(model.points, "scott")  # the rule sees the 300 kept points
    assert exact.bandwidth_ == model.bandwidth
    expected = exact.score_samples((test - model.mean) / model.scale)
    np.testing.assert_allclose(model.score(test), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind", [*COVARIANCE_TYPES, "kde"])
def test_json_round_trip_is_bitwise(skewed, tmp_path, kind):
    train, test = skewed
    model = (fit_kde(train[:400]) if kind == "kde"
             else fit_gmm(train, components=(1, 3), covariance_types=(kind,)))
    path = tmp_path / "density.json"
    model.save(path)
    stored = json.loads(path.read_text())
    assert stored["format"] == 1 and stored["kind"] == model.kind

    loaded = load_density(path)
    assert type(loaded) is type(model)
    assert loaded.score(test).tobytes() == model.score(test).tobytes()
    assert loaded.to_dict() == model.to_dict()
    assert load_density(stored).score(test).tobytes() == model.score(test).tobytes()


@pytest.mark.parametrize("model_kind", ["gmm", "kde"])
def test_wrong_feature_dimension(skewed, model_kind):
    train, test = skewed
    model = fit_kde(train[:200]) if model_kind == "kde" else fit_gmm(train, components=(2,))
    with pytest.raises(ValueError, match="density expects 6 features, got 5"):
        model.score(test[:, :5])
    with pytest.raises(ValueError, match=r"2-D \(n, 6\) array, got shape \(6,\)"):
        model.score(test[0])


@pytest.fixture(scope="module")
def gmm_dict(skewed):
    return fit_gmm(skewed[0], components=(4,), covariance_types=("full",)).to_dict()


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("mutate, problem", [
    (lambda d: _without(d, "means"), "missing key 'means'"),
    (lambda d: {**d, "kind": "svm"}, "unknown kind 'svm'"),
    (lambda d: {**d, "format": 99}, "unsupported format 99"),
    (lambda d: {**d, "means": [m[:5] for m in d["means"]]},
     r"'means' has shape \(4, 5\), expected \(4, 6\)"),
    (lambda d: {**d, "precisions_cholesky": d["precisions_cholesky"][:3]},
     r"'precisions_cholesky' has shape \(3, 6, 6\), expected \(4, 6, 6\)"),
    (lambda d: {**d, "weights": [0.5, "x", 0.2, 0.3]}, "'weights' is not a rectangular array"),
    (lambda d: {**d, "covariance_type": "banded"}, "covariance_type 'banded'"),
    (lambda d: {**d, "scale": [0.0] * 6}, "'scale' has non-positive values"),
    (lambda d: [d], "expected a JSON object"),
], ids=["missing", "kind", "format", "means-shape", "chol-shape", "ragged", "cov-type",
        "scale", "not-object"])
def test_malformed_json_names_file_and_problem(gmm_dict, tmp_path, mutate, problem):
    path = tmp_path / "camera3.json"
    path.write_text(json.dumps(mutate(gmm_dict)))
    with pytest.raises(ValueError, match=problem) as err:
        load_density(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_not_json_and_bad_kde_fields(tmp_path, skewed):
    path = tmp_path / "broken.json"
    path.write_text('{"format": 1, "kind": ')
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        load_density(path)
    d = fit_kde(skewed[0][:50]).to_dict()
    shape_problem = r"<dict>: 'points' has shape \(50, 6\), expected \(n, 5\)"
    with pytest.raises(ValueError, match=shape_problem):
        load_density({**d, "dim": 5, "mean": d["mean"][:5], "scale": d["scale"][:5]})
    with pytest.raises(ValueError, match="'bandwidth' must be a positive number"):
        load_density({**d, "bandwidth": -1.0})


@pytest.mark.parametrize("fit", [lambda x: fit_gmm(x, components=(1, 2, 4)),
                                 lambda x: fit_kde(x)], ids=["gmm", "kde"])
def test_ood_cluster_scores_lower_than_held_out(skewed, fit):
    train, test = skewed
    rng = np.random.default_rng(2)
    spread = train.std(axis=0)
    # A tight cluster within 1.5 std of the mean in every feature, but against the features'
    # positive correlations: only the joint density can tell it apart.
    centre = train.mean(axis=0) + spread * np.array([1.5, -1.5] * 3)
    ood = centre + 0.2 * spread * rng.standard_normal((200, 6))
    model = fit(train)
    s_in, s_out = model.score(test), model.score(ood)
    assert np.median(s_out) < np.percentile(s_in, 5)
    assert (s_out[:, None] < s_in[None, :]).mean() > 0.95  # AUROC
