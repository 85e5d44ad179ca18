"""Finetune a pretrained video encoder on labelled actions, or train a linear probe on it.

The configuration has these sections; any key can be set as key=value (YAML values) after the
preset or file of --config:

  mode      finetune (the paper's; model.train_from=1..4 for partial finetuning, as the
            official --ft_begin_index) | linear_official (the official linear protocol: only
            the classifier trains, BatchNorm in train mode, dropout 0.8, lr 2) | linear (cpd's
            stricter probe: encoder frozen in eval mode, no BatchNorm updates) |
            linear_features (linear's protocol with features extracted once: much faster)
  data      dataset (ucf101 | hmdb51 | ucf-layout | csv), fold (1..3), video_root, split_dir,
            csv, classes, num_frames, stride, crop_size, scale_range, hflip (null: the
            dataset's dataset.json decides), cache_frames, workers
  model     init (random | a cpd export / checkpoint | an official CPD checkpoint), arch /
            base_width / shortcut (for init=random), dropout (before the new classifier),
            train_from (0: all; k = 1..4: layer k..4 and the classifier, as official)
  optim     batch_size (TOTAL over all processes), lr (null: 2 for linear_official, else
            0.02), momentum, weight_decay, clip_norm (20, as official), amp
  schedule  epochs, kind (plateau: ReduceLROnPlateau on validation accuracy | step | cosine),
            patience, factor, min_lr (1e-6, as official), milestones, gamma, warmup_epochs
  val       split (test, as the official code | train), max_videos (a cheaper subset), clip
            (random: one training-style clip per video, as official | centre)
  test      enabled, num_clips, num_crops, crop_size, scores (logits: the official mean of
            raw logits | softmax)
  probe     clips_per_video, solver (lbfgs | sgd), weight_decay, max_iter, test_average
  run       out, seed, resume (auto | never | FILE.pt), val_every, save_every, log_every,
            device, progress, tensorboard, threads

Presets: finetune_ucf101_r50 and finetune_hmdb51_r50 (the paper: 16 frames stride 4, crop 224,
dropout 0.8, SGD lr 0.02, batch 128, 100 epochs, plateau schedule, 10x3 test),
finetune_synthetic_cpu and linear_synthetic_cpu (the synthetic dataset on a CPU).

The run directory receives config.yaml, metrics.jsonl, tensorboard/, last.pt every epoch
(+ epoch_NNNN.pt), results.json (video-level top-1 / top-5, per-class accuracy, protocol, seed,
init checkpoint, version) and export/ (for cpd test and cpd.load_model). Rerunning the same
command resumes; SIGTERM / Ctrl-C stop with a checkpoint (exit status 3).
Several processes: torchrun --nproc_per_node N -m cpd finetune --config ...

Examples:
  cpd finetune --config finetune_synthetic_cpu model.init=runs/pretrain_synthetic_cpu/export
  cpd finetune --config finetune_synthetic_cpu model.init=random run.out=runs/ft_random
  cpd finetune --config finetune_ucf101_r50 model.init=cpd_r50.pth \\
      data.video_root=/data/UCF-101 data.fold=2 run.out=runs/ucf_s2
"""

from __future__ import annotations

import argparse

HELP = "finetune or linear-probe the video encoder on labelled actions (UCF101, HMDB51, ...)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd finetune``."""
    from cpd.commands._training import add_training_options

    add_training_options(parser, manifest=False, example="model.init=runs/pre/export optim.lr=0.01",
                         config_help="YAML config file or preset name (default: the paper's UCF101 recipe)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Resolve the config and train; the exit statuses are in ``--help``."""
    from cpd.commands._training import run_training
    from cpd.train.finetune_config import load_finetune_config

    def entry():  # imported only when a run starts
        from cpd.train.finetune import finetune

        return finetune

    return run_training("finetune", load_finetune_config, entry, args)


def main(argv: list[str] | None = None) -> int:
    """``python -m cpd.commands.finetune ...`` (the same as ``cpd finetune ...``)."""
    parser = argparse.ArgumentParser(prog="cpd finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
