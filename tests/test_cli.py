"""`pathwatch train` and `pathwatch eval` end to end on small real data."""
import json

import pytest

from pathwatch.cli import main


def test_train_writes_a_complete_run(tiny_run):
    info = json.loads((tiny_run / "train.json").read_text())
    assert info["state"]["step"] == 60
    assert info["final_loss"] is not None and info["final_loss"] < 1.5
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "samples.png"):
        assert (tiny_run / name).stat().st_size > 0


def test_train_json_holds_no_optimizer_internals(tiny_run):
    """The optimizer's state dict (parameter index lists, betas, ...) lives in the state file
    that --resume reads, not in the human-readable train.json."""
    from safetensors import safe_open

    from pathwatch.export.train import OPTIMIZER_KEY

    text = (tiny_run / "train.json").read_text()
    info = json.loads(text)
    assert "optimizer" not in info and "param_groups" not in text and '"params"' not in text
    assert set(info) >= {"settings", "model_config", "state", "ema_sha256", "final_loss"}
    with safe_open(tiny_run / "optimizer.safetensors", "pt") as f:
        layout = json.loads(f.metadata()[OPTIMIZER_KEY])
        assert any(k.endswith(".exp_avg") for k in f.keys())
    assert layout["param_groups"][0]["params"][:3] == [0, 1, 2]


def test_the_train_budget_leaves_room_for_the_final_save_and_samples():
    from pathwatch.export.train import final_seconds, preview_steps_for, should_stop

    # The sample grid: 50 DDIM steps unless that would take over a quarter of the budget.
    assert preview_steps_for(None, forward_s=0.1, save_s=0.1) == 50
    assert preview_steps_for(60, forward_s=0.1, save_s=0.5) == 50
    assert preview_steps_for(20, forward_s=0.1, save_s=0.1) == 25
    assert preview_steps_for(6, forward_s=0.1, save_s=0.1) == 10
    assert preview_steps_for(1, forward_s=1.0, save_s=1.0) == 10  # never fewer than 10
    assert preview_steps_for(None, 0.1, 0.1, diffusion_steps=30) == 10  # a stride of 30 steps
    final = final_seconds(10, forward_s=0.1, save_s=0.5)
    assert final > 0.5 + 10 * 0.1  # with a margin
    # Another step only while it, a periodic save after it, and the final work all fit.
    assert not should_stop(left_s=10, step_s=1, final_s=final)
    assert should_stop(left_s=final + 0.9, step_s=1, final_s=final)
    assert not should_stop(left_s=final + 1.1, step_s=1, final_s=final)
    assert should_stop(left_s=final + 1.1, step_s=1, final_s=final, save_s=0.5)


def test_a_budget_spent_before_training_still_takes_one_step(tmp_path):
    """--minutes counts from the command's start: when loading already used it up, the run
    takes its one step, saves and keeps the sample grid short."""
    import time

    from conftest import TINY_CONFIG
    from pathwatch.export.checkpoint import read_config_file
    from pathwatch.export.train import Trainer, TrainSettings

    settings = TrainSettings(data="digits", out=str(tmp_path / "run"), batch_size=4, steps=1000,
                             minutes=0.05, save_every=1000, limit=32)
    trainer = Trainer(settings, read_config_file(TINY_CONFIG), started=time.monotonic() - 60)
    state = trainer.run()
    assert state.step == 1 and trainer.budget_left() < 0 and trainer.preview_steps == 10
    assert json.loads((tmp_path / "run" / "train.json").read_text())["state"]["step"] == 1


