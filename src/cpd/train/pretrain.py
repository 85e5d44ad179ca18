"""CPD pretraining: build everything from a :class:`PretrainConfig`, run the epochs, finish.

Read top to bottom: :func:`pretrain` sets up the process (group), run directory, data, model,
loss and optimizer (:func:`build`), resumes from a checkpoint if there is one, runs the epoch
loop it shares with finetuning (:class:`cpd.train.trainer.BaseTrainer`, one
:func:`cpd.train.step.pretrain_step` per batch), validates every ``run.val_every`` epochs,
checkpoints every epoch, and finishes with an export
(``run_dir/export/``, readable by :func:`cpd.load_model`) and ``results.json``.

Reproducibility: everything random comes from ``run.seed`` and (epoch, step, index, rank):
data order (the sampler's ``set_epoch``), clips (the dataset), negatives
(:func:`~cpd.losses.negative_generator`), frame shuffles, and dropout (the global torch
generator is re-seeded before each step). A resumed run, also one resumed in the middle of an
epoch, therefore repeats the uninterrupted run's steps exactly on the same machine.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from cpd import dist
from cpd.config import ConfigError, from_dict, to_dict
from cpd.errors import CheckpointError
from cpd.losses import InfoNCELoss, MemoryBankNCELoss, negative_generator, temporal_negatives
from cpd.models import CPDModel, build_model, save_model
from cpd.train.amp import autocast_context, make_scaler, resolve_amp
from cpd.train.config import PretrainConfig
from cpd.train.loader import PretrainData, build_data, make_loader
from cpd.train.log import RunLogger, format_table
from cpd.train.run import Env, TrainingDiverged, TrainingInterrupted, open_run
from cpd.train.schedule import text_cosine_lr, text_encoder_trainable, text_step_lr
from cpd.train.step import StepResult, TextFeatureCache, pretrain_step
from cpd.train.trainer import BaseTrainer, per_rank_batch, use_sync_bn

__all__ = ["TrainingInterrupted", "TrainingDiverged", "evaluate_retrieval", "pretrain"]

log = logging.getLogger(__name__)


# --- model, loss, optimizer ---------------------------------------------------------------


class _InfoNCEStep(nn.Module):
    """InfoNCE behind the memory-bank loss's call signature, as ``pretrain_step`` expects."""

    def __init__(self, loss: InfoNCELoss) -> None:
        super().__init__()
        self.inner = loss

    def forward(self, video, text, idx, *, generator, hard_video=None, hard_valid=None,
                update_memory=False):  # type: ignore[no-untyped-def]  # fmt: skip
        return self.inner(video, text, hard_video=hard_video, hard_valid=hard_valid)

    def update_memory(self, video: torch.Tensor, text: torch.Tensor, idx: torch.Tensor) -> None:
        """No memory: nothing to update."""


def build_loss(cfg: PretrainConfig, num_data: int) -> nn.Module:
    """The loss of ``loss.kind``, sized for the training set."""
    c = cfg.loss
    if c.kind == "infonce":
        return _InfoNCEStep(InfoNCELoss(c.temperature, learn_temperature=c.learn_temperature))
    return MemoryBankNCELoss(
        num_data,
        cfg.model.embed_dim,
        num_negatives=c.num_negatives,
        temperature=c.temperature,
        momentum=c.momentum,
        bank_dtype=getattr(torch, c.bank_dtype),
        seed=cfg.run.seed,
    )


def build_optimizer(
    cfg: PretrainConfig, model: CPDModel, loss_fn: nn.Module
) -> torch.optim.Optimizer:
    """SGD (or AdamW, ``optim.optimizer``) with named groups: ``main`` / ``main_no_decay``
    (video tower, heads, loss),
    ``text`` / ``text_no_decay`` (the text encoder; lr 0 and no gradients while frozen).

    BatchNorm weights and biases (1-D parameters) get no weight decay when
    ``optim.no_decay_norm_bias`` (common practice; the official code decayed everything).
    """
    o = cfg.optim
    groups: dict[str, list[nn.Parameter]] = {k: [] for k in ("main", "text")}
    no_decay: dict[str, list[nn.Parameter]] = {k: [] for k in ("main", "text")}
    text_ids = {id(p) for p in model.textual_encoder.parameters()}
    for p in [*model.parameters(), *loss_fn.parameters()]:
        side = "text" if id(p) in text_ids else "main"
        (no_decay if o.no_decay_norm_bias and p.dim() <= 1 else groups)[side].append(p)
    param_groups = []
    for side, base in (("main", o.lr), ("text", o.text_lr)):
        for name, params, wd in ((side, groups[side], o.weight_decay),
                                 (f"{side}_no_decay", no_decay[side], 0.0)):  # fmt: skip
            if params:
                param_groups.append(
                    {"params": params, "name": name, "base_lr": base, "weight_decay": wd}
                )
    if o.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=o.lr, weight_decay=0.0)
    return torch.optim.SGD(
        param_groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=0.0
    )


