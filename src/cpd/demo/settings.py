"""What ``cpd demo`` runs: its settings, the presets it starts from and the outputs it owns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["AFTER_DATA", "DATA_SETTINGS", "OUTPUTS", "PRETRAIN_PRESET", "PROBE_PRESET",
           "DemoSettings"]  # fmt: skip

PRETRAIN_PRESET = "pretrain_synthetic_cpu"
PROBE_PRESET = "linear_synthetic_cpu"
# The dataset's settings besides its size and seed: cpd synth's defaults, spelled out so that
# an existing dataset.json can be checked against them.
DATA_SETTINGS = {"width": 128, "height": 128, "num_frames": 75, "fps": 30.0,
                 "motions_per_group": 4, "val_fraction": 0.2}  # fmt: skip
# what the demo writes under OUT, in stage order (only these are ever deleted)
OUTPUTS = ("data", "pretrain", "random_init", "probe_pretrained", "probe_random", "figures",
           "report.md", "results.json")  # fmt: skip
AFTER_DATA = OUTPUTS[1:]


@dataclass(frozen=True)
class DemoSettings:
    """What ``cpd demo`` runs. ``quick``: 160 videos, 4 pretraining epochs, smaller probes."""

    out: Path
    quick: bool = False
    seed: int = 0
    workers: int = 2
    force: bool = False

    @property
    def num_videos(self) -> int:
        return 160 if self.quick else 480

    def pretrain_overrides(self) -> list[str]:
        """``key=value`` settings on top of the pretraining preset."""
        extra = ["schedule.epochs=4", "run.val_every=1"] if self.quick else []
        return [f"data.manifest={self.out / 'data' / 'captions.jsonl'}",
                f"run.out={self.out / 'pretrain'}", f"run.seed={self.seed}", "run.resume=auto",
                *extra]  # fmt: skip

    def probe_overrides(self, init: Path, name: str) -> list[str]:
        """``key=value`` settings on top of the probe preset; the architecture comes from
        ``init``, so that the preset's own arch / width cannot disagree with it."""
        # quick: clips decoded on demand, cheaper than caching every video for so few clips
        extra = ["probe.clips_per_video=2", "probe.max_iter=100",
                 "data.cache_frames=false"] if self.quick else []  # fmt: skip
        return [f"data.split_dir={self.out / 'data' / 'ucfTrainTestlist'}", f"model.init={init}",
                "model.arch=null", "model.base_width=null", "model.shortcut=null",
                f"run.out={self.out / name}", f"run.seed={self.seed}", *extra]  # fmt: skip
