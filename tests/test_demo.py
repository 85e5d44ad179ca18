"""``cpd demo``: the quick demo end to end (the CI smoke test), its reruns, and its helpers."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

from cpd.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FRACTIONS = ("t2v_r1", "t2v_r5", "t2v_r10", "zeroshot_top1", "probe_pretrained_top1",
             "probe_random_top1")  # fmt: skip


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``cpd argv`` in this process, one torch thread (2 shared cores: no oversubscription)."""
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main(argv)
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One ``cpd demo --quick`` run: (OUT, exit status, stdout)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    code, stdout = run_cli(["demo", "-o", str(out), "--quick", "--threads", "1"])
    return out, code, stdout


def test_quick_demo_runs_and_reports(demo):
    out, code, stdout = demo
    assert code == 0
    for i, stage in enumerate(("synthetic data", "pretraining", "retrieval and zero-shot",
                               "linear probes", "report"), start=1):  # fmt: skip
        assert f"[{i}/5] {stage}" in stdout
    assert "metric" in stdout and "chance" in stdout
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    for key in FRACTIONS:
        m = metrics[key]
        assert 0.0 <= m["value"] <= 1.0 and 0.0 < m["chance"] <= 1.0, (key, m)
    assert metrics["zeroshot_top1"]["chance"] == pytest.approx(1 / 8)
    n = results["retrieval"]["num_videos"]
    assert metrics["t2v_r1"]["chance"] == pytest.approx(1 / n)
    assert metrics["t2v_median_rank"]["chance"] == pytest.approx((n + 1) / 2)
    assert 1 <= metrics["t2v_median_rank"]["value"] <= n
    diff = metrics["probe_difference_points"]["value"]
    expected = 100 * (
        metrics["probe_pretrained_top1"]["value"] - metrics["probe_random_top1"]["value"]
    )
    assert math.isfinite(diff) and diff == pytest.approx(expected)
    assert results["quick"] and results["settings"]["seed"] == 0
    assert set(results["seconds"]) >= {"synthetic data", "pretraining", "report", "total"}
    assert results["version"] and results["pretraining"]["epochs"] == 4
    report = (out / "report.md").read_text()
    for key in metrics:
        assert metrics[key]["metric"] in report, key
    for rel in results["figures"].values():
        assert f"]({rel})" in report
        assert (out / rel).read_bytes()[:8] == PNG_MAGIC, rel


def test_rerun_reuses_data_and_pretraining(demo):
    out, code, _ = demo
    assert code == 0
    dataset_mtime = (out / "data" / "dataset.json").stat().st_mtime_ns
    checkpoint_mtime = (out / "pretrain" / "last.pt").stat().st_mtime_ns
    log = (out / "pretrain" / "metrics.jsonl").read_text()
    code, stdout = run_cli(["demo", "-o", str(out), "--quick", "--threads", "1"])
    assert code == 0
    assert "synthetic data: " in stdout and stdout.count("(reused)") >= 3
    assert (out / "data" / "dataset.json").stat().st_mtime_ns == dataset_mtime
    assert (out / "pretrain" / "last.pt").stat().st_mtime_ns == checkpoint_mtime
    assert (out / "pretrain" / "metrics.jsonl").read_text() == log


def test_unfinished_pretraining_resumes_from_its_checkpoint(demo):
    """Without results.json (a run stopped before its end), the demo resumes pretraining from
    last.pt instead of starting over: no epoch is trained again, the log only grows."""
    out, code, _ = demo
    assert code == 0
    log = (out / "pretrain" / "metrics.jsonl").read_text()
    (out / "pretrain" / "results.json").unlink()
    code, _ = run_cli(["demo", "-o", str(out), "--quick", "--threads", "1"])
    assert code == 0
    after = (out / "pretrain" / "metrics.jsonl").read_text()
    assert after.startswith(log)
    added = [json.loads(line) for line in after[len(log) :].splitlines()]
    assert any(r.get("event") == "resume" for r in added)
    assert not [r for r in added if r["kind"] in ("step", "epoch")]
    assert (out / "probe_pretrained" / "results.json").is_file()


def test_help_explains_the_demo(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--quick", "--force", "--workers", "--seed", "chance", "OUT/report.md"):
        assert word in text


# --- helpers ------------------------------------------------------------------------------


def test_table_formats_units_and_aligns():
    from cpd.eval.report import Row, format_table, markdown_table

    rows = [Row("R@1", 0.0625, 1 / 32), Row("median rank", 12.5, 16.5, "rank"),
            Row("gain", -3.125, None, "points"), Row("broken", math.nan, 0.125)]  # fmt: skip
    table = format_table(rows, title="t")
    lines = table.splitlines()
    assert lines[0] == "t" and set(lines[2]) == {"-"}
    assert len({len(line) for line in lines[1:]}) == 1  # every row as wide as the header
    assert "6.2%" in lines[3] and lines[3].endswith("3.1%")
    assert "12.5" in lines[4] and lines[4].endswith("16.5")
    assert "-3.1 pt" in lines[5] and lines[5].endswith("-")
    assert "nan" in lines[6]
    md = markdown_table(rows).splitlines()
    assert md[0] == "| metric | value | chance |" and md[3] == "| median rank | 12.5 | 16.5 |"


def test_read_metrics_keeps_the_last_record_of_a_step(tmp_path):
    from cpd.eval.report import read_metrics

    lines = [{"kind": "step", "global_step": 5, "loss": 3.0},
             {"kind": "val", "global_step": 8, "epoch": 2, "t2v_r1": 0.1},
             {"kind": "step", "global_step": 10, "loss": 2.0},
             {"kind": "event", "global_step": 5, "event": "resume"},
             {"kind": "step", "global_step": 10, "loss": 1.5}]  # fmt: skip
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "st')
    got = read_metrics(path)
    assert [r["loss"] for r in got["step"]] == [3.0, 1.5]
    assert got["val"][0]["t2v_r1"] == 0.1 and got["event"][0]["event"] == "resume"
    assert read_metrics(tmp_path / "missing.jsonl") == {}


def test_eta_scales_the_estimates_by_the_observed_speed():
    from cpd.demo.stages import eta_seconds

    estimates = [10.0, 20.0, 30.0]
    assert eta_seconds(estimates, {}, 0) == 60.0
    assert eta_seconds(estimates, {0: 20.0}, 1) == pytest.approx(100.0)  # twice as slow
    assert eta_seconds(estimates, {0: 1000.0}, 1) == pytest.approx(200.0)  # clamped at 4x
    assert eta_seconds(estimates, {0: 10.0, 1: 20.0}, 3) == 0.0


def test_pick_queries_distinct_labels_from_the_seed():
    from cpd.eval.pairs import pick_queries

    labels = [0, 0, 1, 1, 2, 2, 3]
    a = pick_queries(labels, 3, seed=0)
    assert len(a) == 3 and len({labels[i] for i in a}) == 3
    assert a == pick_queries(labels, 3, seed=0)
    assert len(pick_queries([5, 5, 5], 3, seed=1)) == 1


def test_clear_deletes_only_the_demo_outputs(tmp_path):
    from cpd.demo.settings import OUTPUTS
    from cpd.demo.stages import clear

    (tmp_path / "pretrain").mkdir()
    (tmp_path / "report.md").write_text("x")
    (tmp_path / "mine.txt").write_text("keep")
    clear(tmp_path, OUTPUTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
