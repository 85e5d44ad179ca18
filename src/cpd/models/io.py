"""Saving and loading models: this project's exports and training checkpoints, official ones.

Formats that :func:`load_model` reads (detected from the path and the keys):

1. **Export** (written by :func:`save_model`): a directory holding ``config.json``,
   ``model.safetensors`` and, for the CPD model, ``tokenizer/`` — self-contained, so loading
   needs neither the original text-encoder directory nor a network. ``path`` may be the
   directory or the ``.safetensors`` file (with ``config.json`` beside it). ``config.json`` is
   ``{"format": "cpd-model", "format_version": 1, "model": <ModelConfig as dict>,
   "text_config": <Hugging Face config dict of the text encoder, or null>,
   "preprocessing": <Preprocessing as dict, or null>}``. ``preprocessing`` (see
   :class:`Preprocessing`) is the clip geometry and normalisation the model was trained with;
   the evaluation commands take their defaults from it. Exports written before it existed
   have no such key and load as before (``model.preprocessing`` is then None).
2. **Training checkpoint** (``.pt``/``.pth``, written with ``torch.save``; plain types only so
   ``weights_only=True`` can read it)::

       {"model": model.state_dict(),          # CPDModel or ResNet3d; a "module." prefix is allowed
        "config": {"model": ModelConfig.to_dict(), ...other sections...},
        ...anything else (optimizer, epoch, loss state, ...) is ignored here}

   The text encoder is rebuilt from ``config["model"]["text_encoder"]`` (architecture only, the
   weights come from the checkpoint), so that name or directory must resolve offline.
   The preprocessing comes from the run's config in the checkpoint (``config["data"]`` of a
   pretraining checkpoint, ``finetune["data"]`` / ``finetune["test"]`` of a finetuning one).
3. **Official CPD-Video** pretraining or finetuning checkpoints (see ``cpd.models.official``).

:func:`load_model` sets ``model.preprocessing`` (a :class:`Preprocessing` or None, official
checkpoints: None); :func:`save_model` writes it back, so ``cpd export`` of a training
checkpoint keeps it.

Every load is strict: missing keys, unexpected keys and shape mismatches raise
:class:`cpd.errors.CheckpointError` listing them, and an unreadable file raises one naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from cpd.errors import CheckpointError, CPDError
from cpd.models.cpd import CPDModel, ModelConfig, build_model
from cpd.models.official import official_checkpoint_from_dict
from cpd.models.resnet3d import ResNet3d
from cpd.models.state_dict import load_state_dict_strict, read_torch_file, strip_prefix
from cpd.models.text import TextEncoder, build_hf_text_model

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "Preprocessing",
    "load_cpd_model",
    "load_model",
    "model_from_training_checkpoint",
    "save_model",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
_FORMAT = "cpd-model"

T = TypeVar("T")


@dataclass(frozen=True)
class Preprocessing:
    """How a model's clips were cut and normalised in training, and the test geometry.

    Attributes:
        num_frames: frames per clip.
        stride: frame step at ``fps`` (the window covers ``num_frames * stride`` frames there).
        fps: the rate the windows are laid out at (:data:`cpd.video.sampling.TARGET_FPS`).
        crop_size: the training crop.
        test_size: the test views' short side and crop (a finetune's ``test.crop_size``; the
            training crop when the run had no other, as in pretraining).
        mean / std: per-channel normalisation of [0, 1] RGB values.
    """

    num_frames: int
    stride: int
    crop_size: int
    test_size: int
    fps: float = 30.0
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)

    def __post_init__(self) -> None:
        for name in ("num_frames", "stride", "crop_size", "test_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"preprocessing {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"preprocessing fps must be a positive number, got {self.fps!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
                raise ValueError(f"preprocessing {name} must be 3 numbers, got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if min(self.std) <= 0:
            raise ValueError(f"preprocessing std must be positive, got {self.std!r}")
        object.__setattr__(self, "fps", float(self.fps))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"num_frames", "stride", "fps", "crop_size", "test_size", "mean",
        "std"}`` (mean / std as lists)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """The inverse of :meth:`to_dict`; ``test_size`` defaults to ``crop_size``, fps / mean /
        std to cpd's constants. Raises ``ValueError`` for unknown keys or bad values."""
        known = {"num_frames", "stride", "fps", "crop_size", "test_size", "mean", "std"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {', '.join(unknown)}")
        kw = dict(data)
        kw.setdefault("test_size", kw.get("crop_size"))
        try:
            return cls(**kw)
        except TypeError as exc:
            raise ValueError(f"bad preprocessing {dict(data)}: {exc}") from exc

    @classmethod
    def from_training_config(cls, cfg: Any) -> Preprocessing:
        """From a run's config: a :class:`~cpd.train.config.PretrainConfig` or
        :class:`~cpd.train.finetune_config.FinetuneConfig` (objects or their dicts): its
        ``data`` section's ``num_frames`` / ``stride`` / ``crop_size`` and, for a finetune, the
        test crop ``test.crop_size`` (null: the training crop). fps, mean and std are the
        constants every cpd loader uses."""
        from cpd.video.sampling import TARGET_FPS
        from cpd.video.transforms import MEAN, STD

        def get(obj: Any, key: str) -> Any:
            return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)

        data, test = get(cfg, "data"), get(cfg, "test")
        if data is None:
            raise ValueError("the training config has no data section")
        crop = get(data, "crop_size")
        test_size = get(test, "crop_size") if test is not None else None
        return cls(num_frames=get(data, "num_frames"), stride=get(data, "stride"), crop_size=crop,
                   test_size=test_size or crop, fps=TARGET_FPS, mean=MEAN, std=STD)  # fmt: skip


