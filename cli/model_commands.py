"""The model jobs: train, eval, export, bundle. They import `pathwatch.export` (torch) inside
their handlers, so the daemon's commands work on a device without torch."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .console import UsageError, console, out, print_mapping, progress, whole

VARIANTS = ("diffpath6d", "diffpath1d", "6d+ssim", "amplified-eps", "error/inversion",
            "error/forward")
# The options that choose the path and its features, shared by eval and export.
PATH_OPTIONS = ("variant", "k", "placement", "timesteps", "lam", "ssim_sigma")


def given_options(a) -> set[str]:
    """The options (dests) the user gave on the command line, as opposed to their defaults."""
    return set(getattr(a, "given_options", ()))


def _note_given(namespace, dest: str) -> None:
    namespace.given_options = given_options(namespace) | {dest}


class _Store(argparse.Action):
    """store, noting that the option was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _note_given(namespace, self.dest)


class _Append(argparse.Action):
    """append, noting that the option was given; its first use replaces the default list."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest) if self.dest in given_options(namespace) else []
        setattr(namespace, self.dest, [*before, values])
        _note_given(namespace, self.dest)


def add_path_options(p, repeatable_variant: bool) -> None:
    """--variant, --k, --placement, --timesteps, --lam, --ssim-sigma with the one set of
    defaults (pathwatch.export.defaults: the embedded default model's, chosen by
    docs/accuracy.md), so eval and export measure and ship the same thing."""
    from pathwatch.export.defaults import DEFAULTS as d

    names = ", ".join(VARIANTS)
    if repeatable_variant:
        p.add_argument("--variant", action=_Append, default=[d.variant],
                       help=f"feature variant, repeatable: {names}, or 'all' (default {d.variant})")
    else:
        p.add_argument("--variant", action=_Store, default=d.variant,
                       help=f"feature variant: {names} (default {d.variant})")
    p.add_argument("--k", type=whole(1), action=_Store, default=d.k,
                   help=f"number of DDIM steps (default {d.k})")
    p.add_argument("--placement", choices=["uniform", "quadratic"], action=_Store,
                   default=d.placement, help="where the K steps go: uniform (ddimK striding) or "
                   f"quadratic (t_i = T (i/K)^2, nearer the clean image); default {d.placement} "
                   f"(with the default K: t = {', '.join(map(str, d.timesteps))} of 1000)")
    p.add_argument("--timesteps", action=_Store,
                   help="explicit comma-separated timestep list instead of --k and --placement")
    p.add_argument("--lam", type=float, action=_Store, default=d.lam,
                   help=f"SSIM amplification lambda (default {d.lam:g})")
    p.add_argument("--ssim-sigma", type=float, action=_Store, default=d.ssim_sigma,
                   help=f"SSIM Gaussian window sigma (default {d.ssim_sigma:g})")


def bundle_cache_dir() -> Path:
    """Where `--bundle default` installs the embedded default model: where `pathwatch run`
    does with no cache_dir set ($CACHE_DIRECTORY, else ~/.cache/pathwatch)."""
    first = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]  # systemd may list several
    return Path(first or "~/.cache/pathwatch").expanduser()


# ---------------------------------------------------------------------------------- train
def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a base diffusion UNet on an image source",
                       description="Train a base UNet. DATA is a dataset spec: fmnist:train, "
                       "digits, photos:train, textures, lfw, folder:PATH, video:PATH or a path.")
    p.add_argument("--data", required=True, help="image source spec (see above)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, train.json, samples.png)")
    p.add_argument("--model", default="tiny", help="architecture preset: tiny, small, base")
    p.add_argument("--config", help="YAML/JSON model config (improved-diffusion flag names) "
                   "instead of a preset")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--minutes", type=float, help="wall-clock budget for the whole command "
                   "(loading, training, saves and the samples grid): training stops early "
                   "enough for the final save and samples to fit")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ema-rate", type=float, default=0.999)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--limit", type=int, help="use at most this many training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=cmd_train)


def cmd_train(a) -> int:
    started = time.monotonic()  # the --minutes budget counts from here
    if a.minutes is not None and not a.minutes > 0:
        raise UsageError(f"--minutes {a.minutes:g}: the budget must be above 0")
    from pathwatch.export.checkpoint import read_config_file
    from pathwatch.export.train import Trainer, TrainSettings
    from pathwatch.export.unet import ModelConfig, preset_config

    _check_device(a.device)
    out_dir = Path(a.out)
    if a.resume and not (out_dir / "train.json").exists():
        raise UsageError(f"--resume: {out_dir} has no train.json; start without --resume")
    if not a.resume and (out_dir / "train.json").exists():
        raise UsageError(f"{out_dir} already holds a run; pass --resume or choose another --out")
    settings = TrainSettings(data=a.data, out=a.out, image_size=a.image_size,
                             batch_size=a.batch_size, lr=a.lr, ema_rate=a.ema_rate,
                             steps=a.steps, minutes=a.minutes, save_every=a.save_every,
                             seed=a.seed, device=a.device, limit=a.limit)
    if a.resume:
        saved = json.loads((out_dir / "train.json").read_text())
        cfg = ModelConfig.from_dict(saved["model_config"])
    else:
        cfg = read_config_file(a.config) if a.config else preset_config(a.model, a.image_size)
    settings.image_size = cfg.image_size
    trainer = Trainer(settings, cfg, resume=a.resume, started=started)
    budget = f" (budget {a.minutes:g} min, loading included)" if a.minutes else ""
    console.print(f"training {trainer.parameters:,} parameters on {len(trainer.data):,} images "
                  f"from [bold]{a.data}[/] -> {out_dir}{budget}", highlight=False)
    with progress() as prog:
        task = prog.add_task("train", total=a.steps, completed=trainer.state.step, info="")

        def on_step(st, loss):
            left = trainer.budget_left()
            prog.update(task, completed=st.step,
                        info=f"loss {loss:.4f}  {st.images_per_second:.0f} img/s"
                        + ("" if left is None else f"  {max(left, 0):.0f} s of budget left"))
        state = trainer.run(on_step)
        samples = prog.add_task("samples.png", total=trainer.preview_steps, info="EMA, DDIM")
        preview = trainer.save_preview(
            on_step=lambda done, total: prog.update(samples, completed=done))
    info = trainer.info  # written by the run's final save
    summary = {"out": str(out_dir), "steps": state.step, "seconds": round(state.seconds, 1),
               "wall_seconds": round(time.monotonic() - started, 1),
               "images_per_second": info["images_per_second"], "final_loss": info["final_loss"],
               "parameters": info["parameters"], "ema_sha256": info["ema_sha256"],
               "preview": str(preview)}
    print_mapping("training run", summary)
    return 0


# ----------------------------------------------------------------------------------- eval
def add_eval(sub) -> None:
    from pathwatch.edge.datasets import dataset_names

    p = sub.add_parser("eval", help="OOD detection metrics of a checkpoint's path features",
                       description="Fit a density on --fit features, score --test (in) against "
                       f"each --ood set. Sets: {', '.join(dataset_names())}, folder:PATH, video:PATH.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint",
                     help="run directory, .safetensors, or a foreign improved-diffusion .pt")
    src.add_argument("--bundle", help="an exported bundle directory, or 'default' for the "
                     "embedded default model (installed where `pathwatch run` puts it: "
                     "$CACHE_DIRECTORY or ~/.cache/pathwatch); runs its graph on an edge backend, "
                     "variant and schedule come from the bundle")
    p.add_argument("--backend", default="auto", help="with --bundle: auto, onnxruntime, "
                   "tensorrt or torch")
    p.add_argument("--config", help="model config for a foreign .pt (e.g. DiffPath's YAML)")
    add_path_options(p, repeatable_variant=True)
    p.add_argument("--fit", required=True, help="in-distribution set to fit the density on")
    p.add_argument("--test", required=True, help="in-distribution test set")
    p.add_argument("--ood", action="append", required=True, help="out-of-distribution set (repeatable)")
    p.add_argument("--n-fit", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--density", default="auto", choices=["auto", "gmm-bic", "gmm-cv", "kde"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "pathwatch" / "features"),
                   help="feature cache ('' disables)")
    p.add_argument("--json", help="also write the results as JSON here")
    p.set_defaults(func=cmd_eval)


def parse_variants(names: list[str] | None, lam: float, sigma: float):
    from pathwatch.export.defaults import DEFAULTS
    from pathwatch.export.features import FeatureSpec

    names = names or [DEFAULTS.variant]
    if "all" in names:
        names = list(VARIANTS)
    specs = []
    for n in names:
        variant, _, traj = n.partition("/")
        specs.append(FeatureSpec(variant, traj or "inversion", lam, sigma))
    return specs


def schedule_for(cfg, k: int, timesteps: str | None, placement: str = "uniform"):
    from pathwatch.export.schedule import ReducedSchedule

    if timesteps:
        ts = tuple(int(t) for t in timesteps.split(","))
        return ReducedSchedule(cfg.noise_schedule, cfg.diffusion_steps, ts)
    return ReducedSchedule.placed(cfg.noise_schedule, cfg.diffusion_steps, k, placement)


def _torch_extractor(a):
    from pathwatch.export.checkpoint import load_checkpoint
    from pathwatch.export.pipeline import TorchExtractor

    _check_device(a.device)
    loaded = load_checkpoint(a.checkpoint, a.config, a.device)
    sched = schedule_for(loaded.config, a.k, a.timesteps, a.placement)
    specs = parse_variants(a.variant, a.lam, a.ssim_sigma)
    meta = {"checkpoint": str(loaded.path), "weights_sha256": loaded.weights_sha256,
            "schedule": sched.to_dict()}
    return TorchExtractor(loaded, sched, specs, a.batch_size, a.device), sched.timesteps, meta


def _bundle_extractor(a):
    from pathwatch.edge.backends import load_backend
    from pathwatch.edge.evaluation import BundleExtractor
    from pathwatch.edge.models import load_bundle

    given = [o for o in PATH_OPTIONS if o in given_options(a)]
    if given:
        options = ", ".join("--" + o.replace("_", "-") for o in given)
        raise UsageError(f"{options}: the variant and schedule come from the bundle; export "
                         "another bundle to change them")
    log = lambda m: console.print(m, highlight=False)  # noqa: E731
    bundle = load_bundle(a.bundle, bundle_cache_dir(), log)
    backend = load_backend(bundle, a.backend, max_batch=a.batch_size, log=log)
    meta = {"bundle": str(bundle.root), **bundle.identity(), "backend": backend.describe()}
    return BundleExtractor(bundle, backend), bundle.timesteps, meta


def cmd_eval(a) -> int:
    from pathwatch.edge.evaluation import EvalTask, FeatureCache, results_json, results_table, run_eval

    extractor, timesteps, meta = _bundle_extractor(a) if a.bundle else _torch_extractor(a)
    task = EvalTask(a.fit, a.test, a.ood, a.n_fit, a.n_test, a.seed)
    k = len(timesteps)
    with progress() as prog:
        def on_set(name, total):
            t = prog.add_task(f"features {name}", total=total, info=f"K={k}")
            return lambda n: prog.advance(t, n)
        results = run_eval(extractor, task, FeatureCache(a.cache_dir or None), a.density, on_set)
    out.print(results_table(results, f"OOD detection, K={k} {list(timesteps)}"))
    if a.json:
        meta["task"] = vars(task)
        Path(a.json).write_text(results_json(results, meta))
        console.print(f"wrote {a.json}")
    return 0


# --------------------------------------------------------------------------------- export
def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint as a bundle (ONNX graph + manifest)",
                       description="Write a bundle: the whole reduced schedule and one feature "
                       "variant as one ONNX graph (uint8 NHWC RGB in; features and heatmap out), "
                       "a manifest, the weights and parity references. ONNX Runtime must "
                       "reproduce torch on real images or the export fails.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="run directory, .safetensors or .pt")
    src.add_argument("--bundle", help="an exported bundle: only write its --triton-repository")
    p.add_argument("--config", help="model config for a foreign .pt")
    p.add_argument("--out", help="bundle directory to write (with --checkpoint)")
    add_path_options(p, repeatable_variant=False)
    p.add_argument("--parity-data", action="append", help="image set(s) for the parity gate "
                   "(repeatable; default photos:test and digits; folder:PATH for your own)")
    p.add_argument("--parity-n", type=int, default=128, help="images in the parity gate")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the engines take")
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines here")
    p.add_argument("--no-cheap-head", action="store_true", help="leave out the one-step head "
                   "that dynamic steps run on every tile (written by default when K > 1)")
    p.add_argument("--precision", action="append", choices=["fp16", "fp32"],
                   help="TensorRT precision, repeatable (default fp16)")
    p.add_argument("--json", help="write the parity report(s) as JSON here")
    p.add_argument("--triton-repository", metavar="DIR", help="also write a Triton model "
                   "repository for the bundle (DIR/<model>/config.pbtxt, 1/model.onnx or .plan)")
    p.add_argument("--triton-model", default="pathwatch", help="its model name (model.triton.model)")
    p.add_argument("--triton-platform", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                   help="serve the ONNX graph or a TensorRT engine of the bundle (--precision)")
    p.set_defaults(func=cmd_export)


def cmd_export(a) -> int:
    if a.bundle:
        from pathwatch.edge.bundle import Bundle
        if not a.triton_repository:
            raise UsageError("--bundle only writes a Triton repository: add --triton-repository DIR")
        _triton_repository(Bundle.load(a.bundle), a)
        return 0
    if not a.out:
        raise UsageError("--checkpoint needs --out DIR (the bundle directory to write)")
    check_export_dependencies()  # before any work: not after a minute of exporting
    from pathwatch.export.bundle_export import DEFAULT_PARITY_DATA, ParityFailure, export_bundle
    from pathwatch.export.checkpoint import load_checkpoint

    loaded_cfg = load_checkpoint(a.checkpoint, a.config).config
    spec = parse_variants([a.variant], a.lam, a.ssim_sigma)[0]
    sched = schedule_for(loaded_cfg, a.k, a.timesteps, a.placement)
    log = lambda m: console.print(m, highlight=False)  # noqa: E731
    with progress() as prog:
        stages = _ExportStages(prog)
        try:
            result = export_bundle(a.checkpoint, a.out, spec, sched, a.k, a.config,
                                   a.parity_data or DEFAULT_PARITY_DATA, a.parity_n, a.opset,
                                   a.max_batch, log=log, progress=stages,
                                   cheap_head=not a.no_cheap_head)
        except ParityFailure as e:
            stages.failed()
            failure = e
        else:
            failure = None
            reports = [result.parity]
            if a.tensorrt:
                reports += _build_engines(result.bundle, a.precision or ["fp16"], a.max_batch,
                                          log, stages)
    if failure is not None:
        _print_parity([failure.report])
        console.print(f"[red]pathwatch export: parity gate failed[/]; the bundle is left at "
                      f"{failure.where} for inspection", highlight=False)
        return 1
    _print_parity(reports)
    if a.json:
        Path(a.json).write_text(json.dumps([r.to_dict() for r in reports], indent=1))
    out.print(f"bundle written to {result.bundle.root} ({result.bundle.label}); export "
              f"{result.seconds['export']:.1f} s, parity {result.seconds['parity']:.1f} s")
    passed = all(r.passed for r in reports)
    if passed and a.triton_repository:
        _triton_repository(result.bundle, a)
    return 0 if passed else 1


def _triton_repository(bundle, a) -> None:
    from pathwatch.export.triton_repository import write_repository

    where = write_repository(bundle, a.triton_repository, a.triton_model, a.triton_platform,
                             a.max_batch, (a.precision or ["fp16"])[0])
    out.print(f"Triton model '{a.triton_model}' written to {where} ({a.triton_platform})")


def _build_engines(bundle, precisions, max_batch, log, stages=None) -> list:
    """Each engine is checked against the recorded torch outputs and recorded only if it
    passed (a failed one is deleted, so nothing can load it later)."""
    from pathwatch.edge.backends.tensorrt_backend import build_checked_engine

    advance = stages.count("TensorRT", len(precisions)) if stages else lambda n, info=None: None
    reports = []
    for precision in precisions:
        advance(0, f"{precision}: building the engine, then its parity check")
        reports.append(build_checked_engine(bundle, precision, max_batch, log=log)[1])
        advance(1, f"{precision}: {'passed' if reports[-1].passed else 'FAILED'}")
    return reports


class _ExportStages:
    """pathwatch.export.bundle_export.ExportProgress on a rich progress display: one bar for
    the export's stages, one per counted step (the parity gate's images, TensorRT engines).
    Off a terminal rich prints only the final state, a line per bar."""

    def __init__(self, prog):
        from pathwatch.export.bundle_export import STAGES

        self.prog, self.stages = prog, STAGES
        self.task = prog.add_task("export", total=len(STAGES), info="")

    def stage(self, name: str | None) -> None:
        if name is None:
            self.prog.update(self.task, completed=len(self.stages), info="done")
        else:
            self.prog.update(self.task, completed=self.stages.index(name), info=name)

    def failed(self) -> None:
        self.prog.update(self.task, info="[red]parity gate failed[/]")
        self.prog.stop_task(self.task)

    def count(self, name: str, total: int):
        task = self.prog.add_task(name, total=total, info="")

        def advance(n: int, info: str | None = None) -> None:
            self.prog.update(task, advance=n, **({} if info is None else {"info": info}))
        return advance


# What the export extra needs, and the one line that says how to get all of it: the parity gate
# runs ONNX Runtime, which comes from exactly one runtime extra (onnxruntime and
# onnxruntime-gpu install the same module and break each other).
EXPORT_INSTALL = ("pip install 'pathwatch[export,cpu]' (or 'pathwatch[export,gpu]' on an "
                  "NVIDIA GPU; never both runtime extras)")


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_export_dependencies() -> None:
    """A UsageError naming exactly what to install when export could not finish: torch, onnx
    and safetensors (the export extra) and ONNX Runtime (the parity gate's runtime)."""
    missing = [m for m in ("torch", "safetensors", "onnx") if not _importable(m)]
    try:
        import onnxruntime  # noqa: F401  (imported, not only found: a broken install fails here)
    except ImportError:
        missing.append("onnxruntime")
    if missing == ["onnxruntime"]:
        raise UsageError("the parity gate runs the exported graph on ONNX Runtime, which is not "
                         f"installed: {EXPORT_INSTALL}")
    if missing:
        raise UsageError(f"export needs {', '.join(missing)}, not installed: {EXPORT_INSTALL}")


# --------------------------------------------------------------------------------- bundle
def add_bundle(sub) -> None:
    p = sub.add_parser("bundle", help="inspect and verify bundles")
    bsub = p.add_subparsers(dest="bundle_command", required=True)
    v = bsub.add_parser("verify", help="check a bundle's files and re-run its parity check",
                        description="Check the manifest, the graph hash and the graph's embedded "
                        "contract, then run the bundle on the images recorded at export with each "
                        "backend and compare with the torch outputs recorded then.")
    v.add_argument("bundle", help="bundle directory")
    v.add_argument("--backend", action="append", help="backend(s) to check (default auto)")
    v.add_argument("--checkpoint", help="also check that the bundle was exported from this file")
    v.add_argument("--precision", default="fp32", choices=["fp16", "fp32", "bf16"],
                   help="tolerances (and TensorRT engine precision) to apply")
    v.add_argument("--json", help="write the report(s) as JSON here")
    v.set_defaults(func=cmd_bundle_verify)
    i = bsub.add_parser("info", help="print a bundle's manifest summary")
    i.add_argument("bundle")
    i.set_defaults(func=cmd_bundle_info)


def cmd_bundle_info(a) -> int:
    from pathwatch.edge.bundle import Bundle

    b = Bundle.load(a.bundle)
    m = b.manifest
    parameters = "?" if m.model.parameters is None else f"{m.model.parameters:,}"
    print_mapping(str(b.root), {
        "model": f"{m.model.name} ({parameters} parameters)",
        "weights sha256": b.weights_sha256, "features": f"{b.label}: {', '.join(b.feature_names)}",
        "timesteps": b.timesteps, "input": f"{m.input.dtype} {m.input.layout} "
        f"{m.input.height}x{m.input.width} {m.input.color_order}",
        "graph": f"{m.graph.file} opset {m.graph.opset}, {m.graph.exporter}",
        "engines": ", ".join(e["file"] for e in b.engines) or "none",
        "parity": _parity_passed(m.parity)})
    return 0


def _parity_passed(parity: dict):
    report = parity.get("onnxruntime_cpu")
    return report.get("passed", "not run") if isinstance(report, dict) else "not run"


def _verify_backend(bundle, backend, precision: str):
    from pathwatch.edge.parity import compare

    ref = bundle.parity_reference()
    if ref is None:
        raise UsageError(f"{bundle.root} has no parity.npz; re-export it to record references")
    feats, maps = backend(ref["images"])
    return compare(backend.name, bundle.feature_names, ref["features"], ref["heatmap"],
                   feats, maps, precision)


def cmd_bundle_verify(a) -> int:
    from pathwatch.edge.backends import load_backend
    from pathwatch.edge.bundle import Bundle, sha256_of

    bundle = Bundle.load(a.bundle)
    if a.checkpoint:
        sha = sha256_of(a.checkpoint)
        known = {bundle.weights_sha256, bundle.manifest.model.source_sha256}
        if sha not in known:
            raise UsageError(f"weights hash mismatch: {a.checkpoint} has sha256 {sha[:12]}..., "
                             f"the bundle was exported from {bundle.weights_sha256[:12]}...; "
                             "re-export the bundle from this checkpoint")
    log = lambda m: console.print(m, highlight=False)  # noqa: E731
    reports = []
    for kind in a.backend or ["auto"]:
        backend = load_backend(bundle, kind, precision=a.precision, warmup=False, log=log)
        reports.append(_verify_backend(bundle, backend, a.precision))
        backend.close()
    _print_parity(reports)
    if a.json:
        Path(a.json).write_text(json.dumps([r.to_dict() for r in reports], indent=1))
    return 0 if all(r.passed for r in reports) else 1


def _print_parity(reports) -> None:
    from rich.table import Table

    t = Table(title="parity against torch")
    for col in ("backend", "images", "features rel (max / L2)", "worst", "heatmap rel (max / L2)",
                "score Spearman", "result"):
        t.add_column(col)
    for r in reports:
        rho = "n/a" if r.score_spearman is None else f"{r.score_spearman:.6f}"
        t.add_row(r.backend, str(r.images), f"{r.features_rel:.2e} / {r.features_rel_l2:.2e}",
                  r.worst_feature, f"{r.heatmap_rel:.2e} / {r.heatmap_rel_l2:.2e}", rho,
                  "[green]pass[/]" if r.passed else "[red]FAIL[/] " + "; ".join(r.failures))
    out.print(t)


def _check_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is visible to torch; use --device cpu")


def register(sub) -> None:
    for add in (add_train, add_eval, add_export, add_bundle):
        add(sub)
