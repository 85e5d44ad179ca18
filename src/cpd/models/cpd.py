"""The CPD model: a video tower and a text tower, each with a head into a shared L2-normalised
embedding space. No loss and no memory bank here (those live in ``cpd.losses``), so the model
can be wrapped in DistributedDataParallel without broadcasting the banks.

Attribute names match the official checkpoint keys: ``visual_encoder`` (3D ResNet without
``fc``), ``textual_encoder`` (see ``cpd.models.text``), ``vis_emb`` (``Linear(feat, 256)``) and
``text_emb`` (``Linear(h, 512) -> BatchNorm1d -> ReLU -> Linear(512, 256)``, keys ``0/1/3``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cpd.models.resnet3d import ResNet3d, create_resnet3d
from cpd.models.text import DEFAULT_TEXT_ENCODER, TextEncoder, build_text_encoder

__all__ = ["CPDModel", "ModelConfig", "build_model", "build_video_model"]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model (stored in exports and training checkpoints).

    Attributes:
        arch: video encoder, one of "r3d10", "r3d18", "r3d34", "r3d50", "r3d101".
        base_width: planes of the stem / layer1 (64 = official; 16 or 32 for tiny CPU models).
        shortcut: "A" (zero-pad, official) or "B" (1x1x1 conv + BN).
        shortcut_grad: shortcut "A" only: let the gradient through the zero-pad shortcut of the
            blocks where the shape changes (the first block of a stage that strides or widens).
            False (official): detached, as the official code (rebuilt from ``.data``), so the
            gradient reaches those blocks' input only through the residual branch; True: as in
            any residual network. Training only: forward values, hence inference and exported
            weights, are identical. Exports and checkpoints written without the key load with
            False (no effect on their outputs; training further from them goes the official way).
        temporal_stages: stages with temporal kernels ([3, 4]: slow-only, official; [1, 2, 3, 4]:
            temporal kernels at every stage).
        dropout: dropout before the video head (pretraining) or classifier (finetuning).
        text_encoder: "all-MiniLM-L6-v2" (packaged, offline), "distilbert-base-uncased" (built
            from its configuration, random until a checkpoint fills it), or a local HF directory
            / hub name.
        text_compat: reproduce the official text path (no attention mask, 64-token zero padding).
        text_max_length: tokens per caption, [CLS]/[SEP] included.
        embed_dim: joint embedding size (256).
        text_head_dim: hidden width of the text head (512 = 2 x embed_dim, official).
        num_classes: > 0 builds the bare video classifier (finetuning / linear probe) instead of
            the two-tower CPD model.
    """

    arch: str = "r3d50"
    base_width: int = 64
    shortcut: Literal["A", "B"] = "A"
    shortcut_grad: bool = False
    temporal_stages: list[int] = field(default_factory=lambda: [3, 4])
    dropout: float = 0.0
    text_encoder: str = DEFAULT_TEXT_ENCODER
    text_compat: bool = False
    text_max_length: int = 64
    embed_dim: int = 256
    text_head_dim: int = 512
    num_classes: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Checked construction from plain data (unknown keys / wrong types raise ConfigError)."""
        from cpd.config import from_dict

        return from_dict(cls, data, prefix="model.")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML-safe)."""
        from cpd.config import to_dict

        return to_dict(self)


