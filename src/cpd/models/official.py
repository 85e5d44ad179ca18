"""Import of checkpoints released with the official code (MCG-NJU/CPD-Video).

Both official formats are ``torch.save({"epoch", "arch", "state_dict", "optimizer"})`` of a
DistributedDataParallel model, so every key starts with ``module.``:

- pretraining: ``visual_encoder.*`` (3D ResNet, no ``fc``), ``textual_encoder.*`` (DistilBERT),
  ``vis_emb.*``, ``text_emb.{0,1,3}.*`` and the loss state ``vis_memory``, ``text_memory``,
  ``Z_v``, ``Z_t``. Gives a :class:`CPDModel` with DistilBERT in compatibility mode; the loss
  state is returned apart (memory banks are not part of our model) so pretraining may resume.
- finetuning: the bare ResNet with ``fc``. Gives a :class:`ResNet3d` classifier.

Video keys map one to one; the only renaming is ``textual_encoder.`` -> ``textual_encoder.model.``
(our text tower wraps the Hugging Face model with its tokenizer). Depth, width and shortcut
type are inferred from the keys; any key left over or missing is a CheckpointError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from cpd.errors import CheckpointError
from cpd.models.cpd import CPDModel, ModelConfig, build_model
from cpd.models.resnet3d import BasicBlock, Bottleneck, ResNet3d, arch_from_layers
from cpd.models.state_dict import load_state_dict_strict, read_torch_file, strip_prefix
from cpd.models.text import DISTILBERT

__all__ = [
    "LOSS_STATE_KEYS",
    "OfficialCheckpoint",
    "convert_official_state",
    "detect_official_format",
    "infer_video_config",
    "load_official_checkpoint",
    "official_checkpoint_from_dict",
]

#: Buffers of the official model that belong to the loss (memory banks, NCE constants).
LOSS_STATE_KEYS = ("vis_memory", "text_memory", "Z_v", "Z_t")

OfficialFormat = Literal["pretrain", "finetune"]


@dataclass
class OfficialCheckpoint:
    """An imported official checkpoint: the model, its loss state and metadata."""

    model: CPDModel | ResNet3d
    kind: OfficialFormat
    loss_state: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int | None = None
    arch: str | None = None


def detect_official_format(state: dict[str, Any]) -> OfficialFormat | None:
    """``"pretrain"``, ``"finetune"`` or None, from the keys of a prefix-stripped state dict."""
    if "vis_emb.weight" in state and any(k.startswith("visual_encoder.") for k in state):
        return "pretrain"
    if "conv1.weight" in state and "fc.weight" in state:
        return "finetune"
    return None


def infer_video_config(state: dict[str, Any], prefix: str, source: str) -> dict[str, Any]:
    """``arch``, ``base_width`` and ``shortcut`` of the 3D ResNet whose keys start with ``prefix``."""
    stem = state.get(prefix + "conv1.weight")
    if not isinstance(stem, torch.Tensor) or stem.dim() != 5:
        raise CheckpointError(f"{source}: missing or malformed key {prefix}conv1.weight")
    layers = []
    for i in range(1, 5):
        head = f"{prefix}layer{i}."
        blocks = {k[len(head) :].split(".", 1)[0] for k in state if k.startswith(head)}
        if not blocks or not all(b.isdigit() for b in blocks):
            raise CheckpointError(f"{source}: no blocks found under {head}*")
        layers.append(max(int(b) for b in blocks) + 1)
    block = Bottleneck if f"{prefix}layer1.0.conv3.weight" in state else BasicBlock
    arch = arch_from_layers(block, tuple(layers))
    if arch is None:
        raise CheckpointError(
            f"{source}: {block.__name__} with blocks per stage {layers} is no known 3D ResNet "
            "(r3d10/18/34/50/101)"
        )
    shortcut = "B" if any(".downsample." in k for k in state if k.startswith(prefix)) else "A"
    return {"arch": arch, "base_width": int(stem.shape[0]), "shortcut": shortcut}


def convert_official_state(
    state: dict[str, Any], source: str
) -> tuple[CPDModel | ResNet3d, OfficialFormat, dict[str, Any], dict[str, torch.Tensor]]:
    """Build the model for an official state dict and map its keys onto it.

    Returns ``(model, kind, our_state_dict, loss_state)``; the caller loads the state strictly.
    """
    state = strip_prefix(state)
    kind = detect_official_format(state)
    if kind is None:
        sample = ", ".join(list(state)[:5])
        raise CheckpointError(
            f"{source}: not an official CPD checkpoint: expected visual_encoder.* and vis_emb.* "
            f"(pretraining) or conv1.* and fc.* (finetuning); first keys: {sample}"
        )
    if kind == "finetune":
        fc = state["fc.weight"]
        if not isinstance(fc, torch.Tensor) or fc.dim() != 2:
            raise CheckpointError(f"{source}: fc.weight is not a 2-D tensor")
        video = infer_video_config(state, "", source)
        config = ModelConfig(**video, num_classes=int(fc.shape[0]))
        return build_model(config), kind, state, {}

    loss_state = {k: state.pop(k) for k in LOSS_STATE_KEYS if k in state}
    video = infer_video_config(state, "visual_encoder.", source)
    head = state.get("vis_emb.weight")
    text_head = state.get("text_emb.0.weight")
    if not isinstance(head, torch.Tensor) or not isinstance(text_head, torch.Tensor):
        raise CheckpointError(f"{source}: vis_emb.weight or text_emb.0.weight is not a tensor")
    config = ModelConfig(
        **video,
        text_encoder=DISTILBERT,
        text_compat=True,
        text_max_length=64,
        embed_dim=int(head.shape[0]),
        text_head_dim=int(text_head.shape[0]),
    )
    mapped = {
        ("textual_encoder.model." + k[len("textual_encoder.") :])
        if k.startswith("textual_encoder.")
        else k: v
        for k, v in state.items()
    }
    return build_model(config, pretrained_text=False), kind, mapped, loss_state


def official_checkpoint_from_dict(data: dict[str, Any], source: str) -> OfficialCheckpoint:
    """Import an already-read official checkpoint dict (with ``state_dict``) or bare state dict."""
    state = data.get("state_dict", data)
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: 'state_dict' is a {type(state).__name__}, not a dict")
    model, kind, mapped, loss_state = convert_official_state(state, source)
    load_state_dict_strict(model, mapped, source)
    epoch = data.get("epoch") if "state_dict" in data else None
    arch = data.get("arch") if "state_dict" in data else None
    return OfficialCheckpoint(
        model=model,
        kind=kind,
        loss_state=loss_state,
        epoch=epoch if isinstance(epoch, int) else None,
        arch=arch if isinstance(arch, str) else None,
    )


def load_official_checkpoint(path: str, device: str | torch.device = "cpu") -> OfficialCheckpoint:
    """Read an official CPD-Video checkpoint file; the model comes back in eval mode on ``device``."""
    data = read_torch_file(path, device)
    ckpt = official_checkpoint_from_dict(data, str(path))
    ckpt.model.to(device).eval()
    ckpt.loss_state = {k: v.to(device) for k, v in ckpt.loss_state.items()}
    return ckpt