def _preprocessing_of_checkpoint(data: dict[str, Any]) -> Preprocessing | None:
    """A training checkpoint's preprocessing: ``finetune`` (a finetuning run's config) or
    ``config`` (a pretraining run's, with ``data``); None when neither holds one."""
    for key in ("finetune", "config"):
        cfg = data.get(key)
        if isinstance(cfg, dict) and isinstance(cfg.get("data"), dict):
            try:
                return Preprocessing.from_training_config(cfg)
            except ValueError:
                return None
    return None


def _config_of(model: nn.Module) -> ModelConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError("model has no ModelConfig in .config; build it with build_model()")
    return config


def save_model(
    model: CPDModel | ResNet3d,
    directory: str | Path,
    *,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    training_config: Any = None,
) -> Path:
    """Export ``model`` to ``directory`` (config.json, model.safetensors, tokenizer/).

    config.json's ``preprocessing`` is ``preprocessing``, else the one of ``training_config``
    (the run's config: :meth:`Preprocessing.from_training_config`), else the model's own
    ``model.preprocessing`` (set by :func:`load_model`), else null.
    """
    from safetensors.torch import save_file

    config = _config_of(model)
    if preprocessing is None and training_config is not None:
        preprocessing = Preprocessing.from_training_config(training_config)
    if preprocessing is None:
        preprocessing = getattr(model, "preprocessing", None)
    if isinstance(preprocessing, Mapping):
        preprocessing = Preprocessing.from_dict(preprocessing)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    text_config = None
    if isinstance(model, CPDModel):
        text_config = model.textual_encoder.model.config.to_dict()
        model.textual_encoder.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    meta = {
        "format": _FORMAT,
        "format_version": 1,
        "model": config.to_dict(),
        "text_config": text_config,
        "preprocessing": preprocessing.to_dict() if preprocessing is not None else None,
    }
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    # clone: safetensors refuses tensors that share storage (e.g. tied embeddings)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": _FORMAT})
    return out