def test_resume_continues_from_the_saved_step(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "resumed"
    shutil.copytree(tiny_run, run)
    assert main(["train", "--data", "digits", "--out", str(run), "--steps", "70",
                 "--batch-size", "16", "--resume"]) == 0
    info = json.loads((run / "train.json").read_text())
    assert info["state"]["step"] == 70
    assert info["state"]["losses"][0] == json.loads((tiny_run / "train.json").read_text())["state"]["losses"][0]


def test_eval_prints_and_writes_every_variant(tiny_run, tmp_path, capsys):
    out_json, cache = tmp_path / "eval.json", tmp_path / "cache"
    args = ["eval", "--checkpoint", str(tiny_run), "--variant", "all", "--k", "3",
            "--fit", "digits", "--test", "digits", "--ood", "photos", "--ood", "lfw",
            "--n-fit", "80", "--n-test", "40", "--cache-dir", str(cache), "--json", str(out_json)]
    assert main(args) == 0
    first = json.loads(out_json.read_text())
    assert len(first["results"]) == 6 * 2
    assert {r["variant"].split()[0] for r in first["results"]} == {
        "diffpath6d", "diffpath1d", "6d+ssim", "amplified-eps", "error/inversion", "error/forward"}
    for r in first["results"]:
        assert 0 <= r["auroc"] <= 1 and 0 <= r["fpr95"] <= 1 and r["n_in"] == 40
    assert "AUROC" in capsys.readouterr().out
    cached = sorted(cache.iterdir())
    assert len(cached) == 6 * 4  # one file per (variant, image set): fit, test, two OOD
    assert main(args) == 0  # second run reads the cache and reproduces the numbers
    assert sorted(cache.iterdir()) == cached
    assert json.loads(out_json.read_text())["results"] == first["results"]


def test_eval_and_export_parse_the_same_defaults():
    """One set of defaults (the embedded default model's): `eval` measures what `export`
    ships, and both give the default bundle's schedule."""
    from pathwatch.cli import build_parser
    from pathwatch.edge.models import default_settings
    from pathwatch.export.defaults import DEFAULTS
    from pathwatch.export.schedule import placed_timesteps

    p = build_parser()
    ev = p.parse_args(["eval", "--checkpoint", "c", "--fit", "digits", "--test", "digits",
                       "--ood", "photos"])
    ex = p.parse_args(["export", "--checkpoint", "c", "--out", "b"])
    for key in ("k", "placement", "timesteps", "lam", "ssim_sigma"):
        assert getattr(ev, key) == getattr(ex, key), key
    assert ev.variant == [ex.variant] == [DEFAULTS.variant]
    card = default_settings()
    assert (ex.variant, ex.k, ex.placement, ex.lam, ex.ssim_sigma) == (
        card["variant"], card["k"], card["placement"], card["lam"], card["ssim_sigma"])
    assert placed_timesteps(1000, ev.k, ev.placement) == card["timesteps"] == [0, 111, 444]
    # A repeated --variant replaces the default rather than adding to it.
    picked = p.parse_args(["eval", "--checkpoint", "c", "--fit", "a", "--test", "b", "--ood", "c",
                           "--variant", "diffpath1d", "--variant", "error/forward"])
    assert picked.variant == ["diffpath1d", "error/forward"]


def test_eval_runs_the_embedded_default_bundle(tmp_path, monkeypatch, capsys):
    """`eval --bundle default` installs the shipped default model where `run` would (the
    cache directory) and evaluates it; its schedule cannot be overridden."""
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "cache"))
    common = ["--fit", "digits", "--test", "digits", "--ood", "photos", "--n-fit", "48",
              "--n-test", "24", "--cache-dir", ""]
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--bundle", "default", "--backend", "onnxruntime",
                 "--json", str(out_json), *common]) == 0
    report = json.loads(out_json.read_text())
    assert [r["variant"] for r in report["results"]] == ["6d+ssim l=1 s=1.5"]
    assert report["results"][0]["n_in"] == 24
    assert report["meta"]["schedule"]["timesteps"] == [0, 111, 444]
    assert "default bundle installed at" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "cache" / "bundles").iterdir()] == [
        "default-926af2901618-6d+ssim-t0-111-444-cheap"]
    assert main(["eval", "--bundle", "default", "--k", "5", "--placement", "uniform", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--k, --placement: the variant and schedule come from the bundle" in err


def test_export_without_onnxruntime_says_what_to_install_before_any_work(tmp_path):
    """The export extra alone has no ONNX Runtime (it comes from exactly one runtime extra):
    export names the install line at once, before loading torch or writing anything. The
    module is blocked in a subprocess, as on an installation without it."""
    import subprocess
    import sys
    import textwrap

    from pathwatch.edge.models import default_weights

    out = tmp_path / "bundle"
    code = textwrap.dedent(f"""
        import sys
        class NoOnnxRuntime:
            def find_spec(self, name, path=None, target=None):
                if name == "onnxruntime" or name.startswith("onnxruntime."):
                    raise ImportError("onnxruntime is blocked in this test")
        sys.meta_path.insert(0, NoOnnxRuntime())
        from pathwatch.cli import main
        code = main(["export", "--checkpoint", {str(default_weights())!r}, "--out", {str(out)!r}])
        assert "torch" not in sys.modules, "torch was loaded before the check"
        sys.exit(code)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    err = res.stderr.strip()
    assert res.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "ONNX Runtime, which is not installed" in err
    assert "pip install 'pathwatch[export,cpu]'" in err and "'pathwatch[export,gpu]'" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv,message", [
    (["eval", "--checkpoint", "nowhere", "--fit", "digits", "--test", "digits", "--ood", "lfw"],
     "does not exist"),
    (["train", "--data", "nosuchset", "--out", "{tmp}/r", "--steps", "1"], "nosuchset"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["run", "--duration", "-5"], "--duration: '-5' is not a number of seconds above 0"),
    (["run", "--duration", "nan"], "'nan' is not a number of seconds above 0"),
    (["tail", "--count", "-3"], "--count: -3 is below 1"),
    (["tail", "--since", "-1"], "--since: -1 is below 0"),
    (["calibrate", "--camera", "demo", "--seconds", "inf"], "'inf' is not a number of seconds"),
    (["keys", "generate", "{tmp}/k", "--name", "../x"], "'../x' is not a plain name"),
    (["keys", "generate", "{tmp}/k", "--name", "/abs"], "'/abs' is not a plain name"),
    (["tail", "--connect", "tcp://127.0.0.1:99999", "--replay", "tcp://127.0.0.1:5557"],
     "has no valid port"),
    (["feedback", "../../etc/passwd", "normal", "--config", "{tmp}/none.yaml"], None),
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
])
def test_arguments_that_can_never_work_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own checks end there
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message is None or message in err, err
    assert not (tmp_path / "x.key").exists() and not (tmp_path.parent / "x.key").exists()


def test_feedback_names_what_it_cannot_find(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"state_dir: {tmp_path}/state\ncameras:\n  - name: cam\n    source: demo\n")
    assert main(["feedback", "cam-20261202T101010-abcdef", "normal", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "no frames are kept for alert cam-20261202T101010-abcdef" in err
    assert main(["feedback", "../x", "normal", "--config", str(config)]) == 2
    assert "is not an alert id" in capsys.readouterr().err
