"""Densities and metrics: one job per (model, task, class, schedule, variant, density, seed).

Jobs run in worker processes (fork) that read the feature dictionary inherited from the
parent; each worker keeps BLAS to one thread, since two processes each asking for every core
made a GMM fit eight times slower on this 2-core machine.
"""
from __future__ import annotations

import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
import multiprocessing as mp

import numpy as np

from pathwatch.edge.evaluation import ood_metrics

from .plan import (DEMO, DENSITY_SWEEP, KS, MAIN_VARIANTS, SUBSAMPLE, SWEEP_KS, TASKS, Schedule,
                   Task)

_FEATS: dict = {}
_LABELS: dict = {}


@dataclass(frozen=True)
class Job:
    model: str
    task: str
    schedule: str
    variant: str
    density: str
    seed: int
    cls: int | None = None
    keep_scores: bool = False


def fit_density(kind: str, x: np.ndarray, seed: int):
    from pathwatch.edge.density import fit_gmm, fit_kde

    if kind == "kde":
        return fit_kde(x, bandwidth="scott", standardize=True)
    if kind == "gmm-bic-full":
        return fit_gmm(x, covariance_types=("full",), selection="bic", seed=seed)
    return fit_gmm(x, selection="cv" if kind == "gmm-cv" else "bic", seed=seed)


def _subsample(n: int, seed: int, salt: str, share: float = SUBSAMPLE) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    return np.sort(rng.permutation(n)[:max(1, int(round(share * n)))])


def _task(name: str) -> Task:
    return next(t for t in TASKS if t.name == name)


def _pair_sets(job: Job, task: Task):
    feats = lambda s: _FEATS[(job.model, s, job.schedule, job.variant)]  # noqa: E731
    if task.fit == task.test:  # one pool split in two halves, a new split per seed
        pool = feats(task.fit)
        perm = np.random.default_rng([job.seed, zlib.crc32(task.name.encode())]).permutation(len(pool))
        half = len(pool) // 2
        fit, test = pool[perm[:half]], pool[perm[half:]]
    else:
        fit = feats(task.fit)[_subsample(len(feats(task.fit)), job.seed, task.fit)]
        test = feats(task.test)[_subsample(len(feats(task.test)), job.seed, task.test)]
    ood = feats(task.ood)[_subsample(len(feats(task.ood)), job.seed, task.ood)]
    return fit, test, ood


def _one_class_sets(job: Job, task: Task):
    fit_pool = _FEATS[(job.model, task.fit, job.schedule, job.variant)]
    test_pool = _FEATS[(job.model, task.test, job.schedule, job.variant)]
    fit_idx = np.flatnonzero(_LABELS[task.fit] == job.cls)
    fit_idx = fit_idx[_subsample(len(fit_idx), job.seed, f"{task.fit}/{job.cls}")]
    test_idx = _subsample(len(test_pool), job.seed, task.test)
    normal = _LABELS[task.test][test_idx] == job.cls
    test = test_pool[test_idx]
    return fit_pool[fit_idx], test[normal], test[~normal]


def run_job(job: Job) -> dict:
    task = _task(job.task)
    fit, test, ood = (_one_class_sets if task.kind == "one-class" else _pair_sets)(job, task)
    model = fit_density(job.density, fit, job.seed)
    s_in, s_out = model.score(test), model.score(ood)
    rec = {**asdict(job), **ood_metrics(s_in, s_out), "zero_shot": task.zero_shot(job.model),
           "n_fit": len(fit), "n_in": len(test), "n_out": len(ood),
           "density_label": model.summary().get("label", job.density)}
    if job.keep_scores:
        rec["scores"] = {"in": (-s_in).round(4).tolist(), "out": (-s_out).round(4).tolist()}
    return rec


def demo_job(job: Job) -> dict:
    """Frame-level detection on the demo camera, through the daemon's own calibration code."""
    from pathwatch.edge.calibration import fit_calibration
    from pathwatch.edge.tiles import TileGrid

    grid = TileGrid(*DEMO["size"], 32, *DEMO["tiles"])
    get = lambda g: _FEATS[("demo", g, job.schedule, job.variant)]  # noqa: E731
    cal = fit_calibration("demo", get("calibration"), grid,
                          {"weights_sha256": "benchmark", "graph_sha256": "benchmark"},
                          job.variant, density="gmm-bic", fps=DEMO["fps"], seed=job.seed)
    frame = lambda g: np.array([cal.tile_scores(f).max() for f in get(g)])  # noqa: E731
    normal = frame("normal")
    kinds = sorted({key[1] for key in _FEATS if key[0] == "demo"} - {"calibration", "normal"})
    per_kind = {k: frame(k) for k in kinds}
    allout = np.concatenate(list(per_kind.values()))
    # ood_metrics takes likelihood-like scores (higher = normal): negate the anomaly scores.
    rec = {**asdict(job), **ood_metrics(-normal, -allout), "zero_shot": False,
           "threshold": cal.threshold, "normal_over_threshold": int((normal > cal.threshold).sum()),
           "n_in": len(normal), "n_out": len(allout),
           "per_kind": {k: {"auroc": ood_metrics(-normal, -v)["auroc"],
                            "over_threshold": int((v > cal.threshold).sum()), "frames": len(v)}
                        for k, v in per_kind.items()}}
    if job.keep_scores:
        rec["scores"] = {"normal": normal.round(3).tolist(),
                         **{k: v.round(3).tolist() for k, v in per_kind.items()}}
    return rec


def plan_jobs(models: list[str], labels_by_sched: dict[str, list[str]], seeds) -> list[Job]:
    jobs = []
    main = {Schedule(k).name for k in KS} | {Schedule(3, "quadratic").name}
    sweep = ({Schedule(k).name for k in SWEEP_KS} | {Schedule(3, "quadratic").name}
             | {Schedule(3, trajectory="forward").name})
    for model in models:
        for task in TASKS:
            if model not in task.models:
                continue
            classes = range(10) if task.kind == "one-class" else [None]
            for sched, labels in labels_by_sched.items():
                chosen = [v for v in labels if (sched in main and v in MAIN_VARIANTS)
                          or sched in sweep]
                combos = [(v, "gmm-bic-full") for v in dict.fromkeys(chosen)]
                if sched == Schedule(DENSITY_SWEEP["k"]).name:
                    combos += [(v, d) for v in DENSITY_SWEEP["variants"]
                               for d in ("gmm-bic", "gmm-cv", "kde")]
                for v, d in combos:
                    if v == "diffpath1d" and d == "gmm-bic-full":
                        d = "kde"  # DiffPath-1D is a 1-D KDE by definition
                    for seed in seeds:
                        for c in classes:
                            keep = seed == seeds[0] and c in (None, 0) and sched == Schedule(3).name
                            jobs.append(Job(model, task.name, sched, v, d, seed, c, keep))
    return list(dict.fromkeys(jobs))


def run_jobs(jobs: list[Job], feats: dict, labels: dict, workers: int, fn=run_job,
             progress=None) -> list[dict]:
    _FEATS.clear(), _FEATS.update(feats)
    _LABELS.clear(), _LABELS.update(labels)
    os.environ["OMP_NUM_THREADS"] = "1"
    out = []
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"),
                             initializer=_one_thread) as ex:
        for rec in ex.map(fn, jobs, chunksize=8):
            out.append(rec)
            if progress:
                progress()
    return out


def _one_thread() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