def _section(data: Any, parse: Callable[[dict[str, Any]], T], source: str, what: str) -> T:
    """``parse(data)`` of a file's section, any fault a CheckpointError naming ``source``."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: {what} is a {type(data).__name__}, not a dict")
    try:
        return parse(data)
    except (CPDError, ValueError) as exc:
        raise CheckpointError(f"{source}: bad {what}: {exc}") from exc


def _model_config(data: Any, source: str) -> ModelConfig:
    return _section(data, ModelConfig.from_dict, source, "model config")


def _load_export(weights: Path, device: str | torch.device) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    config_path = weights.parent / CONFIG_NAME
    try:
        meta = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{config_path}: missing (an export needs config.json)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: cannot read: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"{config_path}: not a cpd model config (format != {_FORMAT!r})")
    config = _model_config(meta.get("model"), str(config_path))
    try:
        state = load_file(str(weights), device=str(device))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{weights}: cannot read weights: {exc}") from exc
    text = None
    if config.num_classes <= 0:  # the two-tower model: its text tower is in the export
        text_config = meta.get("text_config")
        tok_dir = weights.parent / TOKENIZER_DIR
        if not isinstance(text_config, dict) or not tok_dir.is_dir():
            raise CheckpointError(f"{weights.parent}: export lacks text_config or tokenizer/")
        text = TextEncoder(
            build_hf_text_model(hf_config=text_config),
            AutoTokenizer.from_pretrained(str(tok_dir)),
            compat=config.text_compat,
            max_length=config.text_max_length,
        )
    model: nn.Module = build_model(config, text_encoder=text)
    load_state_dict_strict(model, state, str(weights))
    model.preprocessing = _export_preprocessing(meta, str(config_path))
    return model


def _export_preprocessing(meta: dict[str, Any], source: str) -> Preprocessing | None:
    raw = meta.get("preprocessing")
    if raw is None:  # an export written before config.json carried it
        return None
    return _section(raw, Preprocessing.from_dict, source, "preprocessing")


def model_from_training_checkpoint(data: dict[str, Any], source: str) -> nn.Module:
    """Build and strictly load the model of a training checkpoint dict (format 2 above)."""
    cfg = data.get("config")
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise CheckpointError(f"{source}: training checkpoint lacks config['model']")
    config = _model_config(cfg["model"], source)
    state = data["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: 'model' is a {type(state).__name__}, not a state dict")
    model = build_model(config, pretrained_text=False)
    load_state_dict_strict(model, strip_prefix(state), source)
    model.preprocessing = _preprocessing_of_checkpoint(data)
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load any supported model file or directory; returns it in eval mode on ``device``.

    Returns a :class:`CPDModel` for exports/checkpoints of the two-tower model and official
    pretraining checkpoints (DistilBERT in compatibility mode), a :class:`ResNet3d` for video
    classifiers (num_classes > 0, official finetuning checkpoints). ``model.preprocessing``
    is the :class:`Preprocessing` the file records, or None.
    """
    p = Path(path)
    if p.is_dir():
        model = _load_export(p / WEIGHTS_NAME, device)
    elif p.suffix == ".safetensors":
        if not p.is_file():
            raise CheckpointError(f"{p}: no such file")
        model = _load_export(p, device)
    else:
        data = read_torch_file(p, device)
        if "model" in data and "config" in data:
            model = model_from_training_checkpoint(data, str(p))
        else:
            model = official_checkpoint_from_dict(data, str(p)).model
            model.preprocessing = None  # the official checkpoints do not record it
    return model.to(device).eval()


def load_cpd_model(path: str | Path, device: str | torch.device = "cpu") -> CPDModel:
    """:func:`load_model`, insisting on the two-tower CPD model (zero-shot, retrieval and
    caption embeddings need its text tower).

    Raises:
        CheckpointError: the file is unreadable, or holds a video classifier.
    """
    model = load_model(path, device)
    if not isinstance(model, CPDModel):
        raise CheckpointError(f"{path}: a video classifier without text tower; zero-shot and "
                              "retrieval need a CPD model (test classifiers with cpd test)")  # fmt: skip
    return model