def lr_factor(cfg: PretrainConfig, epoch_float: float) -> float:
    """The schedule's multiplier of the main learning rate at a (fractional) epoch."""
    return cfg.schedule.lr_factor(epoch_float, cfg.schedule.final_lr)


def text_lr_factor(cfg: PretrainConfig, epoch_float: float) -> float:
    """The multiplier of ``optim.text_lr`` at a (fractional) epoch while the encoder trains.

    ``optim.text_lr_schedule="from_unfreeze"`` (the official rule): 1 when the encoder
    unfreezes, then only the decays from there on (:func:`~cpd.train.schedule.text_step_lr`,
    :func:`~cpd.train.schedule.text_cosine_lr`); ``"global"``: the main factor,
    :func:`lr_factor`.
    """
    s = cfg.schedule
    if cfg.optim.text_lr_schedule == "global":
        return lr_factor(cfg, epoch_float)
    if s.kind == "cosine":
        return text_cosine_lr(1.0, epoch_float, s.epochs, s.unfreeze_epoch, s.warmup_epochs,
                              s.final_lr)  # fmt: skip
    return text_step_lr(1.0, epoch_float, s.milestones, s.unfreeze_epoch, s.gamma,
                        s.warmup_epochs)  # fmt: skip


def set_lr(
    optimizer: torch.optim.Optimizer,
    factor: float,
    text_trainable: bool,
    text_factor: float | None = None,
) -> float:
    """Set every group's lr for this step; returns the main lr.

    The main groups get ``base_lr * factor``; the text groups ``base_lr * text_factor``
    (``factor`` if None) while the encoder trains, else 0.
    """
    text_factor = factor if text_factor is None else text_factor
    for group in optimizer.param_groups:
        if not group["name"].startswith("text"):
            group["lr"] = group["base_lr"] * factor
        else:
            group["lr"] = group["base_lr"] * text_factor if text_trainable else 0.0
    return optimizer.param_groups[0]["lr"]


