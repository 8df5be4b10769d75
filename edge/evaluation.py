"""Out-of-distribution evaluation: features per image set (cached), a density fitted on the
in-distribution fit set, and AUROC / FPR@95%TPR / AUPR for each (in, out) pair.

Convention: anomalies are the positive class and the anomaly score is the negative
log-likelihood under the density, so AUROC 1.0 means every OOD image scores as less normal
than every in-distribution image. FPR@95 is the share of in-distribution images flagged when
the threshold catches 95% of the OOD ones.

Feature extraction is behind a small protocol so the same code evaluates a torch checkpoint
(`export/`) or an exported bundle (the edge runtime), with no torch import here.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .bundle import default_density
from .datasets import load_images
from .density import fit_gmm, fit_kde
from .files import write_atomic

ProgressFn = Callable[[int], None]  # called with the number of images just processed


class FeatureExtractor(Protocol):
    """Turns uint8 (N, H, W, 3) images into one (N, D) feature matrix per feature spec."""

    image_size: int
    labels: list[str]  # one per spec, for tables

    def identity(self) -> dict: ...  # what determines the features (weights hash, schedule, spec)

    def extract(self, images: np.ndarray, progress: ProgressFn | None = None) -> list[np.ndarray]: ...


@dataclass
class EvalTask:
    fit: str
    test: str
    ood: list[str]
    n_fit: int | None = 2000
    n_test: int | None = 1000
    seed: int = 0


@dataclass
class PairResult:
    variant: str
    in_dist: str
    out_dist: str
    auroc: float
    fpr95: float
    aupr: float
    n_in: int
    n_out: int
    density: dict = field(default_factory=dict)


def ood_metrics(score_in: np.ndarray, score_out: np.ndarray) -> dict[str, float]:
    """Metrics from log-likelihood-like scores (higher = more normal)."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    y = np.r_[np.zeros(len(score_in)), np.ones(len(score_out))]
    s = -np.r_[score_in, score_out]
    s = np.nan_to_num(s, nan=np.inf, posinf=np.finfo(np.float64).max)
    fpr, tpr, _ = roc_curve(y, s)
    return {"auroc": float(roc_auc_score(y, s)),
            "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
            "aupr": float(average_precision_score(y, s))}


class FeatureCache:
    """Features on disk as .npz (no pickle), keyed by everything that determines them."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None

    def path(self, key: dict) -> Path | None:
        if self.root is None:
            return None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.root / f"{digest}.npz"

    def get(self, key: dict) -> np.ndarray | None:
        p = self.path(key)
        if p is None or not p.exists():
            return None
        with np.load(p, allow_pickle=False) as z:
            return z["features"]

    def put(self, key: dict, features: np.ndarray) -> None:
        p = self.path(key)
        if p is None:
            return
        buf = io.BytesIO()
        np.savez(buf, features=features, key=json.dumps(key, sort_keys=True))
        write_atomic(p, buf.getvalue())


def set_features(extractor: FeatureExtractor, spec: str, limit: int | None, seed: int,
                 cache: FeatureCache, progress: Callable[[str, int], ProgressFn] | None = None
                 ) -> list[np.ndarray]:
    """Features of one image set for every spec of the extractor, from cache where possible."""
    ident = extractor.identity()
    common = {k: v for k, v in ident.items() if k != "features"}
    keys = [{**common, "features": f, "data": spec, "size": extractor.image_size,
             "limit": limit, "seed": seed, "format": 1} for f in ident["features"]]
    cached = [cache.get(k) for k in keys]
    if all(c is not None for c in cached):
        return cached
    images = load_images(spec, extractor.image_size, limit, seed).images
    feats = extractor.extract(images, progress(spec, len(images)) if progress else None)
    for k, f in zip(keys, feats):
        cache.put(k, f)
    return feats


def fit_density(kind: str, x: np.ndarray, seed: int = 0):
    if kind == "kde":
        return fit_kde(x, bandwidth="scott", standardize=True)
    selection = "cv" if kind == "gmm-cv" else "bic"
    return fit_gmm(x, selection=selection, seed=seed)


def run_eval(extractor: FeatureExtractor, task: EvalTask, cache: FeatureCache,
             density: str = "auto", progress=None) -> list[PairResult]:
    fit = set_features(extractor, task.fit, task.n_fit, task.seed, cache, progress)
    test = set_features(extractor, task.test, task.n_test, task.seed + 1, cache, progress)
    oods = [set_features(extractor, o, task.n_test, task.seed + 2, cache, progress)
            for o in task.ood]
    results = []
    for i, label in enumerate(extractor.labels):
        kind = default_density(label) if density == "auto" else density
        model = fit_density(kind, fit[i], task.seed)
        s_in = model.score(test[i])
        for name, feats in zip(task.ood, oods):
            m = ood_metrics(s_in, model.score(feats[i]))
            results.append(PairResult(label, task.test, name, n_in=len(s_in), n_out=len(feats[i]),
                                      density=model.summary(), **m))
    return results


def results_table(results: list[PairResult], title: str = "OOD detection"):
    from rich.table import Table

    table = Table(title=title)
    for col, just in [("variant", "left"), ("in", "left"), ("out", "left"), ("AUROC", "right"),
                      ("FPR@95", "right"), ("AUPR", "right"), ("density", "left")]:
        table.add_column(col, justify=just)
    for r in results:
        table.add_row(r.variant, r.in_dist, r.out_dist, f"{r.auroc:.3f}", f"{r.fpr95:.3f}",
                      f"{r.aupr:.3f}", r.density.get("label", ""))
    return table


def results_json(results: list[PairResult], meta: dict) -> str:
    return json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=1)



class BundleExtractor:
    """The evaluation FeatureExtractor for an exported bundle, run by any edge backend."""

    def __init__(self, bundle, backend):
        self.bundle, self.backend = bundle, backend
        self.image_size = bundle.image_size[0]
        self.labels = [bundle.manifest.features.label or bundle.label]

    def identity(self) -> dict:
        ident = self.bundle.identity()
        return {"weights_sha256": ident["weights_sha256"], "graph_sha256": ident["graph_sha256"],
                "backend": self.backend.name, "schedule": ident["schedule"],
                "features": [ident["features"]["spec"]]}

    def extract(self, images: np.ndarray, progress: ProgressFn | None = None) -> list[np.ndarray]:
        chunks = []
        for start in range(0, len(images), self.backend.max_batch):
            f, _ = self.backend(images[start:start + self.backend.max_batch])
            chunks.append(f)
            if progress:
                progress(len(f))
        return [np.concatenate(chunks) if chunks else np.zeros((0, self.backend.dim), np.float32)]
