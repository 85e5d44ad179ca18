"""Evaluation against the official recipe (issue 12, items 4, 9, 11, 12).

* 4: a video's score is the mean of its views' raw logits by default (official test.py:
  ``torch.mean(torch.stack(output_buffer), dim=0)`` of the model outputs, then ``topk``).
* 9: exports carry their preprocessing in config.json, and every evaluation command takes its
  clip defaults from it (flags still win; older exports load and fall back).
* 11: retrieval (and zero-shot) ties count against the query: a collapsed model gets 0, not 100%.
* 12: ``cpd test --official-json`` writes the prediction file evaluation/evaluate_ucf101.py reads.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import cpd
from cpd.models import ModelConfig, build_model, save_model
from tests.test_eval_cli import cli, make_cpd_model, ucf_args

# small views keep each command to about a second
FAST = ["--num-clips", "2", "--num-crops", "1", "--workers", "0", "--quiet"]
GEOMETRY = ["--num-frames", "4", "--stride", "2", "--crop-size", "32"]
PRE = {"num_frames": 4, "stride": 2, "crop_size": 24, "test_size": 32, "fps": 25.0,
       "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _classifier(path, preprocessing=None) -> str:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="r3d10", base_width=8, num_classes=8))
    save_model(model, path, **({"preprocessing": preprocessing} if preprocessing else {}))
    return str(path)


def _parse(command: str, argv: list[str]) -> argparse.Namespace:
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(f"cpd.commands.{command}").add_arguments(parser)
    return parser.parse_args(argv)


# --- 4: multi-view aggregation ------------------------------------------------------------


class _FixedLogits(torch.nn.Module):
    """One row of logits per view, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.logits[: views.shape[0]]


def test_default_video_score_is_the_mean_of_raw_logits_as_official():
    from cpd.eval.multiview import classifier_scores

    # one confident view for class 0, two mild ones for class 1: the logit mean picks 0
    # (official), the softmax mean 1
    logits = torch.tensor([[6.0, 0.0], [0.0, 2.0], [0.0, 2.0]], dtype=torch.float64)
    views = torch.zeros(3, 3, 1, 2, 2)
    official = torch.mean(torch.stack(list(logits)), dim=0)  # test.py calculate_video_results
    got = classifier_scores(_FixedLogits(logits))(views)
    assert torch.equal(got, official) and int(got.argmax()) == 0
    soft = classifier_scores(_FixedLogits(logits), "softmax")(views)
    assert int(soft.argmax()) == 1  # the option is kept, and it does differ
    assert _parse("test", ["x", "--dataset", "csv"]).scores == "logits"


# --- 9: preprocessing in exports ----------------------------------------------------------


def test_export_config_carries_the_trainers_preprocessing(tmp_path):
    from cpd.models.io import Preprocessing
    from cpd.train.finetune_config import load_finetune_config

    cfg = load_finetune_config("finetune_ucf101_r50")
    path = _classifier(tmp_path / "a")
    model = cpd.load_model(path)
    save_model(model, tmp_path / "b", training_config=cfg)
    meta = json.loads((tmp_path / "b" / "config.json").read_text())
    assert meta["preprocessing"] == {"num_frames": 16, "stride": 4, "crop_size": 224,
                                     "test_size": 256, "fps": 30.0, "mean": [0.45] * 3,
                                     "std": [0.225] * 3}  # fmt: skip
    loaded = cpd.load_model(tmp_path / "b")
    assert loaded.preprocessing == Preprocessing.from_dict(meta["preprocessing"])
    # re-exported (cpd export), it keeps it
    save_model(loaded, tmp_path / "c")
    again = json.loads((tmp_path / "c" / "config.json").read_text())
    assert again["preprocessing"] == meta["preprocessing"]


