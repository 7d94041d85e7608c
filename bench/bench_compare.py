"""compare.py end to end in its quick mode, so that the documented command cannot rot.

Quick mode times 3 steps and 2 repeats: the numbers are noise, only the report is checked.
"""

from __future__ import annotations

import json

import compare
import numpy as np
import pytest
import suite
from harness import TORCH_HINT


def test_compare_quick_writes_the_table(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = compare.main(["--quick", "--systems", "fastcnn,naive,ceiling", "--no-startup",
                         "--batches", "1,8", "--markdown", "--out", str(out)])
    assert code == 0
    report = capsys.readouterr().out
    assert report.startswith("| system | batch | threads |")
    assert "Command: `python bench/compare.py --quick" in report
    result = json.loads(out.read_text())
    rows = {(r["system"].split(" (")[0], r["batch"], r["threads"]) for r in result["rows"]}
    threads = sorted({r["threads"] for r in result["rows"] if r["system"] == "fastcnn"})
    assert {("fastcnn", b, t) for b in (1, 8) for t in threads} <= rows
    assert any(r["system"].startswith("naive NumPy loops") for r in result["rows"])
    assert all(r["train_samples_per_s"] > 0 for r in result["rows"])
    assert {i["system"] for i in result["inference"]} == {"fastcnn", "naive"}
    assert not any(r["system"] == "ceiling" for r in result["rows"])
    if len(threads) > 1:  # the ceiling needs a second core
        assert result["ceiling"]["speedup"] > 0
        lo, hi = result["ceiling"]["range"]
        assert 0 < lo <= result["ceiling"]["speedup"] <= hi
        assert "Machine check, in the same rotation" in report


def test_compare_quick_runs_the_suite(tmp_path, capsys):
    """--arch: one table per network, then the suite's table; keras/naive/ceiling are
    SEED-ARCH's alone and say so."""
    out = tmp_path / "results.json"
    code = compare.main(["--quick", "--systems", "fastcnn,naive", "--no-startup", "--arch",
                         "lenet5,strided", "--batches", "4", "--repeats", "1", "--out",
                         str(out)])
    assert code == 0
    report = capsys.readouterr().out
    assert report.startswith("lenet5\n") and "\nstrided\n" in report
    assert "naive: measured on SEED-ARCH only." in report
    assert "synthetic standard-normal images" in report
    result = json.loads(out.read_text())
    assert result["settings"]["networks"] == ["lenet5", "strided"]
    assert {(r["network"], r["system"]) for r in result["rows"]} == {
        ("lenet5", "fastcnn"), ("strided", "fastcnn")}


def test_compare_refuses_an_unknown_network(capsys):
    with pytest.raises(SystemExit):
        compare.main(["--arch", "lenet5,resnet50"])
    assert "unknown networks ['resnet50']" in capsys.readouterr().err


@pytest.mark.parametrize("arch", list(suite.ARCHS))
def test_torch_twin_is_the_same_network(arch):
    """The PyTorch twin computes what the fastcnn network computes, from its weights."""
    torch = pytest.importorskip("torch", reason=TORCH_HINT)
    model = suite.build(arch, seed=3)
    x, _ = suite.synthetic(arch, 5, seed=1)
    with torch.no_grad():
        logits = suite.torch_twin(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), torch.softmax(torch.from_numpy(logits), 1),
                               rtol=1e-4, atol=1e-6)


def test_layers_reports_every_convolution_of_the_suite(tmp_path, capsys):
    """bench/layers.py on a tiny batch: every distinct convolution of the suite, each pass
    in GFLOP/s beside the sgemm roofline (and PyTorch's where installed)."""
    import layers

    try:
        import torch  # noqa: F401
        with_torch = []
    except ImportError:
        with_torch = ["--no-torch"]
    out = tmp_path / "layers.json"
    assert layers.main(["--batch", "2", "--threads", "1", "--repeats", "1", "--markdown",
                        "--out", str(out), *with_torch]) == 0
    report = capsys.readouterr().out
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["sgemm_gflops"] > 0
    expected = {shape.label for _, shape in layers.suite_convolutions()}
    assert {row["layer"] for row in run["layers"]} == expected and len(expected) == 12
    for row in run["layers"]:
        assert row["algorithm"] in ("flat", "phases", "gemm")
        assert all(row["fastcnn"][p] > 0 for p in layers.PASSES)
        assert bool(row["torch"]) != bool(with_torch)
        assert f"| {row['layer']} (" in report
    assert "sgemm roofline" in report
