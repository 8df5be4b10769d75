"""The embedded default model: a small UNet shipped with the package (see docs/default-model.md).

Its weights ship, and so does its export (`default-bundle/`: manifest, graph, parity
references), so a device without torch runs it as it is: on first use the two are put
together as a bundle in the cache directory. A shipped export that does not match
default.json (it was not regenerated after a change) is refused with the command that
regenerates it, `python -m pathwatch.export.default_bundle`; nothing here imports the export
toolchain.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..bundle import CHEAP, Bundle, BundleError, Manifest, sha256_of

HERE = Path(__file__).parent
CARD = HERE / "default.json"
SHIPPED = HERE / "default-bundle"  # the export of the weights with default.json's settings
SHIPPED_FILES = ("manifest.json", "pipeline.onnx", "parity.npz")


def default_settings() -> dict:
    return json.loads(CARD.read_text())


def default_spec(settings: dict) -> dict:
    """The feature spec default.json asks for, as a bundle manifest records it."""
    variant, _, trajectory = settings["variant"].partition("/")
    return {"variant": variant, "trajectory": trajectory or "inversion",
            "lam": settings.get("lam", 1.0), "ssim_sigma": settings.get("ssim_sigma", 1.5)}


def default_weights() -> Path:
    return HERE / default_settings()["weights"]


def load_bundle(spec: str, cache_dir: str | Path, say: Callable[[str], None] = print) -> Bundle:
    """model.bundle: a bundle directory, or `default` for this model (installed into the
    cache directory on first use)."""
    return default_bundle(cache_dir, say) if spec == "default" else Bundle.load(spec)


def default_bundle(cache_dir: str | Path, say: Callable[[str], None] = print) -> Bundle:
    s = default_settings()
    weights = default_weights()
    if not weights.is_file():
        raise BundleError(f"the default model {weights} is missing from this installation; "
                          "reinstall pathwatch or set model.bundle to an exported bundle")
    ts = "-".join(str(t) for t in s["timesteps"])
    name = f"default-{s['sha256'][:12]}-{s['variant'].replace('/', '-')}-t{ts}"
    if (SHIPPED / CHEAP / "manifest.json").is_file():
        name += "-cheap"  # with the one-step head (an install from before it has none)
    target = Path(cache_dir).expanduser() / "bundles" / name
    if (target / "manifest.json").is_file():
        try:
            return Bundle.load(target)
        except BundleError as e:
            say(f"cached default bundle is unusable ({e}); exporting it again")
            shutil.rmtree(target, ignore_errors=True)
    if sha256_of(weights) != s["sha256"]:
        raise BundleError(f"{weights} does not match its recorded sha256; reinstall pathwatch")
    if not shipped_matches(s):
        raise BundleError(f"the shipped export in {SHIPPED} does not match {CARD.name} (changed "
                          "weights or settings); regenerate it with `python -m "
                          "pathwatch.export.default_bundle`, or set model.bundle to an exported "
                          "bundle")
    return _install_shipped(target, weights, say)


def shipped_matches(settings: dict) -> bool:
    """Whether default-bundle/ is the export of these weights with these settings."""
    try:
        path = SHIPPED / "manifest.json"
        m = Manifest.parse(json.loads(path.read_text()), path)
        shipped = m.features.spec
        return (all((SHIPPED / f).is_file() for f in SHIPPED_FILES)
                and m.model.weights_sha256 == settings["sha256"]
                and list(m.schedule.timesteps) == settings["timesteps"]
                and all(shipped.get(k) == v for k, v in default_spec(settings).items()))
    except (OSError, ValueError):  # BundleError and a JSON error are ValueErrors
        return False


def _install_shipped(target: Path, weights: Path, say: Callable[[str], None]) -> Bundle:
    """The shipped export plus the weights, assembled in a directory of this process's own and
    renamed into place, so a half-copied bundle is never found; when another process (a
    `calibrate` beside a `run`) got there first, its bundle is used."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".partial-"))
    try:
        heads = [(SHIPPED, stage)]  # the bundle, and its one-step head where it ships one
        if (SHIPPED / CHEAP / "manifest.json").is_file():
            heads.append((SHIPPED / CHEAP, stage / CHEAP))
        for src, dst in heads:
            dst.mkdir(exist_ok=True)
            for name in SHIPPED_FILES:
                shutil.copyfile(src / name, dst / name)
            shutil.copyfile(weights, dst / "weights.safetensors")
        for attempt in (1, 2):
            try:
                stage.replace(target)
                say(f"default bundle installed at {target} (shipped export, no torch needed)")
                break
            except OSError:  # the target exists: another process's, or a broken leftover
                try:
                    return Bundle.load(target)
                except BundleError:
                    if attempt == 2:
                        raise
                    shutil.rmtree(target, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already when it was renamed
    return Bundle.load(target)
