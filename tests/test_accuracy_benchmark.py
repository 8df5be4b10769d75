"""The accuracy benchmark's bookkeeping: schedules, zero-shot marking, aggregation and the rule
that picks the defaults (the measurements themselves run as `python -m benchmarks.accuracy`)."""
import pytest

from benchmarks.accuracy.plan import KS, MAIN_VARIANTS, TASKS, Schedule, placement_timesteps
from benchmarks.accuracy.report import Results, choose_defaults


def test_placements():
    assert placement_timesteps("uniform", 3) == (0, 334, 668)
    assert placement_timesteps("quadratic", 3) == (0, 111, 444)
    assert placement_timesteps("uniform", 10)[:3] == (0, 100, 200)
    with pytest.raises(ValueError, match="two steps on one timestep"):
        placement_timesteps("quadratic", 40)


def test_zero_shot_marking():
    task = {t.name: t for t in TASKS}
    assert task["fmnist vs digits"].zero_shot("photos")
    assert not task["fmnist vs digits"].zero_shot("fmnist")
    assert task["photos vs textures"].zero_shot("fmnist")
    assert task["fmnist one-class"].zero_shot("photos")


def _records(auroc_of):
    """Results for two zero-shot tasks (one of them one-class) and three seeds."""
    out = []
    for sched in [Schedule(k) for k in KS] + [Schedule(3, "quadratic")]:
        k = sched.k
        for v in MAIN_VARIANTS:
            for seed in range(3):
                base = auroc_of(v, k) + 0.002 * seed
                density = "kde" if v == "diffpath1d" else "gmm-bic-full"
                if sched.placement == "quadratic":
                    base -= 0.05  # placement measured, but worse here
                common = dict(model="photos", schedule=sched.name, variant=v,
                              density=density, seed=seed, zero_shot=True, fpr95=0.5, aupr=0.5)
                out.append(dict(common, task="fmnist vs digits", cls=None, auroc=base))
                for c in range(10):  # one-class: class values average to `base`
                    out.append(dict(common, task="fmnist one-class", cls=c,
                                    auroc=base + (0.01 if c % 2 else -0.01)))
    return {"meta": {}, "results": out}


def test_defaults_pick_best_variant_and_smallest_close_k():
    def auroc(v, k):
        gain = {"6d+ssim l=1 s=1.5": 0.05}.get(v, 0.0)
        return 0.7 + gain + {1: -0.1, 2: -0.02, 3: -0.005, 5: 0.0, 10: 0.0}[k]

    res = Results(_records(auroc))
    mean, spread, n = res.group(True, Schedule(10).name, "6d+ssim l=1 s=1.5")
    assert n == 2 and mean == pytest.approx(0.752) and spread == pytest.approx(0.00163, abs=1e-4)
    d = choose_defaults(res)
    assert d["variant"] == "6d+ssim l=1 s=1.5" and d["k"] == 3
    assert d["placement"] == "uniform" and d["timesteps"] == [0, 334, 668]


def test_defaults_keep_6d_when_nothing_beats_it():
    res = Results(_records(lambda v, k: 0.8 if v == "diffpath6d" else 0.7))
    d = choose_defaults(res)
    assert d["variant"] == "diffpath6d" and d["k"] == 1


def test_defaults_take_a_better_placement_at_equal_k():
    def auroc(v, k):
        return {1: 0.6, 2: 0.7, 3: 0.75, 5: 0.8, 10: 0.8}[k] + (0.05 if v == "6d+ssim l=1 s=1.5" else 0)

    recs = _records(auroc)
    for r in recs["results"]:
        if r["schedule"] == Schedule(3, "quadratic").name:
            r["auroc"] += 0.10  # 0.80 + 0.05 - 0.05 + ... : beats uniform K=3 and reaches K=10
    d = choose_defaults(Results(recs))
    assert (d["k"], d["placement"], d["timesteps"]) == (3, "quadratic", [0, 111, 444])