class CPDModel(nn.Module):
    """Two towers + heads. Embeddings are L2-normalised ``[B, embed_dim]``.

    Args:
        visual_encoder: a 3D ResNet; its ``forward`` (features + dropout, no classifier) is used.
        textual_encoder: a :class:`~cpd.models.text.TextEncoder`.
        embed_dim: joint embedding size.
        text_head_dim: hidden width of the text head.
    """

    def __init__(
        self,
        visual_encoder: ResNet3d,
        textual_encoder: TextEncoder,
        *,
        embed_dim: int = 256,
        text_head_dim: int = 512,
    ) -> None:
        super().__init__()
        if visual_encoder.num_classes:
            raise ValueError("the CPD video tower must have no classifier (num_classes=0)")
        self.visual_encoder = visual_encoder
        self.textual_encoder = textual_encoder
        self.vis_emb = nn.Linear(visual_encoder.num_features, embed_dim)
        self.text_emb = nn.Sequential(
            nn.Linear(textual_encoder.hidden_size, text_head_dim),
            nn.BatchNorm1d(text_head_dim),
            nn.ReLU(inplace=True),
            nn.Linear(text_head_dim, embed_dim),
        )
        self.embed_dim = embed_dim
        self.config: ModelConfig | None = None  # set by build_model / loaders

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` normalised clips -> L2-normalised ``[B, embed_dim]``."""
        return F.normalize(self.vis_emb(self.visual_encoder(video)), dim=1)

    def tokenize(self, texts: list[str] | str) -> dict[str, torch.Tensor]:
        """Token ids + attention mask on the CPU (see :meth:`TextEncoder.tokenize`)."""
        return self.textual_encoder.tokenize(texts)

    def embed_text_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Text head only: pooled encoder features ``[B, hidden]`` -> L2-normalised embeddings.

        For training with a frozen text encoder whose pooled features are cached per caption.
        """
        return F.normalize(self.text_emb(pooled), dim=1)

    def encode_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token ids ``[B, L]`` -> L2-normalised ``[B, embed_dim]``."""
        return self.embed_text_pooled(self.textual_encoder.encode_tokens(input_ids, attention_mask))

    def encode_text(self, texts: list[str] | str) -> torch.Tensor:
        """Captions -> L2-normalised ``[B, embed_dim]`` (tokenized and moved to the model)."""
        device = self.vis_emb.weight.device
        tokens = {k: v.to(device) for k, v in self.tokenize(texts).items()}
        return self.encode_tokens(tokens["input_ids"], tokens["attention_mask"])

    def forward(
        self,
        video: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        text_pooled: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both embeddings ``(video_emb, text_emb)``: the training call (through DDP).

        The text side comes from ``text_pooled`` (cached features of a frozen encoder, head
        only) when given, else from the tokens. ``video`` may hold more rows than the text
        (temporal negatives appended after the clips).
        """
        text = (
            self.embed_text_pooled(text_pooled)
            if text_pooled is not None
            else self.encode_tokens(input_ids, attention_mask)
        )
        return self.encode_video(video), text


def build_video_model(config: ModelConfig, num_classes: int | None = None) -> ResNet3d:
    """The 3D ResNet of ``config`` (``num_classes`` overrides ``config.num_classes``)."""
    return create_resnet3d(
        config.arch,
        num_classes=config.num_classes if num_classes is None else num_classes,
        base_width=config.base_width,
        shortcut=config.shortcut,
        shortcut_grad=config.shortcut_grad,
        dropout=config.dropout,
        temporal_stages=tuple(config.temporal_stages),
    )


def build_model(
    config: ModelConfig | None = None,
    *,
    pretrained_text: bool = True,
    text_encoder: TextEncoder | None = None,
) -> CPDModel | ResNet3d:
    """Build the model described by ``config`` (default: ``ModelConfig()``).

    ``config.num_classes > 0`` gives the bare video classifier (a :class:`ResNet3d`); otherwise
    the two-tower :class:`CPDModel`. Its text tower is ``text_encoder`` when given (an export's,
    rebuilt from its own files), else built from ``config.text_encoder``;
    ``pretrained_text=False`` skips loading that one's pretrained weights (when a checkpoint
    will overwrite them anyway). The model is in train mode with a trainable text encoder; call
    ``model.textual_encoder.freeze()`` for stage I.
    """
    config = config or ModelConfig()
    if config.num_classes > 0:
        model: CPDModel | ResNet3d = build_video_model(config)
    else:
        text = text_encoder or build_text_encoder(
            config.text_encoder,
            compat=config.text_compat,
            max_length=config.text_max_length,
            pretrained=pretrained_text,
        )
        model = CPDModel(
            build_video_model(config, num_classes=0),
            text,
            embed_dim=config.embed_dim,
            text_head_dim=config.text_head_dim,
        )
    model.config = config  # type: ignore[assignment]
    return model