# --- validation ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate_retrieval(
    model: CPDModel,
    dataset: Any,
    *,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Text→video / video→text retrieval metrics of ``dataset`` (centre clips), exact under DDP.

    Every rank embeds its share; embeddings are gathered with their indices and the
    sampler's padded repeats dropped, so the result equals one process's on the same data.
    Collective under a process group: call it on every rank.
    """
    from cpd.eval.gather import gather_embeddings
    from cpd.eval.retrieval import retrieval_metrics

    was_training = model.training
    model.eval()
    loader = make_loader(dataset, batch_size=batch_size, train=False, seed=0, epoch=0,
                         workers=workers, rank=dist.get_rank(),
                         world_size=dist.get_world_size())  # fmt: skip
    videos, texts, indices = [], [], []
    for batch in loader:
        with autocast_context(device, amp_dtype):
            v = model.encode_video(batch["video"].to(device, non_blocking=True))
            t = model.encode_tokens(
                batch["input_ids"].to(device), batch["attention_mask"].to(device)
            )
        videos.append(v.float())
        texts.append(t.float())
        indices.append(batch["index"].to(device))
    dim = model.embed_dim
    local_v = torch.cat(videos) if videos else torch.zeros(0, dim, device=device)
    local_t = torch.cat(texts) if texts else torch.zeros(0, dim, device=device)
    local_i = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
    # a stream skips (and counts) what it cannot read in evaluation: no exact count to check
    expected = None if hasattr(dataset, "skipped") else len(dataset)
    all_v, _ = gather_embeddings(local_v, local_i, num_samples=expected)
    all_t, _ = gather_embeddings(local_t, local_i, num_samples=expected)
    if expected is None and all_v.shape[0] < len(dataset):
        log.warning("validation: %d of %d shard samples could not be read or decoded and were "
                    "left out", len(dataset) - all_v.shape[0], len(dataset))  # fmt: skip
    model.train(was_training)
    metrics = retrieval_metrics(all_v.cpu(), all_t.cpu())
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


# --- the trainer --------------------------------------------------------------------------


# the validation figures printed (results.json and metrics.jsonl hold them all)
_SHOWN = ("t2v_r1", "t2v_r5", "t2v_r10", "t2v_median_rank", "v2t_r1", "v2t_r5", "v2t_r10",
          "v2t_median_rank", "t2v_chance_r1")  # fmt: skip


@dataclass(kw_only=True)
class Trainer(BaseTrainer):
    """A pretraining run: the shared loop (:class:`~cpd.train.trainer.BaseTrainer`) with the
    loss and its memory bank, the text-encoder curriculum and its feature cache."""

    command: ClassVar[str] = "pretrain"
    dropout_stream: ClassVar[int] = 1

    cfg: PretrainConfig
    data: PretrainData
    model: CPDModel
    loss_fn: nn.Module
    text_cache: TextFeatureCache | None = None
    stage: bool | None = None  # text encoder trainable in the current wrapper

    # checkpoints: the shared part in BaseTrainer -----------------------------------------

    def extra_state(self) -> dict[str, Any]:
        """The resolved config and the loss state (the text cache is recomputed, not saved),
        and what a streaming dataset's epoch plan depends on."""
        return {"config": to_dict(self.cfg), "loss": self.loss_fn.state_dict(),
                "data_plan": self._data_plan()}  # fmt: skip

    def _data_plan(self) -> dict[str, Any] | None:
        train = self.data.train
        if not hasattr(train, "plan_settings"):
            return None
        return train.plan_settings(world_size=self.env.world_size, workers=self.cfg.data.workers,
                                   batch_size=self.batch_per_rank)  # fmt: skip

    def check_resume(self, path: Path, ckpt: dict[str, Any]) -> None:
        """The model must be the one this run builds; a stream stopped mid-epoch resumes only
        under the plan it was stopped in (else samples would be replayed and others lost)."""
        old = from_dict(PretrainConfig, ckpt["config"]) if "config" in ckpt else None
        if old is not None and to_dict(old.model) != to_dict(self.cfg.model):
            raise CheckpointError(f"{path}: its model config differs from this run's")
        saved, now = ckpt.get("data_plan"), self._data_plan()
        if int(ckpt.get("step_in_epoch", 0)) > 0 and now is not None and saved != now:
            changed = ", ".join(f"{k} {(saved or {}).get(k)} -> {v}" for k, v in now.items()
                                if (saved or {}).get(k) != v)  # fmt: skip
            raise CheckpointError(
                f"{path}: stopped in the middle of an epoch of shards planned for other "
                f"settings ({changed}); resume with the same world size, data.workers, batch "
                "and data.shuffle_buffer, or from a checkpoint at an epoch's end (epoch_NNNN.pt)"
            )

    def load_extra(self, ckpt: dict[str, Any]) -> None:
        """Banks and Z (nce) or the temperature (infonce)."""
        self.loss_fn.load_state_dict(ckpt["loss"])

    # curriculum ----------------------------------------------------------------------------

    def begin_epoch(self) -> None:
        """Freeze or unfreeze the text encoder for the epoch; (re)wrap in DDP on a change."""
        epoch = self.epoch
        trainable = text_encoder_trainable(epoch, self.cfg.schedule.unfreeze_epoch)
        if trainable == self.stage:
            return
        text = self.model.textual_encoder
        if trainable:
            text.unfreeze()
            self.text_cache = None  # its features are stale once the encoder trains
        else:
            text.freeze()
            self.text_cache = None  # no cache: pretrain_step runs the frozen encoder every step
            if self.cfg.optim.cache_text_features:
                self.text_cache = TextFeatureCache(len(self.data.train), text.hidden_size)
                self.logger.message(
                    f"text-feature cache: {len(self.data.train):,} captions x "
                    f"{text.hidden_size} fp16, up to {self.text_cache.nbytes / 1e9:.2f} GB "
                    "in memory (optim.cache_text_features=false recomputes them instead)"
                )
                self._warm_text_cache()
        self.model.train()
        self.wrap()
        self.stage = trainable
        self.logger.write("event", self.global_step, event="text_encoder",
                          trainable=trainable, epoch=epoch)  # fmt: skip

    @torch.no_grad()
    def _warm_text_cache(self, chunk: int = 256) -> None:
        """Fill the frozen encoder's feature cache from the tokenised captions, in fixed
        chunks, so cached features never depend on which batch first met a caption."""
        assert self.text_cache is not None
        ds, dev = self.data.train, self.env.device
        if not hasattr(ds, "input_ids"):
            # A streaming dataset tokenises each caption as it reads it and has no table of all
            # of them to warm from (nor room for one at scale): the cache then fills lazily as
            # batches bring the captions, so a row may differ in its last bits with the batch
            # that computed it.
            return
        for start in range(0, len(ds), chunk):
            stop = min(start + chunk, len(ds))
            with autocast_context(dev, self.amp_dtype):
                self.text_cache.pooled(
                    self.model.textual_encoder,
                    ds.input_ids[start:stop].long().to(dev),
                    ds.attention_mask[start:stop].long().to(dev),
                    torch.arange(start, stop),
                )

    # the loop's steps ----------------------------------------------------------------------

    def train_loader(self) -> Iterable[dict[str, Any]]:
        """The current epoch's rest, in groups of ``data.group_by`` when set."""
        return make_loader(self.data.train, **self.loader_options(),
                           groups=self.data.train_groups)  # fmt: skip

    def set_step_lr(self, epoch_float: float) -> float:
        """The main and the text encoder's lr (0 while it is frozen)."""
        cfg = self.cfg
        return set_lr(self.optimizer, lr_factor(cfg, epoch_float), bool(self.stage),
                      text_lr_factor(cfg, epoch_float))  # fmt: skip

    def step(self, batch: dict[str, Any], index: int) -> tuple[StepResult, dict[str, float]]:
        """:func:`~cpd.train.step.pretrain_step` with this step's negatives (and hard ones)."""
        cfg, env, epoch = self.cfg, self.env, self.epoch
        fmt = torch.channels_last_3d if cfg.optim.channels_last else torch.contiguous_format
        hard = None
        if cfg.loss.hard_negatives:
            g = negative_generator(cfg.run.seed + 1, epoch, index, env.rank)
            hard = temporal_negatives(batch["video"], cfg.loss.hard_shuffle, g)
        result = pretrain_step(
            self.wrapped, self.loss_fn, self.optimizer, batch,
            generator=negative_generator(cfg.run.seed, epoch, index, env.rank, env.device),
            text_cache=self.text_cache, amp_dtype=self.amp_dtype, scaler=self.scaler,
            clip_norm=cfg.optim.clip_norm, hard_negatives=hard, memory_format=fmt,
        )  # fmt: skip
        return result, {}

    def step_figures(self) -> dict[str, Any]:
        """The text encoder's lr."""
        return {"text_lr": self.optimizer.param_groups[-1]["lr"]}

    def epoch_figures(self, sums: dict[str, float]) -> dict[str, Any]:
        """Clip events and skipped steps."""
        return {"clip_events": int(sums["clip_events"]),
                "skipped_steps": int(sums["skipped_steps"])}  # fmt: skip

    def validate(self) -> None:
        """Text-video retrieval on the validation pairs (:func:`evaluate_retrieval`)."""
        if not self.validation_due():
            return
        metrics = evaluate_retrieval(
            self.model, self.data.val, batch_size=self.batch_per_rank,
            device=self.env.device, workers=self.cfg.data.workers, amp_dtype=self.amp_dtype,
        )  # fmt: skip
        self.last_val = metrics
        self.logger.write("val", self.global_step, epoch=self.epoch, **metrics)
        shown = {k: metrics[k] for k in _SHOWN if k in metrics}
        self.logger.message(
            f"epoch {self.epoch}: val " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
        )


