"""compare.py end to end in its quick mode, so that the documented command cannot rot.

Quick mode times 3 steps and 2 repeats: the numbers are noise, only the report is checked.
"""

from __future__ import annotations

import json

import compare


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
