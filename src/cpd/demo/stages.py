"""The five stages of ``cpd demo`` on the embedded synthetic dataset, and :func:`run_demo`.

1. data: ``OUT/data`` from :func:`cpd.data.write_synthetic_dataset`, reused when its
   ``dataset.json`` records the demo's settings and rewritten otherwise;
2. pretraining: the ``pretrain_synthetic_cpu`` preset into ``OUT/pretrain`` through
   :func:`cpd.train.pretrain.pretrain` with ``run.resume=auto`` (an interrupted run continues,
   a finished one with the same settings is reused);
3. evaluation of ``OUT/pretrain/export`` on the val videos: text->video retrieval of their
   captions, zero-shot classification into the motion classes (:mod:`cpd.eval.pairs`);
4. linear probes on motion (``linear_synthetic_cpu``, features extracted once) of the
   pretrained encoder and of the same architecture with random weights;
5. the report: ``OUT/results.json``, ``OUT/report.md``, ``OUT/figures/*.png``
   (:mod:`cpd.demo.report`).

A stage depends on those before it: rewritten data, or pretraining settings that differ from
those of the run in ``OUT/pretrain``, make everything after it start over. Nothing here decides
what a figure should be: each is reported as measured, next to its chance level.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from cpd.demo.settings import (
    AFTER_DATA,
    DATA_SETTINGS,
    OUTPUTS,
    PRETRAIN_PRESET,
    PROBE_PRESET,
    DemoSettings,
)
from cpd.errors import CPDError

__all__ = ["StageClock", "clear", "eta_seconds", "run_demo"]

STAGES = ("synthetic data", "pretraining", "retrieval and zero-shot", "linear probes", "report")
# Seconds each stage took on a busy 2-core CPU (quick, full); the ETA scales them by how fast
# this machine has been on the stages it ran so far.
ESTIMATES = {True: (20.0, 35.0, 8.0, 10.0, 1.0), False: (30.0, 600.0, 6.0, 31.0, 1.0)}


# --- progress -----------------------------------------------------------------------------


def eta_seconds(estimates: Sequence[float], actual: dict[int, float], start: int) -> float:
    """Expected seconds of stages ``start..``: their estimates scaled by actual / estimated
    time of the stages that ran (``actual``), clamped to [0.25, 4] against outliers."""
    spent = sum(actual.values())
    planned = sum(estimates[i] for i in actual)
    speed = min(max(spent / planned, 0.25), 4.0) if planned > 0 and spent > 0 else 1.0
    return speed * sum(estimates[start:])


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


class StageClock:
    """Prints ``[i/n] stage ... (elapsed m:ss, ETA ~m:ss)`` at each stage's start and its
    duration at its end; keeps the seconds of every stage."""

    def __init__(self, estimates: Sequence[float], stream: TextIO | None = None) -> None:
        self.estimates = list(estimates)
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.reused: dict[str, bool] = {}
        self._ran: dict[int, float] = {}  # stages that did their work, for the ETA
        self._index = 0
        self._t0 = self.start

    def begin(self, index: int, note: str = "") -> None:
        """Announce stage ``index`` (0-based)."""
        self._index, self._t0 = index, time.perf_counter()
        eta = eta_seconds(self.estimates, self._ran, index)
        self.say(f"[{index + 1}/{len(STAGES)}] {STAGES[index]}{note} ... (elapsed "
                 f"{_clock(self._t0 - self.start)}, ETA ~{_clock(eta)})")  # fmt: skip

    def end(self, reused: bool = False) -> float:
        """Close the current stage; ``reused``: its outputs were already there."""
        seconds = time.perf_counter() - self._t0
        name = STAGES[self._index]
        self.seconds[name], self.reused[name] = round(seconds, 2), reused
        if not reused:
            self._ran[self._index] = seconds
        self.say(f"      {name}: {seconds:.1f} s" + (" (reused)" if reused else ""))
        return seconds

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start

    def say(self, text: str) -> None:
        """A line for the user, flushed at once (progress bars write to stderr meanwhile)."""
        print(text, file=self.stream, flush=True)


# --- stages -------------------------------------------------------------------------------


def clear(out: Path, names: Sequence[str]) -> None:
    """Delete the demo's own outputs ``names`` under ``out`` (and nothing else)."""
    for name in names:
        assert name in OUTPUTS, name
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def ensure_dataset(settings: DemoSettings) -> tuple[dict[str, Any], bool]:
    """``OUT/data``'s ``dataset.json`` and whether it was reused (same settings) or written."""
    from cpd.data import write_synthetic_dataset
    from cpd.data.synthetic import NAME, VERSION

    folder = settings.out / "data"
    wanted = {"name": NAME, "version": VERSION, "seed": settings.seed,
              "num_videos": settings.num_videos, "num_frames": DATA_SETTINGS["num_frames"],
              "fps": DATA_SETTINGS["fps"], "motions_per_group": DATA_SETTINGS["motions_per_group"],
              "size": {"width": DATA_SETTINGS["width"], "height": DATA_SETTINGS["height"]}}  # fmt: skip
    meta_path = folder / "dataset.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if all(meta.get(k) == v for k, v in wanted.items()):
            return meta, True
    write_synthetic_dataset(folder, num_videos=settings.num_videos, seed=settings.seed,
                            workers=settings.workers, force=True, **DATA_SETTINGS)  # fmt: skip
    return json.loads(meta_path.read_text(encoding="utf-8")), False