def test_older_export_without_preprocessing_loads_and_falls_back(tmp_path, tiny_synthetic):
    path = _classifier(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    meta.pop("preprocessing", None)  # as exports were written before
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    assert cpd.load_model(path).preprocessing is None
    args = _parse("test", [path, *ucf_args(tiny_synthetic)])
    from cpd.commands._evaluation import resolve_view_arguments

    sources = resolve_view_arguments(args, cpd.load_model(path))
    assert (args.num_frames, args.stride, args.crop_size, args.fps) == (16, 4, 112, 30.0)
    assert set(sources.values()) == {"built-in"}


def test_cpd_test_takes_its_geometry_from_the_export_and_flags_win(tmp_path, tiny_synthetic):
    path = _classifier(tmp_path / "export", PRE)
    out = tmp_path / "eval"
    assert cli("test", [path, *ucf_args(tiny_synthetic), "--out", str(out), *FAST]) == 0
    protocol = json.loads((out / "results.json").read_text())["protocol"]
    assert (protocol["num_frames"], protocol["stride"], protocol["crop_size"]) == (4, 2, 32)
    assert (protocol["fps"], protocol["mean"], protocol["std"]) == (25.0, PRE["mean"], PRE["std"])
    assert set(protocol["view_settings_from"].values()) == {"checkpoint"}
    out2 = tmp_path / "eval2"
    argv = [path, *ucf_args(tiny_synthetic), "--out", str(out2), "--num-frames", "2", *FAST]
    assert cli("test", argv) == 0
    protocol = json.loads((out2 / "results.json").read_text())["protocol"]
    assert protocol["num_frames"] == 2 and protocol["view_settings_from"]["num_frames"] == "flag"
    assert protocol["crop_size"] == 32


def test_cpd_embed_cuts_clips_with_the_exports_fps_mean_and_std(tmp_path, tiny_synthetic):
    from cpd.video import load_clips

    path = _classifier(tmp_path / "export", PRE)
    videos = sorted((tiny_synthetic / "videos").glob("Moving*/*.mp4"))[:3]
    out = tmp_path / "emb"
    assert cli("embed", [path, "--videos", *map(str, videos), "--out", str(out), *FAST]) == 0
    got = np.load(out / "videos.npy")
    model = cpd.load_model(path)
    views = {"num_clips": 2, "num_crops": 1, "num_frames": 4, "stride": 2, "crop_size": 32,
             "target_fps": 25.0, "mean": PRE["mean"], "std": PRE["std"]}  # fmt: skip
    with torch.no_grad():
        expected = [model.forward_features(load_clips(v, **views)).double().mean(0) for v in videos]
    assert np.allclose(got, torch.stack(expected).float().numpy(), atol=1e-6)


def test_zeroshot_and_retrieval_take_their_defaults_from_the_export(
    tmp_path, tiny_synthetic, tiny_text_encoder
):
    path = make_cpd_model(tmp_path / "cpd", tiny_text_encoder)
    meta = json.loads((tmp_path / "cpd" / "config.json").read_text())
    meta["preprocessing"] = PRE
    (tmp_path / "cpd" / "config.json").write_text(json.dumps(meta))
    out = tmp_path / "zs"
    argv = [path, *ucf_args(tiny_synthetic), "--out", str(out), "--workers", "0", "--quiet"]
    assert cli("zeroshot", argv) == 0
    protocol = json.loads((out / "results.json").read_text())["protocol"]
    assert (protocol["num_frames"], protocol["stride"], protocol["crop_size"]) == (4, 2, 32)
    out = tmp_path / "ret"
    argv = [path, "--manifest", str(tiny_synthetic / "captions.jsonl"), "--out", str(out),
            "--workers", "0", "--quiet"]  # fmt: skip
    assert cli("retrieval", argv) == 0
    protocol = json.loads((out / "results.json").read_text())["protocol"]
    assert (protocol["num_frames"], protocol["crop_size"], protocol["fps"]) == (4, 32, 25.0)


def test_training_checkpoints_carry_their_run_config(tmp_path):
    from cpd.train.config import load_pretrain_config
    from cpd.train.finetune_config import load_finetune_config

    config = ModelConfig(arch="r3d10", base_width=8, num_classes=5)
    model = build_model(config)
    ft = load_finetune_config("finetune_synthetic_cpu", ["test.crop_size=80"])
    torch.save({"model": model.state_dict(), "config": {"model": config.to_dict()},
                "finetune": json.loads(json.dumps(cpd.config.to_dict(ft)))},
               tmp_path / "ft.pt")  # fmt: skip
    pre = cpd.load_model(tmp_path / "ft.pt").preprocessing
    assert (pre.num_frames, pre.stride, pre.crop_size, pre.test_size) == (8, 4, 64, 80)
    assert cli("export", [str(tmp_path / "ft.pt"), str(tmp_path / "export")]) == 0
    assert cpd.load_model(tmp_path / "export").preprocessing == pre  # cpd export keeps it
    pt = load_pretrain_config("pretrain_synthetic_cpu")
    cfg = json.loads(json.dumps(cpd.config.to_dict(pt)))
    cfg["model"] = config.to_dict()
    torch.save({"model": model.state_dict(), "config": cfg}, tmp_path / "pt.pt")
    pre = cpd.load_model(tmp_path / "pt.pt").preprocessing
    assert (pre.num_frames, pre.crop_size, pre.test_size) == (
        pt.data.num_frames,
        pt.data.crop_size,
        pt.data.crop_size,
    )


def test_pretrain_and_finetune_exports_record_their_clips(
    tiny_pretrain_overrides, tiny_synthetic, tmp_path
):
    from cpd.train.config import load_pretrain_config
    from cpd.train.finetune import finetune
    from cpd.train.finetune_config import load_finetune_config
    from cpd.train.pretrain import pretrain
    from tests.test_finetune import tiny_overrides

    run = tmp_path / "pre"
    pretrain(load_pretrain_config("pretrain_synthetic_cpu", [*tiny_pretrain_overrides,
                                  "schedule.epochs=1", f"run.out={run}"]))  # fmt: skip
    meta = json.loads((run / "export" / "config.json").read_text())["preprocessing"]
    assert (meta["num_frames"], meta["stride"], meta["crop_size"], meta["test_size"]) == (
        4,
        2,
        32,
        32,
    )
    run = tmp_path / "ft"
    finetune(load_finetune_config("finetune_synthetic_cpu", tiny_overrides(
        tiny_synthetic, run, "schedule.epochs=1", "test.crop_size=40", "data.cache_frames=false",
        "run.threads=1")))  # fmt: skip
    meta = json.loads((run / "export" / "config.json").read_text())["preprocessing"]
    assert (meta["num_frames"], meta["crop_size"], meta["test_size"]) == (4, 32, 40)


# --- 11: ties count against the query ------------------------------------------------------


def test_a_collapsed_model_gets_no_retrieval_credit():
    from cpd.eval.retrieval import retrieval_metrics

    same = torch.nn.functional.normalize(torch.ones(50, 8), dim=1)  # one vector for everything
    m = retrieval_metrics(same, same.clone())
    assert m["t2v_r1"] == 0.0 and m["v2t_r1"] == 0.0 and m["t2v_r10"] == 0.0
    assert m["t2v_median_rank"] == 50.0 and m["v2t_mean_rank"] == 50.0
    assert m["t2v_r1"] <= m["t2v_chance_r1"]


class _Collapsed(torch.nn.Module):
    """A CPD model whose towers map everything to one vector."""

    embed_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.w.expand(video.shape[0], 4), dim=1)

    def encode_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.w.expand(ids.shape[0], 4), dim=1)


