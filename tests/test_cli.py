"""python -m fastcnn.train: smoke test, clean failures, and the full-data accuracy run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastcnn
import fastcnn.data
from fastcnn import evaluate, train


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fastcnn.train", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def test_smoke_on_sample(tmp_path):
    metrics_path = tmp_path / "m.json"
    proc = run("--dataset", "sample", "--epochs", "1", "--limit", "640", "--threads", "1",
               "--quiet", "--out", str(tmp_path / "run"), "--metrics-json", str(metrics_path))
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stdout and "test_accuracy" in proc.stdout
    m = json.loads(metrics_path.read_text())
    assert set(m) >= {"test_accuracy", "macro_f1", "epoch_seconds", "train_samples_per_s",
                      "compile_seconds", "settings"}
    assert 0.3 < m["test_accuracy"] <= 1 and len(m["epoch_seconds"]) == 1
    assert m["settings"]["limit"] == 640 and m["settings"]["threads"] == 1
    assert (tmp_path / "run" / "model.npz").exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == m


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "-3"], "--batch-size must be >= 1"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--momentum", "1.5"], "--momentum"),
    (["--threads", "0"], "--threads"),
    (["--optimizer", "rmsprop"], "invalid choice"),
    (["--epochs", "two"], "invalid int value"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--model", "resnet50"], "invalid choice"),
    (["--model", "lenet5", "--model-config", "x.json"], "give --model or --model-config"),
    (["--model-config", "/nonexistent/m.json"], "No such file"),
])
def test_bad_flags_exit_2_with_one_line(args, message, capsys):
    assert train.main(["--dataset", "sample", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_flag_subprocess_has_no_traceback():
    proc = run("--epochs", "-1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_missing_data_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fastcnn.data, "DEBIAN_DIR", tmp_path / "nothing")
    monkeypatch.setattr(fastcnn.data, "MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("FASTCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTCNN_DATA", raising=False)
    assert train.main(["--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "dataset-fashion-mnist" in err


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize("how", ["--data-dir", "FASTCNN_DATA"])
def test_named_data_folder_that_lacks_the_files_exits_2(tmp_path, monkeypatch, capsys,
                                                        command, how):
    """Even with the real data installed elsewhere: a typo must not train on it."""
    missing = tmp_path / "nonexistent"
    monkeypatch.setenv("FASTCNN_CACHE", str(tmp_path / "cache"))
    argv = ["--epochs", "1", "--quiet"] if command == "train" else [str(tmp_path / "m.npz")]
    if how == "--data-dir":
        argv += ["--data-dir", str(missing)]
    else:
        monkeypatch.setenv("FASTCNN_DATA", str(missing))
    if command == "evaluate":
        fastcnn.Sequential([fastcnn.Flatten(), fastcnn.Dense(10)], input_shape=(1, 28, 28),
                           seed=0).save(tmp_path / "m.npz")
    main = train.main if command == "train" else evaluate.main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: data folder {missing}") and err.count("\n") == 1
    assert "does not exist" in err


def full_data_available():
    try:
        fastcnn.data.load_fashion_mnist("test", download=False)
        return True
    except fastcnn.data.DataError:
        return False


@pytest.mark.slow
def test_one_epoch_on_full_data_reaches_087(tmp_path):
    """The real thing: 60,000 training images, the full 10,000-image test set."""
    if not full_data_available():
        if os.environ.get("CI"):
            pytest.fail("CI must have the real data (apt-get install dataset-fashion-mnist)")
        pytest.skip("real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    out = Path(tmp_path / "m.json")
    assert train.main(["--epochs", "1", "--quiet", "--metrics-json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["test_accuracy"] >= 0.87
    assert m["macro_f1"] >= 0.87


def test_model_zoo_on_the_command_line(tmp_path, capsys):
    assert train.main(["--list-models"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("seed_arch", "lenet5", "keras_mnist", "vgg_small"))
    out = tmp_path / "lenet"
    assert train.main(["--model", "lenet5", "--dataset", "sample", "--epochs", "1", "--limit",
                       "256", "--threads", "1", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Layer (type)" in printed and "Total params: 61,706" in printed
    assert "fastcnn: lenet5 on sample" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["model"] == "lenet5"
    # evaluate loads whatever architecture the file holds.
    assert evaluate.main([str(out / "model.npz"), "--dataset", "sample"]) == 0
    assert "accuracy" in capsys.readouterr().out
    # The same architecture as JSON, as model.npz stores it, trains the same bits.
    loaded = fastcnn.load_model(out / "model.npz")
    (tmp_path / "lenet.json").write_text(json.dumps(loaded.get_config()))
    again = tmp_path / "again"
    assert train.main(["--model-config", str(tmp_path / "lenet.json"), "--dataset", "sample",
                       "--epochs", "1", "--limit", "256", "--threads", "1", "--quiet",
                       "--out", str(again)]) == 0
    assert "fastcnn: lenet.json on sample" in capsys.readouterr().out
    for a, b in zip(loaded.parameters(), fastcnn.load_model(again / "model.npz").parameters(),
                    strict=True):
        assert (a == b).all()


def test_model_config_that_does_not_fit_the_data_exits_2(tmp_path, capsys):
    wrong = fastcnn.Sequential([fastcnn.Flatten(), fastcnn.Dense(10)], input_shape=(3, 8, 8))
    (tmp_path / "m.json").write_text(json.dumps(wrong.get_config()))
    (tmp_path / "bad.json").write_text('{"layers": 3}')
    assert train.main(["--model-config", str(tmp_path / "m.json"), "--dataset", "sample"]) == 2
    assert "the data need (1, 28, 28) to (10,)" in capsys.readouterr().err
    assert train.main(["--model-config", str(tmp_path / "bad.json"), "--dataset", "sample"]) == 2
    assert "not a model configuration" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--val-split", "1"], "--val-split must be in [0, 1)"),
    (["--early-stop", "2"], "--early-stop needs --val-split"),
    (["--early-stop", "0", "--val-split", "0.1"], "--early-stop must be >= 1"),
    (["--weight-decay", "0.1"], "give --optimizer adamw"),
    (["--optimizer", "adamw", "--weight-decay", "-1"], "--weight-decay must be"),
    (["--monitor", "accuracy"], "invalid choice"),
    (["--augment", "28"], "--augment SHIFT must be in [0, 28)"),
    (["--val-split", "0.5", "--limit", "1"], "leaves no training or no validation"),
])
def test_bad_training_feature_flags_exit_2(args, message, capsys):
    assert train.main(["--dataset", "sample", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_early_stop_on_a_validation_split_then_resume(tmp_path, capsys):
    """--val-split holds out images, --early-stop stops and keeps the best epoch; a run
    (with --augment) interrupted at an epoch's end and resumed from its checkpoint ends
    the same."""
    args = ["--dataset", "sample", "--epochs", "40", "--val-split", "0.25", "--early-stop",
            "2", "--monitor", "val_accuracy", "--optimizer", "adamw", "--lr", "0.01",
            "--augment", "1", "--threads", "1", "--quiet"]
    assert train.main([*args, "--out", str(tmp_path / "full")]) == 0
    printed = capsys.readouterr().out
    m = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert "val_accuracy" in printed and "stopped early after epoch" in printed
    best = m["best_epoch"]
    assert m["epochs_run"] == best + 2 < 40
    assert max(m["val_accuracy_per_epoch"]) == m["val_accuracy_per_epoch"][best - 1]
    model = fastcnn.load_model(tmp_path / "full" / "model.npz")
    x, y = fastcnn.load_dataset("sample", "test")
    assert model.evaluate(x, y)["accuracy"] == m["test_accuracy"]
    # Interrupted (test hook: SIGINT) at the end of epoch 2, then resumed.
    ck = tmp_path / "ck"
    proc = subprocess.run([sys.executable, "-m", "fastcnn.train", *args, "--checkpoint-dir",
                           str(ck), "--out", str(tmp_path / "part")], capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "FASTCNN_TEST_STOP_AT": "3:0:INT"})
    assert proc.returncode == 130, proc.stderr
    assert train.main(["--resume", str(ck), "--quiet"]) == 0
    resumed = json.loads((tmp_path / "part" / "metrics.json").read_text())
    for key in ("test_accuracy", "val_accuracy_per_epoch", "train_loss", "best_epoch"):
        assert resumed[key] == m[key], key
    # Another patience is another run: refused.
    assert train.main(["--resume", str(ck), "--early-stop", "3"]) == 2
    assert "early_stop 2 there, 3 here" in capsys.readouterr().err


def test_a_batchnorm_model_resumes_bit_identically_on_the_command_line(tmp_path):
    """vgg_small (BatchNorm, Dropout) with --augment: interrupted at the end of epoch 1,
    resumed, the same model file as uninterrupted (running statistics included)."""
    args = ["--model", "vgg_small", "--dataset", "sample", "--limit", "192", "--epochs", "2",
            "--augment", "--threads", "1", "--quiet"]
    assert train.main([*args, "--out", str(tmp_path / "full")]) == 0
    proc = subprocess.run([sys.executable, "-m", "fastcnn.train", *args, "--checkpoint-dir",
                           str(tmp_path / "ck"), "--out", str(tmp_path / "part")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FASTCNN_TEST_STOP_AT": "2:0:INT"})
    assert proc.returncode == 130, proc.stderr
    assert train.main(["--resume", str(tmp_path / "ck"), "--quiet"]) == 0
    full = fastcnn.load_model(tmp_path / "full" / "model.npz").state_arrays()
    part = fastcnn.load_model(tmp_path / "part" / "model.npz").state_arrays()
    assert any("running_var" in k for k in full)
    for k, a in full.items():
        assert (a == part[k]).all(), k
