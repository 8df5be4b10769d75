"""Accuracy benchmark: DiffPath-6D, DiffPath-1D and the SSIM-amplified family on real data.

    python -m benchmarks.accuracy run [--model fmnist=PATH] [--model photos=PATH] [--quick]
    python -m benchmarks.accuracy report

`run` extracts path features (cached under --cache, so a rerun only scores), fits the
densities and writes benchmarks/results/accuracy.json; `report` turns that JSON into
docs/accuracy.md and its figures. What is measured is in benchmarks/accuracy/plan.py.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

DEFAULT_RESULTS = "benchmarks/results/accuracy.json"
DEFAULT_CACHE = Path.home() / ".cache" / "pathwatch" / "accuracy"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _models(pairs: list[str], only: str | None) -> dict[str, str]:
    from .plan import MODELS

    names = only.split(",") if only else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"--models {only!r}: unknown {unknown}; use names from {', '.join(MODELS)}")
    chosen = {name: MODELS[name].default_path for name in names}
    for pair in pairs:
        name, _, path = pair.partition("=")
        if name not in chosen or not path:
            raise SystemExit(f"--model {pair!r}: use NAME=PATH with NAME one of {', '.join(MODELS)}")
        chosen[name] = path
    missing = [f"{n} ({p})" for n, p in chosen.items() if not Path(p).exists()]
    if missing:
        raise SystemExit(f"base model not found: {', '.join(missing)}; train it with the command "
                         "in docs/accuracy.md or pass --model NAME=PATH")
    return chosen


def cmd_run(args) -> int:
    from pathwatch.edge.evaluation import FeatureCache
    from pathwatch.export.checkpoint import load_checkpoint

    from . import extract, score
    from .plan import DEMO, KS, SEEDS, SETS, TASKS, Scale, Schedule, schedules

    scale = Scale.quick() if args.quick else Scale()
    cache = FeatureCache(args.cache)
    paths = _models(args.model, args.models)
    t0 = time.perf_counter()
    feats, labels, meta_models, labels_by_sched = {}, {}, {}, {}
    for name, path in paths.items():
        loaded = load_checkpoint(path)
        meta_models[name] = {"path": path, "weights_sha256": loaded.weights_sha256,
                             "parameters": sum(p.numel() for p in loaded.model.parameters())}
        sets = sorted({s for t in TASKS if name in t.models for s in t.sets})
        for key, f in extract.pool_features(loaded, name, sets, schedules(), scale.set_limits,
                                            cache, _log).items():
            feats[(name, *key)] = f
            labels_by_sched.setdefault(key[1], []).append(key[2])
        if name == DEMO["model"] and not args.no_demo:
            demo_scheds = [Schedule(3), Schedule(3, "quadratic"), Schedule(10)]
            for key, f in extract.demo_features(loaded, demo_scheds, scale.demo_stride, cache,
                                                _log).items():
                feats[("demo", *key)] = f
    for s in ("fmnist-train", "fmnist-test"):
        labels[s] = extract.pool_labels(s, scale.set_limits.get(s, SETS[s].limit))
    labels_by_sched = {k: list(dict.fromkeys(v)) for k, v in labels_by_sched.items()}
    t_extract = time.perf_counter() - t0

    jobs = score.plan_jobs(list(paths), labels_by_sched, scale.seeds)
    _log(f"features ready in {t_extract:.0f} s; {len(jobs)} density fits on {args.workers} workers")
    results = score.run_jobs(jobs, feats, labels, args.workers)
    demo = []
    if not args.no_demo:
        demo_jobs = [score.Job("demo", "demo camera", sched, v, "gmm-bic", seed,
                               keep_scores=(seed == scale.seeds[0] and sched == Schedule(3).name))
                     for sched, v in sorted({key[2:] for key in feats if key[0] == "demo"})
                     for seed in scale.seeds]
        demo = score.run_jobs(demo_jobs, feats, labels, args.workers, fn=score.demo_job)
    out = {"meta": {"models": meta_models, "sets": {k: vars(v) for k, v in SETS.items()},
                    "set_limits": scale.set_limits, "seeds": list(scale.seeds), "ks": list(KS),
                    "quick": args.quick, "extract_seconds": round(t_extract),
                    "total_seconds": round(time.perf_counter() - t0),
                    "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                    "command": "python -m benchmarks.accuracy " + " ".join(sys.argv[1:])},
           "results": results, "demo": demo}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=None, separators=(",", ":")))
    _log(f"wrote {args.out} ({len(results)} task results, {len(demo)} demo results) in "
         f"{time.perf_counter() - t0:.0f} s")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    write_report(json.loads(Path(args.results).read_text()), Path(args.docs), Path(args.figures))
    _log(f"wrote {args.docs} and figures in {args.figures}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy",
                                description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="extract features, fit densities, write the results JSON")
    r.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="base model checkpoint (fmnist, photos); defaults in plan.py")
    r.add_argument("--models", help="comma list: run only these base models (default: all)")
    r.add_argument("--out", default=DEFAULT_RESULTS)
    r.add_argument("--cache", default=str(DEFAULT_CACHE), help="feature cache directory")
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--quick", action="store_true", help="tiny pools and one seed (smoke test)")
    r.add_argument("--no-demo", action="store_true", help="skip the demo camera task")
    r.set_defaults(fn=cmd_run)
    rep = sub.add_parser("report", help="write docs/accuracy.md and its figures")
    rep.add_argument("--results", default=DEFAULT_RESULTS)
    rep.add_argument("--docs", default="docs/accuracy.md")
    rep.add_argument("--figures", default="docs/figures")
    rep.set_defaults(fn=cmd_report)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
