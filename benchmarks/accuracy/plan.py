"""What the accuracy benchmark measures: base models, image sets, tasks, feature variants,
schedules and densities. Everything the tables in docs/accuracy.md depend on is here."""
from __future__ import annotations

from dataclasses import dataclass, field

from pathwatch.export.features import FeatureSpec

KS = (1, 2, 3, 5, 10)
SWEEP_KS = (3, 10)  # where the lambda / SSIM-window / trajectory / placement sweeps run
SEEDS = (0, 1, 2)
SUBSAMPLE = 0.8  # each seed draws this share of every pool (fit, test, OOD) without replacement


@dataclass(frozen=True)
class BaseModel:
    name: str
    default_path: str
    domains: frozenset[str]  # what the model saw in training; tasks touching it are not zero-shot
    trained: str  # how it was trained (the command is in docs/accuracy.md)


MODELS = {
    "fmnist": BaseModel("fmnist", "benchmarks/models/fmnist-tiny.safetensors",
                        frozenset({"fmnist"}), "pathwatch train --data fmnist:train"),
    "photos": BaseModel("photos", "edge/models/default.safetensors",
                        frozenset({"photos"}), "pathwatch train --data photos:train"),
}


@dataclass(frozen=True)
class ImageSetSpec:
    """A pool of real images: dataset spec, how many, sampling seed."""
    spec: str
    limit: int
    seed: int

    @property
    def domain(self) -> str:
        return self.spec.split(":")[0]


SETS = {
    "fmnist-train": ImageSetSpec("fmnist:train", 1500, 0),
    "fmnist-test": ImageSetSpec("fmnist:test", 600, 1),
    "digits": ImageSetSpec("digits", 600, 2),
    "photos-train": ImageSetSpec("photos:train", 600, 3),
    "photos-test": ImageSetSpec("photos:test", 400, 4),
    "textures": ImageSetSpec("textures:test", 400, 5),
}


@dataclass(frozen=True)
class Task:
    """One OOD task. kind "pair": fit on `fit`, in-distribution `test`, anomalies `ood`
    (`fit` == `test` splits one pool in two per seed). kind "one-class": each class of the
    labelled `fit` pool is normal in turn, the other classes of `test` are the anomalies."""
    name: str
    kind: str
    fit: str
    test: str
    ood: str = ""
    models: tuple[str, ...] = ("fmnist", "photos")

    @property
    def sets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.fit, self.test, self.ood) if s)

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(SETS[s].domain for s in self.sets)

    def zero_shot(self, model: str) -> bool:
        return not (self.domains & MODELS[model].domains)


TASKS = (
    Task("fmnist vs digits", "pair", "fmnist-train", "fmnist-test", "digits"),
    Task("digits vs fmnist", "pair", "digits", "digits", "fmnist-test", models=("photos",)),
    Task("fmnist one-class", "one-class", "fmnist-train", "fmnist-test"),
    Task("photos vs textures", "pair", "photos-train", "photos-test", "textures",
         models=("fmnist",)),
)

# The demo camera (edge/demo.py): per-tile densities fitted on normal frames, frame score =
# worst standardised tile, anomalies = frames during the scripted events. Its scene is built
# from scikit-image's photos and textures, so it is not zero-shot for the photos model.
DEMO = {"calibration_frames": range(0, 600, 5),     # the first minute, before any anomaly
        "normal_frames": range(700, 1060, 5),       # between the first and second anomaly
        "events": 4, "frames_per_event": 20, "tiles": (4, 3), "size": (320, 240), "fps": 10.0,
        "model": "photos", "domains": frozenset({"photos", "textures"})}


def inversion_specs() -> list[FeatureSpec]:
    """Every variant that reads the DDIM inversion path (they share one path per K)."""
    return ([FeatureSpec("diffpath6d"), FeatureSpec("diffpath1d")]
            + [FeatureSpec("6d+ssim", ssim_sigma=s) for s in (0.75, 1.5, 3.0)]
            + [FeatureSpec("amplified-eps", lam=lam) for lam in (0.5, 1.0, 2.0, 4.0)]
            + [FeatureSpec("error", lam=lam) for lam in (0.0, 1.0, 4.0)])


def forward_specs() -> list[FeatureSpec]:
    return [FeatureSpec("error", trajectory="forward", lam=lam) for lam in (0.0, 1.0, 4.0)]


# One representative per family for the K sweep; the other members run at SWEEP_KS.
MAIN_VARIANTS = ("diffpath6d", "diffpath1d", "6d+ssim l=1 s=1.5", "amplified-eps l=1 s=1.5",
                 "error/inversion l=1 s=1.5")


def placement_timesteps(placement: str, k: int, steps: int = 1000) -> tuple[int, ...]:
    """uniform: the ddimK striding; quadratic: t_i = T (i/K)^2, denser near the clean image."""
    from pathwatch.export.schedule import placed_timesteps

    return tuple(placed_timesteps(steps, k, placement))


@dataclass(frozen=True)
class Schedule:
    k: int
    placement: str = "uniform"
    trajectory: str = "inversion"

    @property
    def name(self) -> str:
        return f"K={self.k} {self.placement} {self.trajectory}"

    def specs(self) -> list[FeatureSpec]:
        return inversion_specs() if self.trajectory == "inversion" else forward_specs()


def schedules() -> list[Schedule]:
    out = [Schedule(k) for k in KS]
    out.append(Schedule(3, "quadratic"))  # placement matters most where steps are few
    out.append(Schedule(3, trajectory="forward"))
    return out


DENSITIES = ("gmm-bic-full", "gmm-bic", "gmm-cv", "kde")
DENSITY_SWEEP = {"k": 3, "variants": ("diffpath6d", "6d+ssim l=1 s=1.5")}


@dataclass
class Scale:
    """Sizes, for a quick smoke run (--quick) or the full benchmark."""
    set_limits: dict[str, int] = field(default_factory=dict)
    seeds: tuple[int, ...] = SEEDS
    demo_stride: int = 1

    @classmethod
    def quick(cls) -> "Scale":
        return cls({name: 60 if not name.startswith("fmnist-train") else 200 for name in SETS},
                   seeds=(0,), demo_stride=4)
