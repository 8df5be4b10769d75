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