def _essentials(cfg: Any) -> dict[str, Any]:
    """A config's settings that decide its results: all but ``run``, plus the seed."""
    from cpd.config import to_dict

    d = to_dict(cfg)
    run = d.pop("run")
    return {**d, "seed": run["seed"]}


def same_settings(run_dir: Path, cfg: Any) -> bool | None:
    """None: no earlier run in ``run_dir``; else whether its config.yaml has ``cfg``'s
    settings (:func:`_essentials`)."""
    from cpd.config import load_config

    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        old = load_config(type(cfg), path)
    except CPDError:  # written by another version: not comparable
        return False
    return _essentials(old) == _essentials(cfg)


def _read_results(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_pretraining(settings: DemoSettings, clock: StageClock) -> tuple[Any, dict, bool]:
    """``(config, results, reused)`` of pretraining into ``OUT/pretrain``."""
    from cpd.train.config import load_pretrain_config

    cfg = load_pretrain_config(PRETRAIN_PRESET, settings.pretrain_overrides())
    run_dir = Path(cfg.run.out)
    same = same_settings(run_dir, cfg)
    if same is False:
        clock.say(f"      {run_dir} holds a run with other settings: starting it over")
        clear(settings.out, AFTER_DATA)
    elif same:
        done = _read_results(run_dir)
        export = run_dir / "export" / "model.safetensors"
        if done and done.get("epochs") == cfg.schedule.epochs and export.is_file():
            return cfg, done, True
    from cpd.train.pretrain import pretrain

    clear(settings.out, ["probe_pretrained"])  # its features came from other weights
    return cfg, pretrain(cfg), False


def random_encoder(settings: DemoSettings, model_cfg: Any, num_classes: int) -> Path:
    """``OUT/random_init``: a video classifier of exactly ``model_cfg``'s architecture with
    random weights from ``seed``, so that both probes share every architectural setting of the
    pretrained model by construction, whatever the probe preset says."""
    import torch

    from cpd.models import build_model, save_model

    path = settings.out / "random_init"
    if not (path / "model.safetensors").is_file():
        torch.manual_seed(settings.seed)
        config = dataclasses.replace(model_cfg, num_classes=num_classes, dropout=0.0)
        save_model(build_model(config), path)
    return path


def run_probe(settings: DemoSettings, init: Path, name: str) -> tuple[dict, bool]:
    """``(results, reused)`` of the linear probe of ``init`` into ``OUT/name``."""
    from cpd.train.finetune_config import load_finetune_config

    cfg = load_finetune_config(PROBE_PRESET, settings.probe_overrides(init, name))
    run_dir = Path(cfg.run.out)
    same = same_settings(run_dir, cfg)
    if same is False:
        clear(settings.out, [name])
    elif same and (done := _read_results(run_dir)) is not None:
        return done, True
    from cpd.train.finetune import finetune

    return finetune(cfg), False


def evaluate_stage(settings: DemoSettings, pcfg: Any, split: Any, captions: list[Any],
                   meta: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Stage 3: retrieval and zero-shot of the export on the val videos (one centre clip of
    pretraining's clip shape each), the confusion matrix and the retrieved examples."""
    from cpd.demo.report import FIGURES, example_figure
    from cpd.eval.common import pct
    from cpd.eval.pairs import evaluate_pairs
    from cpd.eval.plots import plot_confusion_matrix

    d = pcfg.data
    ev = evaluate_pairs(Path(pcfg.run.out) / "export", split, captions, num_frames=d.num_frames,
                        stride=d.stride, crop_size=d.crop_size, workers=settings.workers,
                        device=pcfg.run.device)  # fmt: skip
    zs = ev.zeroshot
    plot_confusion_matrix(zs["confusion_matrix"], ev.classes, settings.out / FIGURES["confusion"],
                          title=f"zero-shot from class names\ntop-1 {pct(zs['top1'])}% "
                          f"(chance {pct(zs['chance_top1'])}%)")  # fmt: skip
    short = min(meta["size"]["width"], meta["size"]["height"])
    examples = example_figure(ev, settings.out / FIGURES["examples"], seed=settings.seed,
                              crop_size=short, window=d.num_frames * d.stride)  # fmt: skip
    return {"retrieval": ev.retrieval, "zeroshot": {**zs, "classes": list(ev.classes)},
            "examples": examples, "num_videos": len(ev.records),
            "failed": [{"path": p, "reason": r} for p, r in ev.failed.values()]}  # fmt: skip


def run_demo(settings: DemoSettings, stream: TextIO | None = None) -> dict[str, Any]:
    """Run (or continue) the five stages; returns what ``OUT/results.json`` holds."""
    from cpd.data import read_caption_manifest, read_ucf101
    from cpd.demo.report import write_outputs

    settings = dataclasses.replace(settings, out=settings.out.resolve())
    out = settings.out
    if settings.force:
        clear(out, OUTPUTS)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(ESTIMATES[settings.quick], stream)

    clock.begin(0, f" ({settings.num_videos} videos, seed {settings.seed})")
    meta, reused = ensure_dataset(settings)
    if not reused:
        clear(out, AFTER_DATA)
    clock.end(reused)

    clock.begin(1, f" (preset {PRETRAIN_PRESET})")
    pcfg, pretrained, reused = run_pretraining(settings, clock)
    clock.end(reused)

    clock.begin(2)
    data = out / "data"
    split = read_ucf101(data / "ucfTrainTestlist", data / "videos", 1, "test")
    captions = read_caption_manifest(data / "captions.jsonl", data, "val")
    evaluation = evaluate_stage(settings, pcfg, split, captions, meta)
    clock.end()

    clock.begin(3, f" (preset {PROBE_PRESET}: pretrained, then random init)")
    export = Path(pcfg.run.out) / "export"
    probe_pre, reused_pre = run_probe(settings, export, "probe_pretrained")
    rand = random_encoder(settings, pcfg.model, split.num_classes)
    probe_rand, reused_rand = run_probe(settings, rand, "probe_random")
    clock.end(reused_pre and reused_rand)

    clock.begin(4)
    return write_outputs(settings, clock, pcfg, pretrained, evaluation,
                         {"pretrained": probe_pre, "random": probe_rand})  # fmt: skip
