"""Models: the slow-only 3D ResNet, the text encoder, the two-tower CPD model, checkpoint I/O.

The video encoder is independent of ``transformers``; the text side imports it lazily.
"""

from __future__ import annotations

from cpd.models.cpd import CPDModel, ModelConfig, build_model, build_video_model
from cpd.models.io import load_cpd_model, load_model, save_model
from cpd.models.official import OfficialCheckpoint, load_official_checkpoint
from cpd.models.resnet3d import ARCHS, ResNet3d, create_resnet3d
from cpd.models.state_dict import load_state_dict_strict
from cpd.models.text import TextEncoder, build_text_encoder

__all__ = [
    "ARCHS",
    "CPDModel",
    "ModelConfig",
    "OfficialCheckpoint",
    "ResNet3d",
    "TextEncoder",
    "build_model",
    "build_text_encoder",
    "build_video_model",
    "create_resnet3d",
    "load_cpd_model",
    "load_model",
    "load_official_checkpoint",
    "load_state_dict_strict",
    "save_model",
]
