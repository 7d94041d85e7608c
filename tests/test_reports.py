"""Reports on a trained model: training plots, fastcnn.evaluate and fastcnn.predict.

One model is trained once (one epoch on the shipped sample) and shared by every test.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastcnn import evaluate, metrics, plots, predict, train
from fastcnn.data import CLASS_NAMES, load_sample
from fastcnn.model import Sequential

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
HAVE_PIL = importlib.util.find_spec("PIL") is not None
needs_plot = pytest.mark.skipif(not (HAVE_MPL and HAVE_PIL),
                                reason="matplotlib/pillow (the 'plot' extra) not installed")
needs_pil = pytest.mark.skipif(not HAVE_PIL, reason="pillow (the 'plot' extra) not installed")
PLOT_FILES = ("training_curves.png", "confusion_matrix.png", "predictions.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train once: model dir, plot dir, the loaded model, test data and train's stdout."""
    root = tmp_path_factory.mktemp("run")
    out, plot_dir = root / "out", root / "plots"
    argv = ["--dataset", "sample", "--epochs", "1", "--out", str(out), "--quiet"]
    if HAVE_MPL:
        argv += ["--plots", str(plot_dir)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert train.main(argv) == 0
    x, y = load_sample("test")
    model = Sequential.load(out / "model.npz")
    return {"root": root, "model_path": out / "model.npz", "plots": plot_dir, "model": model,
            "x": x, "y": y, "probs": model.predict(x), "stdout": stdout.getvalue()}


def check_png(path: Path) -> np.ndarray:
    """Assert `path` is a real, reasonably sized, non-blank PNG; return its RGB pixels."""
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= 400 and im.height >= 300, im.size
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.std() > 0, f"{path} is blank"
    return rgb


def red_pixels(rgb: np.ndarray) -> int:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return int(np.sum((r > 150) & (g < 90) & (b < 90)))


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=120, env=env)


# -- training plots -------------------------------------------------------------------------
@needs_plot
def test_train_writes_plots(run: dict) -> None:
    for name in PLOT_FILES:
        path = run["plots"] / name
        assert f"wrote {path}" in run["stdout"]
        check_png(path)
    # Mistakes are drawn in red, and a one-epoch sample model makes plenty.
    assert red_pixels(check_png(run["plots"] / "predictions.png")) > 500
    assert not list(run["plots"].glob(".*.tmp")), "atomic writer left a temporary file"