# --- entry point --------------------------------------------------------------------------


def build(cfg: PretrainConfig, env: Env, run_dir: Path, logger: RunLogger) -> Trainer:
    """Data, model, loss, optimizer and scaler for ``cfg`` on this process."""
    per_rank = per_rank_batch(cfg.optim.batch_size, env)
    sync_bn = use_sync_bn(cfg.optim.sync_bn, env)
    if per_rank < 2 and not (sync_bn and env.world_size > 1):
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} gives {per_rank} clip per process: the "
            "text head's BatchNorm1d cannot train on one sample; use >= 2 per process (or "
            "optim.sync_bn=true on CUDA with several processes)"
        )
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    with warnings.catch_warnings():  # e.g. DistilBERT built from its config without weights
        warnings.simplefilter("ignore")
        model = build_model(cfg.model)
    assert isinstance(model, CPDModel)
    data = build_data(cfg.data, model.textual_encoder.tokenizer, seed=cfg.run.seed,
                      val=cfg.run.val_every > 0, progress=cfg.run.progress and env.main,
                      index_dir=run_dir, official_tokens=cfg.model.text_compat,
                      bad_rows_file=run_dir / "bad_rows.jsonl" if env.main else None)  # fmt: skip
    neighbours = cfg.data.caption_neighbours > 1 or cfg.data.video_neighbours > 1
    if neighbours and not cfg.data.shards:  # shards: build_data said they are not used
        data.train_groups = _neighbour_groups(cfg, model, data, progress=env.main)
    if data.missing and env.main:
        (run_dir / "missing_videos.txt").write_text("".join(f"{p}\n" for p in data.missing))
    if len(data.train) < cfg.optim.batch_size:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} exceeds the {len(data.train)} training pairs"
        )
    if sync_bn and env.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[assignment]
    model.to(env.device)
    if cfg.optim.channels_last:
        model.visual_encoder.to(memory_format=torch.channels_last_3d)
    loss_fn = build_loss(cfg, len(data.train)).to(env.device)
    optimizer = build_optimizer(cfg, model, loss_fn)
    amp_dtype = resolve_amp(cfg.optim.amp, env.device)
    scaler = make_scaler(amp_dtype, env.device)
    return Trainer(cfg=cfg, env=env, run_dir=run_dir, data=data, model=model, loss_fn=loss_fn,
                   optimizer=optimizer, scaler=scaler, amp_dtype=amp_dtype, logger=logger,
                   batch_per_rank=per_rank)  # fmt: skip