class _PairsData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> dict:
        return {"video": torch.full((3, 1, 2, 2), float(i)), "input_ids": torch.tensor([i, 1]),
                "attention_mask": torch.ones(2, dtype=torch.long), "index": i}  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        pass


def test_pretraining_validation_gives_a_collapsed_model_zero_recall():
    from cpd.train.pretrain import evaluate_retrieval

    m = evaluate_retrieval(_Collapsed(), _PairsData(), batch_size=4, device=torch.device("cpu"))
    assert m["t2v_r1"] == 0.0 and m["v2t_r1"] == 0.0 and m["t2v_median_rank"] == 12.0


def test_collapsed_zeroshot_and_retrieved_examples_get_no_credit():
    from cpd.eval.pairs import PairsEvaluation, top_videos
    from cpd.eval.zeroshot import zeroshot_metrics

    emb = torch.nn.functional.normalize(torch.ones(6, 4), dim=1)
    labels = torch.zeros(6, dtype=torch.long)  # all of class 0: the lowest index
    m = zeroshot_metrics(emb, labels, torch.nn.functional.normalize(torch.ones(5, 4), dim=1))
    assert m["top1"] == 0.0 and m["top5"] == 1.0  # 5 candidates: every class is in the top 5
    ev = PairsEvaluation({}, {}, ("a",), [], [], emb, emb.clone(), torch.arange(6), labels, {})
    assert top_videos(ev, 0, 3)[1] == 6