def test_plots_need_matplotlib(run: dict, monkeypatch: pytest.MonkeyPatch,
                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"fastcnn\[plot\]"):
        plots.write_plots(run["model"], None, run["x"][:10], run["y"][:10], tmp_path)
    # train refuses before training, not after.
    code = train.main(["--dataset", "sample", "--epochs", "1", "--limit", "1", "--plots",
                       str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "fastcnn[plot]" in err and "epoch" not in err


@needs_plot
def test_plot_functions_validate_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="square"):
        plots.plot_confusion_matrix(np.zeros((3, 4)), tmp_path / "cm.png")
    with pytest.raises(ValueError, match="class names"):
        plots.plot_confusion_matrix(np.eye(3), tmp_path / "cm.png")
    cm = plots.plot_confusion_matrix(np.eye(3, dtype=int) * 5, tmp_path / "cm.png", "abc")
    check_png(cm)
    images = np.zeros((4, 28, 28), np.uint8)
    images[:, 10:18, 10:18] = 200
    grid = plots.plot_predictions(images, np.array([0, 1, 2, 0]), np.array([0, 1, 1, 0]),
                                  tmp_path / "grid.png", ["a", "b", "c"], n=4)
    assert red_pixels(check_png(grid)) > 0


# -- evaluate -------------------------------------------------------------------------------
def test_evaluate_matches_metrics(run: dict, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    report_path, plot_dir = tmp_path / "report.json", tmp_path / "plots"
    argv = [str(run["model_path"]), "--dataset", "sample", "--json", str(report_path)]
    if HAVE_MPL:
        argv += ["--plots", str(plot_dir)]
    assert evaluate.main(argv) == 0
    text = capsys.readouterr().out

    y, pred = run["y"], run["probs"].argmax(axis=1)
    acc, f1 = metrics.accuracy(y, pred), metrics.macro_f1(y, pred, 10)
    precision, recall, f1s, support = metrics.precision_recall_f1(y, pred, 10)
    cm = metrics.confusion_matrix(y, pred, 10)

    report = json.loads(report_path.read_text())
    assert report["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert report["macro_f1"] == pytest.approx(f1, abs=1e-12)
    assert report["confusion_matrix"] == cm.tolist()
    assert [c["class"] for c in report["per_class"]] == list(CLASS_NAMES)
    for c, row in enumerate(report["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[c], recall[c], f1s[c], support[c]), abs=1e-12)

    assert f"accuracy {acc:.4f}  macro F1 {f1:.4f}" in text
    lines = text.splitlines()
    for c, name in enumerate(CLASS_NAMES):
        row = next(line for line in lines if line.startswith(name + " "))
        values = [float(v) for v in row[len(name):].split()]
        assert values == pytest.approx([precision[c], recall[c], f1s[c], support[c]], abs=6e-5)
    start = lines.index("confusion matrix (rows: true class, columns: predicted class)")
    header, body = lines[start + 1], lines[start + 2:start + 12]
    assert header.split() == list(evaluate.SHORT_NAMES)
    assert [[int(v) for v in line.split()[1:]] for line in body] == cm.tolist()
    assert len({len(line) for line in [header, *body]}) == 1, "table columns not aligned"

    if HAVE_MPL and HAVE_PIL:
        for name in ("confusion_matrix.png", "predictions.png"):
            check_png(plot_dir / name)
        assert not (plot_dir / "training_curves.png").exists()


def test_evaluate_errors(run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    bad_data = tmp_path / "data"
    bad_data.mkdir()
    (bad_data / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    cases = [
        [str(tmp_path / "missing.npz"), "--dataset", "sample"],
        [str(corrupt), "--dataset", "sample"],
        [str(run["model_path"]), "--dataset", "mnist"],
        [str(run["model_path"]), "--threads", "0", "--dataset", "sample"],
        [str(run["model_path"]), "--data-dir", str(bad_data)],
    ]
    for argv in cases:
        assert evaluate.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    # The real entry point: no traceback, exit code 2.
    proc = run_module("fastcnn.evaluate", str(tmp_path / "missing.npz"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'missing.npz'}: no such file"


# -- predict --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(run: dict) -> dict:
    """Input files of every supported kind, built from the first test images."""
    d = run["root"] / "inputs"
    d.mkdir()
    x = run["x"]
    files = {"stack": d / "stack.npy", "single": d / "single.npy", "idx": d / "images-idx3.gz",
             "bogus": d / "bogus.png"}
    np.save(files["stack"], x[:3])
    np.save(files["single"], x[3].astype(np.float32) / 255)
    header = (0x803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (2, 28, 28))
    files["idx"].write_bytes(gzip.compress(header + x[4:6].tobytes()))
    files["bogus"].write_text("this is not an image\n")
    if HAVE_PIL:
        from PIL import Image

        files["png"] = d / "photo.png"
        Image.fromarray(x[6]).resize((84, 84), Image.Resampling.LANCZOS).save(files["png"])
        # A dark object on white, in colour, like a product photo.
        files["inverted"] = d / "inverted.png"
        Image.fromarray(255 - x[7]).convert("RGB").save(files["inverted"])
    return files


def top3(p: np.ndarray) -> list[tuple[str, float]]:
    return [(CLASS_NAMES[c], float(p[c])) for c in np.argsort(-p, kind="stable")[:3]]


def test_predict_cli(run: dict, inputs: dict) -> None:
    order = ["stack", "single", "png", "bogus", "inverted", "idx"]
    files = [str(inputs[k]) for k in order if k in inputs]
    proc = run_module("fastcnn.predict", str(run["model_path"]), *files, "--json")
    assert proc.returncode == 1, proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {inputs['bogus']}: ")
    results = json.loads(proc.stdout)
    got = {(r["file"], r["index"]): r for r in results}

    probs = run["probs"]
    expected = {(str(inputs["stack"]), i): i for i in range(3)}
    expected[(str(inputs["single"]), None)] = 3
    expected.update({(str(inputs["idx"]), i): 4 + i for i in range(2)})
    if HAVE_PIL:
        # 28x28 and lossless: inverting it back gives the original pixels.
        expected[(str(inputs["inverted"]), None)] = 7
    for key, i in expected.items():
        r = got[key]
        assert [t["class"] for t in r["top"]] == [c for c, _ in top3(probs[i])], key
        assert [t["probability"] for t in r["top"]] == pytest.approx(
            [p for _, p in top3(probs[i])], abs=1e-5), key
        assert r["inverted"] == (key[0] == str(inputs.get("inverted")))
    if HAVE_PIL:
        photo = got[(str(inputs["png"]), None)]
        assert not photo["inverted"] and len(photo["top"]) == 3
        assert sum(t["probability"] for t in photo["top"]) <= 1 + 1e-6
    assert len(results) == len(expected) + HAVE_PIL


@needs_pil
def test_predict_text_reports_inversion(run: dict, inputs: dict,
                                        capsys: pytest.CaptureFixture) -> None:
    files = [str(inputs["inverted"]), str(inputs["png"]), str(inputs["stack"])]
    assert predict.main([str(run["model_path"]), *files, "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith(f"{inputs['inverted']}: ")
    assert lines[0].endswith("(inverted: dark object on light background)")
    assert lines[2].startswith(f"{inputs['stack']}[0]: ")
    assert all("inverted" not in line for line in lines[1:])
    assert all(len(line.split(": ", 1)[1].split("  ")) == 2 for line in lines[1:])


def test_predict_bad_inputs(run: dict, tmp_path: Path, inputs: dict,
                            capsys: pytest.CaptureFixture) -> None:
    bad = {
        "empty.npy": b"",
        "range.npy": None,
        "labels-idx1": (0x801).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x01\x02\x03",
        "short-idx3": (0x803).to_bytes(4, "big") + b"\x00\x00\x00\x05" * 3 + b"\x00",
    }
    paths = []
    for name, data in bad.items():
        path = tmp_path / name
        if data is None:
            np.save(path, np.full((28, 28), 2.0))
        else:
            path.write_bytes(data)
        paths.append(str(path))
    paths.append(str(tmp_path / "missing.png"))
    code = predict.main([str(run["model_path"]), *paths, str(inputs["stack"])])
    out, err = capsys.readouterr()
    assert code == 1
    assert len(out.splitlines()) == 3  # the good stack still printed
    err_lines = err.splitlines()
    assert len(err_lines) == len(paths)
    for path, line in zip(paths, err_lines, strict=True):
        assert line.startswith(f"error: {path}: "), line


def test_predict_flag_and_model_errors(run: dict, tmp_path: Path, inputs: dict,
                                       capsys: pytest.CaptureFixture) -> None:
    good = str(inputs["stack"])
    for argv in ([str(tmp_path / "none.npz"), good], [str(inputs["bogus"]), good],
                 [str(run["model_path"]), good, "--top", "0"], [str(run["model_path"])]):
        assert predict.main(argv) == 2, argv
        assert capsys.readouterr().err.count("\n") == 1


def test_predict_without_pillow(run: dict, inputs: dict, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    code = predict.main([str(run["model_path"]), str(inputs["bogus"]), str(inputs["single"])])
    out, err = capsys.readouterr()
    assert code == 1 and "fastcnn[plot]" in err and str(inputs["bogus"]) in err
    assert out.startswith(f"{inputs['single']}: ")


def test_polarity_on_fashion_mnist() -> None:
    x = load_sample("test")[0] / 255.0
    assert not any(not predict.detect_dark_background(im) for im in x)
    missed = sum(predict.detect_dark_background(1.0 - im) for im in x)
    assert missed <= len(x) // 50
