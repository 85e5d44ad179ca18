"""Export a model to a self-contained folder: model.safetensors + config.json (+ tokenizer/).

CHECKPOINT is anything cpd.load_model reads: a cpd pretrain run's last.pt (or epoch_NNNN.pt),
an official CPD-Video pretraining or finetuning checkpoint, or another export. The folder
loads with cpd.load_model(OUT) (and every cpd command) without the original text-encoder
files or a network. Official pretraining checkpoints lose their memory banks (training state,
not part of the model); their DistilBERT keeps the compatibility mode.

Example:
  cpd export CPD_r50_pretrain.pth -o exports/cpd_r50
"""

from __future__ import annotations

import argparse

from cpd.commands._evaluation import run_command
from cpd.commands._options import add_run_options, take_legacy_out

HELP = "export a checkpoint (ours or official) to safetensors + config.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cpd export``."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint or export to read")
    parser.add_argument("--no-check", action="store_true",
                        help="skip reloading the export to compare it with the checkpoint")  # fmt: skip
    add_run_options(parser, out_required=False, legacy_out=True, device=False, workers=None,
                    threads=False, quiet=False)  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    import torch

    from cpd.config import ConfigError
    from cpd.errors import CheckpointError
    from cpd.eval.common import results_header, write_results
    from cpd.models import CPDModel, load_model, save_model
    from cpd.train.log import format_table

    take_legacy_out(args, "cpd export", None)
    if args.out is None:
        raise ConfigError("give the export folder as -o/--out DIR")
    model = load_model(args.checkpoint, "cpu")
    out = save_model(model, args.out)
    if not args.no_check:  # an export that does not read back is worse than none
        again = load_model(out, "cpu").state_dict()
        for key, value in model.state_dict().items():
            if not torch.equal(value, again[key]):
                raise CheckpointError(f"{out}: {key} differs after reloading the export")
    config = model.config
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    summary = {
        "kind": "CPD model (video + text)" if isinstance(model, CPDModel) else "video classifier",
        "arch": config.arch,
        "base_width": config.base_width,
        "num_classes": config.num_classes,
        "text_encoder": config.text_encoder if isinstance(model, CPDModel) else "-",
        "parameters": sum(p.numel() for p in model.parameters()),
        "files": " ".join(files),
    }
    results = results_header("export", args.checkpoint, None)
    results.update(summary, checked=not args.no_check, out=str(out))
    write_results(out, results)
    print(format_table(summary, title=f"exported {args.checkpoint} -> {out}"))
    return 0


def run(args: argparse.Namespace) -> int:
    """Export; exit status 2 for an unreadable checkpoint."""
    return run_command("export", _run, args)
