"""Parity between two runs of the same pipeline (torch vs ONNX Runtime vs TensorRT).

Features that are sums of powers over a whole path are compared per feature column, relative
to the column's largest magnitude (an element-wise relative error is meaningless for a column
whose values straddle zero). What finally matters is whether frames rank the same, so the
report also fits a density on half of the reference features and compares the scores both
runs give to the other half (Spearman correlation and the largest score change).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Tolerances: FP32 runtimes must agree to float32 rounding; FP16 engines are judged on scores.
# `*_rel` bounds the worst single value (relative to its column's range); `*_rel_l2` the
# relative L2 error of each column (or of all heatmaps). Two float32 runtimes differ by
# reduction order in every layer, and the path amplifies it: at tau_0 = 0 the noise is
# re-derived by dividing by sqrt(1/abar_0 - 1), about 0.006 for the cosine schedule, so
# rounding grows some 160-fold. Measured: 0.6e-4 to 1.4e-4 rel L2 on trained models; the score
# ranks are what must not move.
TOLERANCES = {
    "fp32": {"features_rel": 2e-3, "features_rel_l2": 5e-4, "heatmap_rel": 2e-3,
             "heatmap_rel_l2": 5e-4, "score_spearman": 0.9999},
    "fp16": {"features_rel": 5e-2, "features_rel_l2": 2e-2, "heatmap_rel": 5e-2,
             "heatmap_rel_l2": 2e-2, "score_spearman": 0.99},
    # The one-step head of dynamic steps only picks which tiles the full head sees: its scores
    # must rank as torch's; its features, near zero where SSIM at t = 0 is ~1, may round more.
    # Its map (1 - SSIM at t = 0) is ~1e-4 everywhere, where float32 rounding alone is
    # "large": map errors are judged against at least heatmap_floor.
    "cheap": {"features_rel": 5e-2, "features_rel_l2": 2e-2, "heatmap_rel": 2e-3,
              "heatmap_rel_l2": 5e-4, "score_spearman": 0.9999, "heatmap_floor": 5e-2},
    # CPU BF16 (OpenVINO, UNet calls only): what matters is that tiles rank as in FP32.
    "bf16": {"features_rel": 5e-2, "features_rel_l2": 2e-2, "heatmap_rel": 5e-2,
             "heatmap_rel_l2": 2e-2, "score_spearman": 0.999},
}



@dataclass
class ParityReport:
    backend: str
    images: int
    features_max_abs: float
    features_rel: float  # worst column: max |a - b| / max |b|
    features_rel_l2: float  # worst column: ||a - b|| / ||b||
    worst_feature: str
    heatmap_max_abs: float
    heatmap_rel: float
    heatmap_rel_l2: float
    score_spearman: float | None
    score_max_abs: float | None
    tolerance: dict
    passed: bool
    failures: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        rho = "n/a" if self.score_spearman is None else f"{self.score_spearman:.6f}"
        return (f"{self.backend} on {self.images} images: features rel {self.features_rel:.2e} "
                f"(L2 {self.features_rel_l2:.2e}, worst {self.worst_feature}), heatmap rel "
                f"{self.heatmap_rel:.2e} (L2 {self.heatmap_rel_l2:.2e}), "
                f"score Spearman {rho} -> {verdict}")


def _column_rel(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64)).max(axis=0)
    scale = np.abs(ref.astype(np.float64)).max(axis=0)
    return diff / np.maximum(scale, np.finfo(np.float32).tiny)


def _rel_l2(ref: np.ndarray, got: np.ndarray, axis=None) -> np.ndarray:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    num = np.sqrt(((got - ref) ** 2).sum(axis=axis))
    return num / np.maximum(np.sqrt((ref ** 2).sum(axis=axis)), np.finfo(np.float32).tiny)


def score_agreement(ref: np.ndarray, got: np.ndarray, seed: int = 0) -> tuple[float, float] | None:
    """Spearman rho and max |score change| of a density fitted on half the reference rows."""
    from scipy.stats import spearmanr

    from .density import fit_gmm

    n = len(ref)
    if n < 16:
        return None
    order = np.random.default_rng(seed).permutation(n)
    fit, held = order[: n // 2], order[n // 2:]
    density = fit_gmm(ref[fit], components=(1, 2), seed=seed)
    a, b = density.score(ref[held]), density.score(got[held])
    rho = float(spearmanr(a, b).statistic)
    return rho, float(np.max(np.abs(a - b)))


def compare(backend: str, names: list[str], ref_features: np.ndarray, ref_maps: np.ndarray,
            features: np.ndarray, maps: np.ndarray, precision: str = "fp32") -> ParityReport:
    tol = TOLERANCES[precision]
    col = _column_rel(ref_features, features)
    col_l2 = _rel_l2(ref_features, features, axis=0)
    worst = int(np.argmax(col))
    # Relative to the maps' size, or to the tolerance's floor where it has one (1 - SSIM runs
    # from 0 to 2 and is shown at 8 bits).
    floor = tol.get("heatmap_floor", float(np.finfo(np.float32).tiny))
    diff = maps.astype(np.float64) - ref_maps
    ref_rms = float(np.sqrt(np.mean(ref_maps.astype(np.float64) ** 2))) if ref_maps.size else 0.0
    map_l2 = float(np.sqrt(np.mean(diff ** 2)) / max(ref_rms, floor)) if diff.size else 0.0
    map_abs = float(np.abs(diff).max()) if diff.size else 0.0
    map_rel = map_abs / max(float(np.abs(ref_maps).max()) if ref_maps.size else 0.0, floor)
    agreement = score_agreement(ref_features, features)
    rho, score_abs = agreement if agreement else (None, None)
    failures = []
    if not np.isfinite(features).all() or not np.isfinite(maps).all():
        failures.append("non-finite outputs")
    if col[worst] > tol["features_rel"]:
        failures.append(f"feature {names[worst]} rel error {col[worst]:.2e} > {tol['features_rel']:.0e}")
    if col_l2.max() > tol["features_rel_l2"]:
        bad = int(np.argmax(col_l2))
        failures.append(f"feature {names[bad]} rel L2 error {col_l2[bad]:.2e} > "
                        f"{tol['features_rel_l2']:.0e}")
    if map_l2 > tol["heatmap_rel_l2"]:
        failures.append(f"heatmap rel L2 error {map_l2:.2e} > {tol['heatmap_rel_l2']:.0e}")
    if map_rel > tol["heatmap_rel"]:
        failures.append(f"heatmap rel error {map_rel:.2e} > {tol['heatmap_rel']:.0e}")
    if rho is not None and rho < tol["score_spearman"]:
        failures.append(f"score Spearman {rho:.5f} < {tol['score_spearman']}")
    return ParityReport(backend, len(features),
                        float(np.abs(features.astype(np.float64) - ref_features).max()),
                        float(col[worst]), float(col_l2.max()), names[worst], map_abs, map_rel,
                        map_l2, rho, score_abs,
                        tol, not failures, failures)