def _neighbour_groups(
    cfg: PretrainConfig, model: CPDModel, data: PretrainData, progress: bool
) -> list[int]:
    """``data.video_neighbours`` / ``data.caption_neighbours``: groups of look-alike videos or
    of near captions (:mod:`cpd.train.neighbours`), batched whole."""
    from cpd.train.neighbours import appearance_features, caption_features, neighbour_groups

    d = cfg.data
    if sum(bool(x) for x in (d.group_by, d.video_neighbours > 1, d.caption_neighbours > 1)) > 1:
        raise ConfigError("data.group_by, data.video_neighbours and data.caption_neighbours: "
                          "choose one way to batch")  # fmt: skip
    train = data.train
    if d.video_neighbours > 1:
        feats = appearance_features(train, progress=progress and cfg.run.progress)
        return neighbour_groups(feats, d.video_neighbours, cfg.run.seed)
    feats = caption_features(model.textual_encoder, train.input_ids, train.attention_mask)
    return neighbour_groups(feats, d.caption_neighbours, cfg.run.seed)


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) pretraining as configured; returns the results (also results.json).

    Raises:
        TrainingInterrupted: SIGTERM/SIGINT; a checkpoint of the exact step was written.
        TrainingDiverged: ``run.max_bad_steps`` non-finite steps in a row.
        ConfigError / DataError / CheckpointError: bad settings, data or checkpoints.
    """
    with open_run(cfg) as run:
        trainer = build(cfg, run.env, run.run_dir, run.logger)
        if run.resume is not None:
            trainer.load(*run.resume)
        trainer.run_epochs()
        return _finish(trainer, run.info)


def _finish(trainer: Trainer, info: dict[str, Any]) -> dict[str, Any]:
    """Export the final weights and write results.json (rank 0)."""
    run_dir = trainer.run_dir
    final = {**{f"train_{k}": v for k, v in trainer.last_epoch.items()},
             **{f"val_{k}": v for k, v in trainer.last_val.items()}}  # fmt: skip
    results = {
        "final": final,
        "epochs": trainer.epoch,
        "global_step": trainer.global_step,
        "seed": trainer.cfg.run.seed,
        "world_size": trainer.env.world_size,
        "missing_videos": len(trainer.data.missing),  # left out at start (missing_videos.txt)
        "config": to_dict(trainer.cfg),
        **info,
    }
    if trainer.env.main:
        save_model(trainer.model, run_dir / "export", training_config=trainer.cfg)
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        shown = {k: v for k, v in final.items()
                 if k.startswith("train_") or k.removeprefix("val_") in _SHOWN}  # fmt: skip
        trainer.logger.message(format_table(shown))
        trainer.logger.message(f"weights exported to {run_dir / 'export'} (cpd.load_model)")
    return results
