"""Pretrain the video encoder against captions with CPD's memory-bank NCE (the paper's recipe).

The configuration has six sections; any key can be set on the command line as key=value
(values are YAML: numbers, true/false, null, [lists]) after the preset or file of --config:

  data      manifest (a caption table, e.g. OUT/captions.jsonl from `cpd synth -o OUT`;
            manifest_format null = from its content or suffix) with video_key / caption_key /
            id_key (its columns; video_key may be a template such as {videoid}.mp4) and
            bad_rows (error | skip), or shards (webdataset tars: a directory,
            shards/{00000..00099}.tar, or an fsspec URL) with val_shards and shuffle_buffer; video_root, train_split/val_split,
            num_frames, stride, crop_size, scale_range, hflip (null: the dataset's
            dataset.json decides), cache_frames, workers; batches of look-alike videos
            (video_neighbours: k), of near captions (caption_neighbours: k) or of a column's
            groups (group_by)
  model     arch (r3d10..r3d101), base_width, text_encoder (all-MiniLM-L6-v2 | distilbert-
            base-uncased | a local HF directory), embed_dim, dropout
  loss      kind (nce | infonce), num_negatives, temperature, momentum, hard_negatives
  optim     batch_size (TOTAL over all processes), lr, momentum, weight_decay, text_lr,
            clip_norm, amp (auto | none | bf16 | fp16), channels_last, sync_bn
  schedule  epochs, kind (step | cosine), milestones, gamma, warmup_epochs, unfreeze_epoch
            (the text encoder is frozen before it and trains from it on; null = never)
  run       out (run directory), seed, resume (auto | never | FILE.pt), val_every, save_every,
            log_every, max_bad_steps, device (auto | cpu | cuda), progress, threads

Presets (a name or a path for --config): pretrain_instagram_r50 (the paper: 3D ResNet-50 +
DistilBERT, 300 epochs, batch 256) and pretrain_synthetic_cpu (a small model for the
synthetic dataset on a CPU). `cpd pretrain --config NAME --print-config [key=value ...]`
prints the resolved configuration as YAML and exits.

The run directory receives config.yaml (resolved, with version and git revision), metrics.jsonl,
tensorboard/, last.pt every epoch (+ epoch_NNNN.pt every run.save_every), results.json and
export/ (final weights for cpd.load_model). Rerunning the same command resumes from the latest
readable checkpoint (run.resume=auto). SIGTERM / Ctrl-C stop at the next step with a
checkpoint of that exact step (exit status 3); rerun the command to continue.

Several processes: torchrun --nproc_per_node N -m cpd pretrain --config ... (NCCL on GPUs,
gloo on CPUs; multi-node through torchrun's rendezvous options).

Examples:
  cpd synth data/synth
  cpd pretrain --config pretrain_synthetic_cpu data.manifest=data/synth/captions.jsonl
  cpd pretrain --config pretrain_instagram_r50 data.manifest=ig/captions.json \\
      data.video_root=ig/videos run.out=runs/ig_r50 optim.lr=0.05
  cpd pretrain --config pretrain_instagram_r50 data.shards="shards/{00000..00999}.tar" \\
      data.val_shards=val_shards/ loss.bank_dtype=bfloat16
"""

from __future__ import annotations

import argparse

HELP = "pretrain the video encoder on video-caption pairs (CPD)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd pretrain``."""
    from cpd.commands._training import add_training_options

    add_training_options(parser, manifest=True, example="optim.lr=0.05",
                         config_help="YAML config file or preset name (default: the built-in defaults = the paper)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Resolve the config and train; the exit statuses are in ``--help``."""
    from cpd.commands._training import run_training
    from cpd.train.config import load_pretrain_config

    def entry():  # imported only when a run starts
        from cpd.train.pretrain import pretrain

        return pretrain

    return run_training("pretrain", load_pretrain_config, entry, args)


def main(argv: list[str] | None = None) -> int:
    """``python -m cpd.commands.pretrain ...`` (the same as ``cpd pretrain ...``)."""
    parser = argparse.ArgumentParser(
        prog="cpd pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
