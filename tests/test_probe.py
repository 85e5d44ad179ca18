"""`mode: linear_features`: the classifier fit, view scoring, a tiny run, reuse, `cpd test` parity."""

from __future__ import annotations

import json

import pytest
import torch

from cpd.models import ModelConfig, build_video_model, load_model, save_model
from cpd.train.finetune import finetune
from cpd.train.finetune_config import load_finetune_config
from cpd.train.probe import fit_linear, score_views
from tests.test_finetune import tiny_overrides


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n_per_class=40, classes=3, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 4
    y = torch.arange(classes).repeat_interleave(n_per_class)
    # features on a large offset and scale: the fit must standardise, then fold it back
    x = 100.0 + 10.0 * (centres[y] + torch.randn(len(y), dim, generator=g))
    return x, y


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_fit_linear_separates_blobs_on_raw_features(solver):
    x, y = _blobs()
    weight, bias = fit_linear(x, y, 3, solver=solver, weight_decay=1e-3, max_iter=200,
                              epochs=30, lr=0.5, batch_size=32, seed=1)  # fmt: skip
    assert weight.shape == (3, 6) and bias.shape == (3,)
    accuracy = float(((x @ weight.T + bias).argmax(1) == y).double().mean())
    assert accuracy > 0.95
    again = fit_linear(x, y, 3, solver=solver, weight_decay=1e-3, max_iter=200, epochs=30,
                       lr=0.5, batch_size=32, seed=1)  # fmt: skip
    assert torch.equal(again[0], weight)  # deterministic


def test_score_views_averages_logits_or_softmax_per_view():
    weight, bias = torch.randn(4, 3), torch.randn(4)
    views = torch.randn(2, 5, 3)  # 2 videos x 5 views x 3 features
    logits = torch.stack([(v @ weight.T + bias).mean(0) for v in views])  # the official test
    torch.testing.assert_close(
        score_views(views.flatten(1), weight, bias, "scores").float(), logits
    )
    expected = torch.stack([(v @ weight.T + bias).softmax(-1).mean(0) for v in views])
    got = score_views(views.flatten(1), weight, bias, "scores", "softmax")
    torch.testing.assert_close(got.float(), expected)
    mean_first = score_views(views.mean(1), weight, bias, "features", "softmax")
    torch.testing.assert_close(mean_first.float(), (views.mean(1) @ weight.T + bias).softmax(-1))
    nan = score_views(torch.full((1, 15), float("nan")), weight, bias, "scores")
    assert torch.isnan(nan).all()  # a failed video stays failed


def test_linear_features_run_reuse_and_cpd_test_parity(tiny_synthetic, tmp_path, capsys):
    torch.manual_seed(2)
    config = ModelConfig(arch="r3d10", base_width=8, num_classes=8)
    start = build_video_model(config)
    start.config = config
    save_model(start, tmp_path / "start")
    run_dir = tmp_path / "probe"
    # decode from the files (no frame cache), as `cpd test` does, so both see the same pixels
    overrides = tiny_overrides(tiny_synthetic, run_dir, f"model.init={tmp_path / 'start'}",
                               "model.arch=r3d10", "data.cache_frames=false",
                               "probe.clips_per_video=2", "probe.max_iter=50")  # fmt: skip
    results = finetune(load_finetune_config("linear_synthetic_cpu", overrides))
    assert (run_dir / "features.pt").exists()
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["mode"] == "linear_features" and saved["final"]["train_samples"] == 24
    exported = load_model(run_dir / "export")
    for key, value in start.state_dict().items():  # encoder untouched, classifier new
        if not key.startswith("fc."):
            assert torch.equal(exported.state_dict()[key], value), key

    # the exported classifier under `cpd test` (same views) gives the probe's numbers
    import argparse

    from cpd.commands.test import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(run_dir / "export"), "--dataset", "ucf-layout",
                              "--split-dir", str(tiny_synthetic / "ucfTrainTestlist"),
                              "--num-clips", "2", "--num-crops", "1", "--num-frames", "4",
                              "--stride", "2", "--crop-size", "32", "--workers", "0",
                              "--quiet", "--out", str(tmp_path / "test")])  # fmt: skip
    assert run(args) == 0
    tested = json.loads((tmp_path / "test" / "results.json").read_text())["splits"]["1"]
    assert tested["top1"] == pytest.approx(results["test"]["top1"])
    nan = float("nan")  # results.json writes NaN (a class without test videos) as null
    assert [nan if v is None else v for v in tested["per_class_accuracy"]] == pytest.approx(
        list(results["test"]["per_class_accuracy"].values()), nan_ok=True
    )

    # a rerun with the same settings reuses the features (and gives the same numbers)
    capsys.readouterr()
    again = finetune(load_finetune_config("linear_synthetic_cpu", overrides))
    assert "reusing the features" in capsys.readouterr().err
    assert again["test"]["top1"] == results["test"]["top1"]
