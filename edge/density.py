"""Density models over small per-camera / per-tile feature vectors (DiffPath statistics).

Two kinds, one interface (`Density`): a Gaussian mixture chosen by BIC or cross-validation
(`fit_gmm`) and a Gaussian kernel density (`fit_kde`, the DiffPath-1D choice). Fitting uses
scikit-learn, imported inside the fit functions only; scoring is plain numpy, so the edge
daemon runs without sklearn. Models are saved as JSON, never pickle. Python writes floats
with repr, which round-trips exactly, so a loaded model scores bitwise-identically.

Score convention: `score(X)` is the per-sample log-likelihood of the *standardised*
features (higher = more normal), i.e. exactly what
`Pipeline([StandardScaler(), model]).score_samples(X)` returns. The DiffPath reference code
scores that way. It differs from the raw-space log-density by the constant sum(log(scale)),
so rankings, AUROC and thresholds fitted on these scores are unaffected.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from .files import write_atomic

FORMAT = 1  # bump when the JSON layout changes; load_density refuses other versions
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
_LOG_2PI = math.log(2.0 * math.pi)
_KDE_CHUNK = 1 << 21  # max query x point x dim elements held at once while scoring a KDE


@dataclass(eq=False)
class Density(ABC):
    """Standardise with (mean, scale), then score with a numpy-only model."""

    kind: ClassVar[str]
    mean: np.ndarray   # (D,) StandardScaler.mean_ (zeros when not standardising)
    scale: np.ndarray  # (D,) StandardScaler.scale_ (ones when not standardising)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def score(self, X: np.ndarray) -> np.ndarray:
        """Per-sample log-likelihood in the standardised space (higher = more normal)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1 and self.dim == 1:
            X = X[:, None]
        if X.ndim != 2:
            raise ValueError(f"density expects a 2-D (n, {self.dim}) array, got shape {X.shape}")
        if X.shape[1] != self.dim:
            raise ValueError(f"density expects {self.dim} features, got {X.shape[1]}")
        # Same two operations as StandardScaler.transform, so Z is bitwise what sklearn sees.
        return self._score_standardised((X - self.mean) / self.scale)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "kind": self.kind, "dim": self.dim,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), **self._fields()}

    def save(self, path: str | os.PathLike) -> None:
        write_atomic(path, json.dumps(self.to_dict(), allow_nan=False))

    @abstractmethod
    def summary(self) -> dict[str, Any]:
        """Short description for tables and logs; always has a "label"."""

    @abstractmethod
    def _score_standardised(self, Z: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _fields(self) -> dict[str, Any]:
        """The kind-specific JSON fields."""

    @classmethod
    @abstractmethod
    def _from_fields(cls, d: dict, mean: np.ndarray, scale: np.ndarray) -> Density: ...


# ---------------------------------------------------------------------------- Gaussian mixture

@dataclass(eq=False)
class GaussianMixtureDensity(Density):
    """StandardScaler + GaussianMixture, scored like sklearn's `score_samples`."""

    kind: ClassVar[str] = "gmm"
    covariance_type: str
    weights: np.ndarray              # (K,)
    means: np.ndarray                # (K, D)
    precisions_cholesky: np.ndarray  # sklearn's precisions_cholesky_, shape set by the type
    selection: str | None = None     # "bic" or "cv" when chosen by fit_gmm
    # One row per candidate: n_components, covariance_type, criterion (BIC, lower is better,
    # or mean held-out log-likelihood per sample, higher is better; None if the fit failed).
    candidates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_components(self) -> int:
        return int(self.weights.shape[0])

    @classmethod
    def from_sklearn(cls, scaler: Any, gmm: Any, selection: str | None = None,
                     candidates: Sequence[dict] = ()) -> GaussianMixtureDensity:
        """From a fitted StandardScaler and GaussianMixture (copies the arrays)."""
        return cls(mean=np.array(scaler.mean_, dtype=np.float64),
                   scale=np.array(scaler.scale_, dtype=np.float64),
                   covariance_type=gmm.covariance_type,
                   weights=np.array(gmm.weights_, dtype=np.float64),
                   means=np.array(gmm.means_, dtype=np.float64),
                   precisions_cholesky=np.array(gmm.precisions_cholesky_, dtype=np.float64),
                   selection=selection, candidates=[dict(c) for c in candidates])

    def _score_standardised(self, Z: np.ndarray) -> np.ndarray:
        D = self.dim
        log_gauss = -0.5 * (D * _LOG_2PI + self._sq_mahalanobis(Z)) + self._log_det()
        return _logsumexp(log_gauss + np.log(self.weights), axis=1)

    def _sq_mahalanobis(self, Z: np.ndarray) -> np.ndarray:
        """(n, K) squared Mahalanobis distances, via the precision Cholesky factors."""
        L, K, D = self.precisions_cholesky, self.n_components, self.dim
        if self.covariance_type in ("full", "tied"):
            chols = L if self.covariance_type == "full" else np.broadcast_to(L, (K, D, D))
            # Z @ L - mu @ L rather than (Z - mu) @ L: the order sklearn uses.
            return np.stack([np.sum(np.square(Z @ c - mu @ c), axis=1)
                             for mu, c in zip(self.means, chols)], axis=1)
        # diag / spherical: the factor is 1/sigma per dimension / per component.
        inv_sigma = L if self.covariance_type == "diag" else L[:, None]
        return np.sum(np.square((Z[:, None, :] - self.means[None]) * inv_sigma[None]), axis=2)

    def _log_det(self) -> np.ndarray | float:
        """log det of each precision Cholesky factor (= half the log det of the precision)."""
        L = self.precisions_cholesky
        if self.covariance_type == "full":
            return np.sum(np.log(np.diagonal(L, axis1=1, axis2=2)), axis=1)
        if self.covariance_type == "tied":
            return float(np.sum(np.log(np.diag(L))))
        if self.covariance_type == "diag":
            return np.sum(np.log(L), axis=1)
        return self.dim * np.log(L)

    def summary(self) -> dict[str, Any]:
        how = f" ({self.selection})" if self.selection else ""
        label = f"gmm {self.covariance_type} k={self.n_components}{how}"
        return {"label": label, "kind": self.kind, "covariance_type": self.covariance_type,
                "n_components": self.n_components}

    def _fields(self) -> dict[str, Any]:
        return {"covariance_type": self.covariance_type, "weights": self.weights.tolist(),
                "means": self.means.tolist(),
                "precisions_cholesky": self.precisions_cholesky.tolist(),
                "selection": self.selection, "candidates": self.candidates}

    @classmethod
    def _from_fields(cls, d: dict, mean: np.ndarray, scale: np.ndarray) -> GaussianMixtureDensity:
        cov = _get(d, "covariance_type")
        if cov not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type {cov!r} is not one of {list(COVARIANCE_TYPES)}")
        D = mean.shape[0]
        weights = _array(d, "weights", (None,), positive=True)
        K = weights.shape[0]
        if K == 0:
            raise ValueError("'weights' is empty")
        chol_shape = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[cov]
        chol = _array(d, "precisions_cholesky", chol_shape)
        diag = np.diagonal(chol, axis1=-2, axis2=-1) if cov in ("full", "tied") else chol
        if np.any(diag <= 0):
            raise ValueError("'precisions_cholesky' has a non-positive diagonal")
        candidates = d.get("candidates", [])
        if not isinstance(candidates, list):
            raise ValueError("'candidates' is not a list")
        return cls(mean=mean, scale=scale, covariance_type=cov, weights=weights,
                   means=_array(d, "means", (K, D)), precisions_cholesky=chol,
                   selection=d.get("selection"), candidates=candidates)


def fit_gmm(X: np.ndarray, components: Sequence[int] = (1, 2, 4, 8, 16),
            covariance_types: Sequence[str] = COVARIANCE_TYPES, selection: str = "bic",
            folds: int = 5, seed: int = 0, max_iter: int = 200,
            reg_covar: float = 1e-6) -> GaussianMixtureDensity:
    """Pick (n_components, covariance_type) from the grid, then refit the best on all of X.

    selection="bic": lowest BIC of a fit on all standardised data. selection="cv": highest
    mean held-out log-likelihood over `folds` shuffled folds. n_components is clamped to
    n // (D + 1), n being the smallest sample count a fit sees. Every candidate is recorded
    in `candidates`. `reg_covar` is added to covariance diagonals in standardised units:
    raise it for small samples of strongly correlated features.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import StandardScaler

    if selection not in ("bic", "cv"):
        raise ValueError(f"selection must be 'bic' or 'cv', got {selection!r}")
    bad = [c for c in covariance_types if c not in COVARIANCE_TYPES]
    if bad or not covariance_types or not components:
        raise ValueError(f"need components and covariance types from {list(COVARIANCE_TYPES)}")
    X = _as_samples(X)
    # Standardise once on all data, for BIC and CV alike: every candidate is then compared in
    # one space, and the scaler's 2*D parameters leak negligibly into the CV folds.
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    splits = []
    if selection == "cv":
        n_folds = min(folds, len(Z))
        if n_folds < 2:
            raise ValueError(f"cross-validation needs at least 2 samples and folds, got {len(Z)}")
        splits = list(KFold(n_folds, shuffle=True, random_state=seed).split(Z))
    n_fit = min(len(tr) for tr, _ in splits) if splits else len(Z)
    # At most n_fit // (D + 1) components: each can then own D + 1 points, the fewest that
    # span a D-dim covariance, so small sets can't "win" with components collapsed on points.
    max_k = max(1, n_fit // (Z.shape[1] + 1))

    def make(k: int, cov: str) -> GaussianMixture:
        return GaussianMixture(k, covariance_type=cov, max_iter=max_iter, random_state=seed,
                               reg_covar=reg_covar)

    def criterion(k: int, cov: str) -> float | None:
        try:
            if selection == "bic":
                return float(make(k, cov).fit(Z).bic(Z))
            return float(np.mean([make(k, cov).fit(Z[tr]).score(Z[va]) for tr, va in splits]))
        except ValueError:  # e.g. a component collapsed onto too few points
            return None

    candidates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # noise across a grid of fits
        for cov in covariance_types:
            for k in sorted({max(1, min(int(c), max_k)) for c in components}):
                candidates.append({"n_components": k, "covariance_type": cov,
                                   "criterion": criterion(k, cov)})
    scored = [c for c in candidates if c["criterion"] is not None and math.isfinite(c["criterion"])]
    if not scored:
        raise ValueError("every GMM candidate failed to fit")
    sign = 1.0 if selection == "bic" else -1.0
    best = min(scored, key=lambda c: sign * c["criterion"])  # first wins ties: fewer parameters
    gmm = make(best["n_components"], best["covariance_type"]).fit(Z)
    return GaussianMixtureDensity.from_sklearn(scaler, gmm, selection, candidates)


# ---------------------------------------------------------------------- Gaussian kernel density

@dataclass(eq=False)
class GaussianKDE(Density):
    """Gaussian kernel density, scored like sklearn's KernelDensity(kernel="gaussian").

    The sum over points is exact. sklearn's default tree can prune wrongly for queries far
    from every point (scikit-learn #7492, #27186); with leaf_size >= n it sums exactly and
    agrees with this to ~1e-12. DiffPath-1D is the D=1 case:
    `fit_kde(x, bandwidth=5.0, standardize=False)`.
    """

    kind: ClassVar[str] = "kde"
    points: np.ndarray               # (M, D) training points, already standardised
    bandwidth: float                 # in the standardised space
    bandwidth_rule: str | None = None  # "scott" / "silverman" when derived from the data
    n_fit: int = 0                   # samples given to fit_kde, before any subsampling

    def _score_standardised(self, Z: np.ndarray) -> np.ndarray:
        M, D = self.points.shape
        h = self.bandwidth
        log_norm = math.log(M) + D * math.log(h) + 0.5 * D * _LOG_2PI
        out = np.empty(len(Z))
        step = max(1, _KDE_CHUNK // (M * D))  # bound the (queries, points, D) temporary
        for i in range(0, len(Z), step):
            diff = Z[i:i + step, None, :] - self.points[None]
            # Exact differences, not |z|^2 + |p|^2 - 2 z.p: raw statistics can be large.
            out[i:i + step] = _logsumexp(-0.5 * np.sum(diff * diff, axis=2) / (h * h), axis=1)
        return out - log_norm

    def summary(self) -> dict[str, Any]:
        rule = f" ({self.bandwidth_rule})" if self.bandwidth_rule else ""
        return {"label": f"kde h={self.bandwidth:.3g}{rule}", "kind": self.kind,
                "bandwidth": self.bandwidth, "n_points": int(self.points.shape[0])}

    def _fields(self) -> dict[str, Any]:
        return {"bandwidth": self.bandwidth, "bandwidth_rule": self.bandwidth_rule,
                "n_fit": self.n_fit, "points": self.points.tolist()}

    @classmethod
    def _from_fields(cls, d: dict, mean: np.ndarray, scale: np.ndarray) -> GaussianKDE:
        points = _array(d, "points", (None, mean.shape[0]))
        if points.shape[0] == 0:
            raise ValueError("'points' is empty")
        h = _get(d, "bandwidth")
        if not isinstance(h, (int, float)) or isinstance(h, bool) or not 0 < h < math.inf:
            raise ValueError(f"'bandwidth' must be a positive number, got {h!r}")
        n_fit = d.get("n_fit", 0)
        if not isinstance(n_fit, int) or isinstance(n_fit, bool):
            raise ValueError(f"'n_fit' must be an integer, got {n_fit!r}")
        return cls(mean=mean, scale=scale, points=points, bandwidth=float(h),
                   bandwidth_rule=d.get("bandwidth_rule"), n_fit=n_fit)


def fit_kde(X: np.ndarray, bandwidth: float | str = "scott", standardize: bool = True,
            max_points: int = 10_000, seed: int = 0) -> GaussianKDE:
    """Gaussian KDE on X (standardised first if asked).

    bandwidth: a number, or "scott" / "silverman" (sklearn's rules, which assume unit
    variance, so pair them with standardize=True). The training points are stored in the
    model; above `max_points` a uniform subsample without replacement, drawn with `seed`, is
    kept instead (deterministic; the rules then use the kept count).
    """
    from sklearn.neighbors import KernelDensity
    from sklearn.preprocessing import StandardScaler

    X = _as_samples(X)
    if standardize:
        scaler = StandardScaler().fit(X)
        mean, scale, Z = scaler.mean_, scaler.scale_, scaler.transform(X)
    else:
        mean, scale, Z = np.zeros(X.shape[1]), np.ones(X.shape[1]), X
    if len(Z) > max_points:
        Z = Z[np.sort(np.random.default_rng(seed).choice(len(Z), max_points, replace=False))]
    # sklearn resolves the bandwidth rule (and validates the value) for us.
    kde = KernelDensity(kernel="gaussian", bandwidth=bandwidth).fit(Z)
    return GaussianKDE(mean=mean, scale=scale, points=np.array(Z, dtype=np.float64),
                       bandwidth=float(kde.bandwidth_),
                       bandwidth_rule=bandwidth if isinstance(bandwidth, str) else None,
                       n_fit=len(X))


# ------------------------------------------------------------------------------------ loading

_KINDS: dict[str, type[Density]] = {"gmm": GaussianMixtureDensity, "kde": GaussianKDE}


def load_density(source: str | os.PathLike | dict) -> Density:
    """A density from a JSON file or an already-parsed dict; dispatches on "kind".

    Malformed input raises ValueError with one line naming the source and the problem.
    """
    if isinstance(source, dict):
        name, d = "<dict>", source
    else:
        name = str(source)
        try:
            d = json.loads(Path(source).read_text())
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{name}: not valid JSON ({e})") from None
    try:
        return _from_dict(d)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def _from_dict(d: Any) -> Density:
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    fmt = _get(d, "format")
    if fmt != FORMAT:
        raise ValueError(f"unsupported format {fmt!r} (this code reads {FORMAT})")
    kind = _get(d, "kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown kind {kind!r} (expected one of {sorted(_KINDS)})")
    dim = _get(d, "dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"'dim' must be a positive integer, got {dim!r}")
    mean = _array(d, "mean", (dim,))
    scale = _array(d, "scale", (dim,), positive=True)
    return cls._from_fields(d, mean, scale)


def _get(d: dict, key: str) -> Any:
    if key not in d:
        raise ValueError(f"missing key {key!r}")
    return d[key]


def _array(d: dict, key: str, shape: tuple[int | None, ...], positive: bool = False) -> np.ndarray:
    """d[key] as a finite float64 array of `shape` (None matches any length)."""
    value = _get(d, key)
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{key!r} is not a rectangular array of numbers") from None
    expected = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        raise ValueError(f"{key!r} has shape {a.shape}, expected {expected}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{key!r} has non-finite values")
    if positive and np.any(a <= 0):
        raise ValueError(f"{key!r} has non-positive values")
    return a


def _as_samples(X: np.ndarray) -> np.ndarray:
    """Training data as (n, D) float64; a 1-D array is n samples of one feature."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"expected a non-empty (n, D) array, got shape {X.shape}")
    return X


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # rows of -inf stay -inf instead of becoming NaN
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(a - m), axis=axis)) + np.squeeze(m, axis=axis)