# --- 12: the official prediction file ------------------------------------------------------


def _official_hit_at_1(ground_truth: dict, prediction: dict) -> float:
    """evaluation/eval_ucf101.py's UCFclassification(top_k=1).evaluate(), minimally: labels
    indexed in ground-truth order, predictions read from data['results'][video] as
    {'label', 'score'} lists, hit@1 averaged over the ground truth's (unique, sorted) videos;
    a video without prediction counts as a miss."""
    activity_index: dict[str, int] = {}
    gt: dict[str, int] = {}
    for vid, v in ground_truth["database"].items():
        if v["subset"] != "validation":
            continue
        label = v["annotations"]["label"]
        activity_index.setdefault(label, len(activity_index))
        gt[vid] = activity_index[label]
    preds: dict[str, list[tuple[int, float]]] = {}
    for vid, results in prediction["results"].items():
        for r in results:
            preds.setdefault(vid, []).append((activity_index[r["label"]], r["score"]))
    hits = []
    for vid in sorted(gt):
        if vid not in preds:
            hits.append(0.0)
            continue
        scores = np.array([s for _, s in preds[vid]])
        top = [preds[vid][i][0] for i in scores.argsort()[::-1][:1]]
        hits.append(1.0 if gt[vid] in top else 0.0)
    return float(np.mean(hits))


def test_official_json_is_what_the_official_scorer_reads(tmp_path, tiny_synthetic):
    from cpd.data import read_ucf101

    path = _classifier(tmp_path / "export")
    out = tmp_path / "eval"
    official = tmp_path / "pred" / "val.json"
    argv = [path, *ucf_args(tiny_synthetic), "--split", "all", "--out", str(out),
            "--official-json", str(official), *GEOMETRY, *FAST]  # fmt: skip
    assert cli("test", argv) == 0
    data = json.loads(official.read_text())
    split = read_ucf101(tiny_synthetic / "ucfTrainTestlist", tiny_synthetic / "videos", 1, None)
    assert list(data) == ["results"] and set(data["results"]) == {r.video_id for r in split.records}
    scores = np.load(out / "scores_split1.npy")
    for record, row in zip(split.records, scores, strict=True):
        (entry,) = data["results"][record.video_id]  # top-1, as test.py's topk(k=1)
        assert set(entry) == {"label", "score"} and isinstance(entry["score"], float)
        assert entry["label"] == split.classes[int(row.argmax())]
        assert entry["score"] == pytest.approx(float(row.max()), abs=1e-5)  # mean logit
    ground_truth = {"labels": list(split.classes), "database": {
        r.video_id: {"subset": "validation", "annotations": {"label": r.label_name}}
        for r in split.records}}  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert _official_hit_at_1(ground_truth, data) == pytest.approx(results["splits"]["1"]["top1"])
    assert results["splits"]["1"]["official_json"] == str(official)


def test_official_json_with_several_splits_needs_a_split_field(tmp_path, tiny_synthetic, capsys):
    path = _classifier(tmp_path / "export")
    argv = [path, *ucf_args(tiny_synthetic), "--fold", "1", "1", *GEOMETRY, "--official-json",
            str(tmp_path / "val.json"), *FAST]  # fmt: skip
    assert cli("test", argv) == 2 and "{split}" in capsys.readouterr().err
    argv[-len(FAST) - 1] = str(tmp_path / "s{split}" / "val.json")
    assert cli("test", argv) == 0 and (tmp_path / "s1" / "val.json").is_file()
