"""The evaluation commands end to end on the tiny synthetic set with tiny random models."""

from __future__ import annotations

import argparse
import csv
import importlib
import json

import numpy as np
import pytest
import torch

import cpd
from cpd.models import ModelConfig, build_model, save_model

# 2 clips x 2 crops of 4 frames at 32 px keep every command to about a second
VIEWS = ["--num-clips", "2", "--num-crops", "2", "--num-frames", "4", "--stride", "2",
         "--crop-size", "32", "--workers", "0", "--quiet"]  # fmt: skip
ONE_VIEW = ["--num-frames", "4", "--stride", "2", "--crop-size", "32", "--workers", "0", "--quiet"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on 2 shared cores: one thread avoids OpenMP oversubscription (100x faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cli(command: str, argv: list[str]) -> int:
    """Run ``cpd <command> argv`` through the command module (as cli.py dispatches it)."""
    module = importlib.import_module(f"cpd.commands.{command}")
    parser = argparse.ArgumentParser(prog=f"cpd {command}")
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def make_classifier(path) -> str:
    torch.manual_seed(0)
    save_model(build_model(ModelConfig(arch="r3d10", base_width=8, num_classes=8)), path)
    return str(path)


def make_cpd_model(path, text_encoder: str = "all-MiniLM-L6-v2") -> str:
    torch.manual_seed(0)
    config = ModelConfig(arch="r3d10", base_width=8, text_encoder=text_encoder, embed_dim=16,
                         text_head_dim=32)  # fmt: skip
    save_model(build_model(config), path)
    return str(path)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> str:
    return make_classifier(tmp_path_factory.mktemp("cls") / "export")


@pytest.fixture(scope="module")
def cpd_model(tmp_path_factory, tiny_text_encoder) -> str:
    """A CPD model with the 2-layer test BERT: loads in a fraction of MiniLM's time."""
    return make_cpd_model(tmp_path_factory.mktemp("cpd") / "export", tiny_text_encoder)


def ucf_args(tiny_synthetic) -> list[str]:
    return ["--dataset", "ucf-layout", "--split-dir", str(tiny_synthetic / "ucfTrainTestlist")]


def write_csv_with_bad_video(tiny_synthetic, tmp_path):
    """The synthetic test list as a CSV, plus one undecodable video: (csv, classes file)."""
    from cpd.data import read_ucf101

    split = read_ucf101(tiny_synthetic / "ucfTrainTestlist", tiny_synthetic / "videos", 1, "test")
    rows = []
    for r in split.records:  # links under tmp_path: CSV paths are relative to the video root
        link = tmp_path / r.label_name / f"{r.video_id}.mp4"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(r.path)
        rows.append((f"{r.label_name}/{link.name}", r.label_name))
    (tmp_path / "Growing").mkdir(exist_ok=True)
    (tmp_path / "Growing" / "broken.mp4").write_bytes(b"not a video" * 10)
    rows.append(("Growing/broken.mp4", "Growing"))
    (tmp_path / "list.csv").write_text("video,label\n" + "".join(f"{v},{c}\n" for v, c in rows))
    (tmp_path / "classes.txt").write_text("\n".join(split.classes) + "\n")
    return tmp_path / "list.csv", tmp_path / "classes.txt", split


def test_cpd_test_writes_results_predictions_and_figure(
    classifier, tiny_synthetic, tmp_path, capsys
):
    out = tmp_path / "eval"
    assert cli("test", [classifier, *ucf_args(tiny_synthetic), "--out", str(out), *VIEWS]) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("command", "checkpoint", "version", "protocol", "splits", "world_size"):
        assert key in results
    assert results["version"] == cpd.__version__ and results["protocol"]["num_clips"] == 2
    s = results["splits"]["1"]
    rows = list(csv.DictReader((out / "predictions_split1.csv").open()))
    assert len(rows) == s["num_videos"] == s["num_evaluated"] == 4 and s["num_failed"] == 0
    assert {r["status"] for r in rows} == {"ok"} and all(len(r["top5"].split()) == 5 for r in rows)
    assert s["top1"] == np.mean([r["correct"] == "1" for r in rows])
    scores = np.load(out / "scores_split1.npy")
    assert scores.shape == (4, 8) and results["protocol"]["scores"] == "logits"  # mean logits
    assert len(s["per_class_accuracy"]) == 8 and np.array(s["confusion_matrix"]).sum() == 4
    assert (out / "confusion_split1.png").read_bytes()[:4] == b"\x89PNG"
    assert "top-1 %" in capsys.readouterr().out


def test_cpd_test_counts_failed_videos_and_averages_splits(
    classifier, tiny_synthetic, tmp_path, capsys
):
    listing, classes, split = write_csv_with_bad_video(tiny_synthetic, tmp_path)
    out = tmp_path / "eval"
    argv = [classifier, "--dataset", "csv", "--csv", str(listing), "--classes", str(classes),
            "--split", "all", "--video-root", str(tmp_path), "--fold", "1", "2", "--out",
            str(out), "--scores", "softmax", *VIEWS]  # fmt: skip
    assert cli("test", argv) == 0
    results = json.loads((out / "results.json").read_text())
    s = results["splits"]["1"]
    assert s["num_videos"] == 5 and s["num_failed"] == 1 and s["num_evaluated"] == 4
    assert s["failed"][0]["video_id"] == "Growing/broken"
    rows = list(csv.DictReader((out / "predictions_split1.csv").open()))
    assert len(rows) == 5 and rows[-1]["status"].startswith("failed") and rows[-1]["top5"] == ""
    scores = np.load(out / "scores_split1.npy")
    assert np.isnan(scores[-1]).all() and np.allclose(scores[:-1].sum(1), 1, atol=1e-5)  # probs
    mean = results["mean_over_splits"]  # the same list twice: mean = the split, std = 0
    assert mean["top1"] == s["top1"] and mean["top1_std"] == 0.0
    assert "mean" in capsys.readouterr().out


def test_cpd_test_rejects_a_model_without_classifier(cpd_model, tiny_synthetic, capsys):
    assert cli("test", [cpd_model, *ucf_args(tiny_synthetic), *VIEWS]) == 2
    err = capsys.readouterr().err
    assert "cpd finetune" in err and "cpd zeroshot" in err


def test_cpd_zeroshot_protocols(cpd_model, tiny_synthetic, tmp_path):
    model = cpd_model
    out = tmp_path / "zs"
    argv = [model, *ucf_args(tiny_synthetic), "--video-root", str(tiny_synthetic / "videos"),
            "--split", "all", "--random-splits", "3",
            "--seed", "5", "--out", str(out), *ONE_VIEW]  # fmt: skip
    assert cli("zeroshot", argv) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["all_classes"]["num_videos"] == 16 and r["all_classes"]["chance_top1"] == 1 / 8
    assert r["protocol"]["class_texts"][0] == "moving left"
    assert [s["num_classes"] for s in r["random_splits"]] == [4, 4, 4]
    assert r["seeds"]["random_splits"] == [[5, 0], [5, 1], [5, 2]]
    assert set(r["random_splits_mean"]) >= {"top1", "top1_std", "chance_top1"}


def test_cpd_retrieval_equals_retrieval_metrics(tiny_synthetic, tmp_path):
    from cpd.eval.retrieval import retrieval_metrics
    from cpd.video import load_clips

    cpd_model = make_cpd_model(tmp_path / "minilm")  # the packaged MiniLM text tower

    rows = [json.loads(x) for x in (tiny_synthetic / "captions.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "train"][:6]
    rows += [
        dict(rows[0], caption="another caption", id="extra1"),
        dict(rows[2], caption="a third one", id="extra2"),
    ]
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ret"
    argv = [cpd_model, "--manifest", str(manifest), "--video-root", str(tiny_synthetic), "--split",
            "train", "--chunk-size", "3", "--out", str(out), *VIEWS]  # fmt: skip
    assert cli("retrieval", argv) == 0
    got = json.loads((out / "results.json").read_text())["metrics"]

    model = cpd.load_model(cpd_model)
    paths = list(dict.fromkeys(r["video"] for r in rows))
    with torch.no_grad():
        video = []
        for p in paths:
            views = load_clips(tiny_synthetic / p, num_clips=2, num_crops=2, num_frames=4,
                               stride=2, crop_size=32)  # fmt: skip
            emb = torch.nn.functional.normalize(model.encode_video(views).double(), dim=1)
            video.append(torch.nn.functional.normalize(emb.mean(0), dim=0))
        text = torch.nn.functional.normalize(
            model.encode_text([r["caption"] for r in rows]).double(), dim=1
        )
    t2v = torch.tensor([paths.index(r["video"]) for r in rows])
    expected = retrieval_metrics(torch.stack(video), text, text_to_video=t2v)
    assert got["num_videos"] == 6 and got["num_texts"] == 8
    assert got == pytest.approx(expected, abs=1e-12)


def test_cpd_embed_videos_and_captions(cpd_model, classifier, tiny_synthetic, tmp_path):
    pattern = str(tiny_synthetic / "videos" / "Moving*" / "*.mp4")
    out = tmp_path / "emb"
    assert cli("embed", [cpd_model, "--videos", pattern, "--out", str(out), *VIEWS]) == 0
    emb = np.load(out / "videos.npy")
    ids = [json.loads(x) for x in (out / "videos_ids.jsonl").read_text().splitlines()]
    assert emb.shape == (len(ids), 16) and len(ids) == 8 and ids == sorted(ids)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)

    from safetensors import safe_open
    from safetensors.torch import load_file

    from cpd.eval.embed import read_embeddings

    out2 = tmp_path / "emb2"
    assert cli("embed", [classifier, "--videos", pattern, "--format", "safetensors", "--out",
                         str(out2), *VIEWS]) == 0  # fmt: skip
    assert load_file(str(out2 / "videos.safetensors"))["embeddings"].shape == (8, 64)
    with safe_open(str(out2 / "videos.safetensors"), "pt") as f:
        meta = f.metadata()
    assert (meta["ids_file"], meta["count"], meta["dim"]) == ("videos_ids.jsonl", "8", "64")
    assert "ids" not in meta and read_embeddings(out2 / "videos.safetensors")[1] == ids

    captions = tmp_path / "caps.txt"
    captions.write_text("a red square moving left\n\na blue star growing\n")
    out3 = tmp_path / "emb3"
    assert (
        cli("embed", [cpd_model, "--caption-file", str(captions), "--out", str(out3), "--quiet"])
        == 0
    )
    assert read_embeddings(out3 / "texts.npy")[1] == ["1", "3"]
    model = cpd.load_model(cpd_model)
    with torch.no_grad():
        direct = model.encode_text(["a red square moving left", "a blue star growing"])
    assert np.allclose(np.load(out3 / "texts.npy"), direct.numpy(), atol=1e-6)


def test_cpd_export_round_trip_from_a_training_checkpoint(tmp_path):
    torch.manual_seed(1)
    config = ModelConfig(arch="r3d10", base_width=8, num_classes=5)
    model = build_model(config)
    torch.save({"model": model.state_dict(), "config": {"model": config.to_dict()}, "epoch": 3},
               tmp_path / "last.pt")  # fmt: skip
    assert cli("export", [str(tmp_path / "last.pt"), "-o", str(tmp_path / "export")]) == 0
    loaded = cpd.load_model(tmp_path / "export")
    assert loaded.num_classes == 5
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    results = json.loads((tmp_path / "export" / "results.json").read_text())
    assert (results["command"], results["num_classes"], results["checked"]) == ("export", 5, True)
    assert cli("export", [str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x")]) == 2
