"""What ``cpd demo`` reports: the table of measured figures beside their chance levels,
``OUT/results.json``, ``OUT/report.md`` and the figures under ``OUT/figures/``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from cpd.demo.settings import DATA_SETTINGS, PRETRAIN_PRESET, PROBE_PRESET
from cpd.eval.report import Row, format_table, markdown_table, read_metrics

__all__ = ["FIGURES", "demo_rows", "example_figure", "report_markdown", "write_outputs"]

FIGURES = {
    "loss": "figures/pretrain_loss.png",
    "recall": "figures/val_recall.png",
    "confusion": "figures/zeroshot_confusion.png",
    "examples": "figures/retrieval_examples.png",
}
CAPTIONS = {
    "loss": "Pretraining loss (in-batch InfoNCE of the preset) against the optimizer step.",
    "recall": "Text->video recall on the val pairs during pretraining (pretraining's own "
    "validation), dashed: chance.",
    "confusion": "Zero-shot classification of the val videos from the class names.",
    "examples": "Top-3 val videos for three val captions (4 frames each); green: the "
    "caption's own video.",
}


def _top1(probe: dict[str, Any]) -> float:
    test = probe.get("test") or {}
    value = test.get("top1")
    return float(value) if value is not None else math.nan


def demo_rows(retrieval: dict[str, Any], zeroshot: dict[str, Any],
              probes: dict[str, dict[str, Any]]) -> dict[str, Row]:  # fmt: skip
    """The reported figures by key, each with its chance level (the probes' difference has
    none: 0 points means pretraining gave no head start)."""
    n = int(retrieval["num_videos"])
    chance_cls = float(zeroshot["chance_top1"])
    pre, rand = _top1(probes["pretrained"]), _top1(probes["random"])
    rows = {f"t2v_r{k}": Row(f"text->video R@{k}", retrieval[f"t2v_r{k}"],
                             retrieval[f"t2v_chance_r{k}"]) for k in (1, 5, 10)}  # fmt: skip
    # a random ranking puts the true video at a uniform rank in 1..n: median (n + 1) / 2
    rows["t2v_median_rank"] = Row("text->video median rank", retrieval["t2v_median_rank"],
                                  (n + 1) / 2, "rank")  # fmt: skip
    rows["zeroshot_top1"] = Row("zero-shot motion top-1", zeroshot["top1"], chance_cls)
    rows["probe_pretrained_top1"] = Row("linear probe top-1, pretrained", pre, chance_cls)
    rows["probe_random_top1"] = Row("linear probe top-1, random init", rand, chance_cls)
    rows["probe_difference_points"] = Row("linear probe, pretrained - random",
                                          100 * (pre - rand), None, "points")  # fmt: skip
    return rows


def example_figure(ev: Any, path: Path, *, seed: int, crop_size: int, window: int,
                   queries: int = 3, k: int = 3, frames: int = 4) -> list[dict[str, Any]]:  # fmt: skip
    """Plot the top-``k`` videos of ``queries`` val captions of distinct classes (chosen from
    ``seed``): ``frames`` frames each from :func:`cpd.load_clip` in test mode, spread over the
    model's clip ``window`` (in frames); returns what the figure shows."""
    import torch

    import cpd
    from cpd.eval.pairs import pick_queries, top_videos
    from cpd.eval.plots import RetrievedVideo, plot_retrieval_examples
    from cpd.video.transforms import MEAN, STD

    labels = ev.labels[ev.text_to_video].tolist()
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    shown, described = [], []
    for q in pick_queries(labels, queries, seed):
        rows, rank = top_videos(ev, q, k)
        videos = []
        for row in rows:
            record = ev.records[row]
            clip = cpd.load_clip(record.path, num_frames=frames, stride=max(window // frames, 1),
                                 crop_size=crop_size, train=False)  # fmt: skip
            image = (clip.permute(1, 2, 3, 0) * std + mean).clamp(0, 1).numpy()  # un-normalise
            own = row == int(ev.text_to_video[q])
            label = ev.classes[int(ev.labels[row])] + (" (own)" if own else "")
            videos.append(RetrievedVideo(image, label, own))
        text = ev.captions[q].caption
        shown.append((f"\u201c{text}\u201d: own video ranked {rank} of {len(ev.records)}",
                      videos))  # fmt: skip
        described.append({"query": text, "video_id": ev.captions[q].video_id,
                          "own_video_rank": rank,
                          "top": [ev.records[r].video_id for r in rows]})  # fmt: skip
    plot_retrieval_examples(shown, path)
    return described


def report_markdown(results: dict[str, Any], rows: dict[str, Row]) -> str:
    """``report.md``: what ran, the table, the figures (relative paths)."""
    s = results["settings"]
    sec, reused = results["seconds"], results["reused"]
    n_val, n_cls = results["retrieval"]["num_videos"], len(results["zeroshot"]["classes"])
    test_n = (results["linear_probe"]["pretrained"].get("test") or {}).get("num_videos", "?")
    what = {
        "synthetic data": f"{s['data']['num_videos']} videos of {n_cls} motion classes "
        f"(`cpd.data.write_synthetic_dataset`, seed {s['seed']}) in `data/`",
        "pretraining": f"preset `{s['pretrain_preset']}`, {results['pretraining']['epochs']} "
        "epochs, into `pretrain/` (`run.resume=auto`)",
        "retrieval and zero-shot": f"`pretrain/export` on the {n_val} val videos, one centre "
        "clip each: text->video retrieval of their captions; zero-shot into the motion classes "
        "from the class names (the prompt templates of `cpd zeroshot`)",
        "linear probes": f"preset `{s['probe_preset']}` (features once, L-BFGS; test on "
        f"{test_n} videos), from `pretrain/export` and from random weights of the same "
        "architecture, into `probe_pretrained/` and `probe_random/`",
        "report": "this file, `results.json`, `figures/`",
    }
    lines = [
        "# cpd demo" + (" (quick)" if results["quick"] else ""),
        "",
        f"CPD end to end on the embedded synthetic dataset: cpd {results['version']}, "
        f"seed {s['seed']}, {results['date']}. Every figure below was measured in this run and "
        "stands next to its chance level; none is a target.",
        "",
        "## What ran",
        "",
        "| stage | what | seconds |",
        "| --- | --- | ---: |",
    ]
    for name, text in what.items():
        note = " (reused from an earlier run)" if reused.get(name) else ""
        lines.append(f"| {name} | {text}{note} | {sec[name]:.1f} |")
    lines += [f"| total | | {sec['total']:.1f} |", "", "## Results", "", markdown_table(
        list(rows.values())), ""]  # fmt: skip
    lines += [
        f"Chance: recall@k of a random ranking of the {n_val} val videos is k/{n_val}, its median "
        f"rank ({n_val} + 1)/2; guessing among {n_cls} classes is right 1/{n_cls} of the time. "
        "The probes' difference has no chance level: 0 points means that pretraining gave no "
        "head start. Retrieval here embeds one centre clip per video as `cpd retrieval` does; "
        "pretraining's own validation (the recall curve) cuts its clips from cached frames, so "
        "the two can differ slightly.",
        "",
        "## Figures",
        "",
    ]
    for key, rel in results["figures"].items():
        lines += [f"![{key}]({rel})", "", CAPTIONS[key], ""]
    return "\n".join(lines)


def write_outputs(settings: Any, clock: Any, pcfg: Any, pretrained: dict[str, Any],
                  evaluation: dict[str, Any], probes: dict[str, dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """Stage 5: curves, ``results.json``, ``report.md``; prints the table; returns the results."""
    import torch

    import cpd
    from cpd.eval.common import write_results
    from cpd.eval.plots import plot_loss_curve, plot_recall_curve
    from cpd.runtime import git_revision

    out = settings.out
    metrics = read_metrics(Path(pcfg.run.out) / "metrics.jsonl")
    plot_loss_curve(metrics.get("step", []), metrics.get("epoch", []), out / FIGURES["loss"])
    plot_recall_curve(metrics.get("val", []), out / FIGURES["recall"])
    rows = demo_rows(evaluation["retrieval"], evaluation["zeroshot"], probes)
    clock.end()
    results = {
        "command": "demo", "version": cpd.__version__, "git_revision": git_revision(),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "out": str(out), "quick": settings.quick,
        "settings": {"seed": settings.seed, "workers": settings.workers,
                     "data": {"num_videos": settings.num_videos, **DATA_SETTINGS},
                     "pretrain_preset": PRETRAIN_PRESET,
                     "pretrain_overrides": settings.pretrain_overrides(),
                     "probe_preset": PROBE_PRESET,
                     "probe_overrides": {k: settings.probe_overrides(Path(p["init"]), f"probe_{k}")
                                         for k, p in probes.items()}},
        "seeds": {"data": settings.seed, "pretraining": settings.seed, "probes": settings.seed,
                  "random_init": settings.seed, "example_queries": [settings.seed, 9]},
        "seconds": {**clock.seconds, "total": round(clock.total, 2)}, "reused": clock.reused,
        "metrics": {k: {"metric": r.metric, "value": r.value, "chance": r.chance, "unit": r.unit}
                    for k, r in rows.items()},
        "retrieval": evaluation["retrieval"], "zeroshot": evaluation["zeroshot"],
        "linear_probe": {k: {"init": p.get("init"), "test": _test_summary(p),
                             "final": p.get("final")} for k, p in probes.items()},
        "pretraining": {"epochs": pretrained.get("epochs"),
                        "global_step": pretrained.get("global_step"),
                        "final": pretrained.get("final")},
        "examples": evaluation["examples"], "failed_videos": evaluation["failed"],
        "figures": dict(FIGURES),
    }  # fmt: skip
    results["linear_probe"]["difference_points"] = rows["probe_difference_points"].value
    write_results(out, results)
    (out / "report.md").write_text(report_markdown(results, rows) + "\n", encoding="utf-8")
    title = (f"cpd demo{' --quick' if settings.quick else ''}: {evaluation['num_videos']} val "
             f"videos / pairs, {len(evaluation['zeroshot']['classes'])} motion classes")  # fmt: skip
    clock.say(format_table(list(rows.values()), title=title))
    clock.say(f"total {clock.total:.0f} s; report: {out / 'report.md'}")
    return results


def _test_summary(probe: dict[str, Any]) -> dict[str, Any] | None:
    test = probe.get("test")
    if not test:
        return None
    keep = ("top1", "top5", "mean_class_accuracy", "num_videos", "num_failed")
    return {k: test[k] for k in keep if k in test}
