"""An independent re-computation of the official CPD forward pass, for equivalence tests.

Written from ``shared/reference/CPD.md`` only, without using ``cpd.models``: a functional
slow-only 3D ResNet over a raw state dict (``F.conv3d`` / ``F.batch_norm`` in eval mode, shortcut
"A" as stride-subsample + zero channel padding), and the official text path (``encode`` with
[CLS]/[SEP], first 64 tokens, zero padding, DistilBERT called without attention mask, mean over
non-padding tokens, text head, L2 norm). Also builds random official-format checkpoints from the
key schemas in ``tests/data`` (copied from ``shared/reference``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

# the key schemas of the released checkpoints (copies of ../shared/reference/*.json, kept in the
# repository so that the tests need nothing beside it)
SCHEMA_DIR = Path(__file__).resolve().parent / "data"
PRETRAIN_SCHEMA = SCHEMA_DIR / "official_cpd_r50_checkpoint_keys.json"
FINETUNE_SCHEMA = SCHEMA_DIR / "official_cpd_r50_finetune_keys.json"
BANK_KEYS = ("module.vis_memory", "module.text_memory")


def load_schema(path: Path) -> dict[str, tuple[list[int], str]]:
    """``{key: (shape, dtype)}`` of an official checkpoint's state dict."""
    data = json.loads(path.read_text())
    return {k: (list(v[0]), v[1]) for k, v in data["state_dict"].items()}


_POOL = (1 << 18) + 7  # odd period, so tiled values do not line up with rows


def _randn(shape: list[int], generator: torch.Generator) -> torch.Tensor:
    """Standard normal values; big tensors tile a smaller random pool (drawing ~90M values
    would dominate the test's run time, and the equivalence does not need them independent)."""
    n = math.prod(shape)
    if n <= _POOL:
        return torch.randn(shape, generator=generator)
    pool = torch.randn(_POOL, generator=generator)
    return pool.repeat(n // _POOL + 1)[:n].reshape(shape)


def random_state(
    schema: dict[str, tuple[list[int], str]], generator: torch.Generator, bank_size: int = 8
) -> dict[str, torch.Tensor]:
    """Random weights of the right shapes, scaled so activations stay O(1) through 50 layers."""
    state: dict[str, torch.Tensor] = {}
    for key, (shape, dtype) in schema.items():
        if key in BANK_KEYS:
            shape = [bank_size, *shape[1:]]
        if dtype == "int64":
            state[key] = torch.tensor(7, dtype=torch.int64).reshape(shape)
            continue
        name = key.rsplit(".", 1)[-1]
        if key.endswith(("Z_v", "Z_t")):
            t = torch.rand(shape, generator=generator) * 100 + 1
        elif name == "running_var":
            t = torch.rand(shape, generator=generator) + 0.5
        elif name in ("running_mean", "bias"):
            t = _randn(shape, generator) * 0.1
        elif len(shape) == 1:  # BN / LayerNorm weights
            t = 1 + 0.1 * _randn(shape, generator)
        else:
            fan_in = math.prod(shape[1:])
            t = _randn(shape, generator) * math.sqrt(1.0 / fan_in)
        state[key] = t.contiguous()
    return state


def official_checkpoint(state: dict[str, torch.Tensor], arch: str = "resnet50") -> dict:
    """The dict the official code saves (keys already carry ``module.``)."""
    return {"epoch": 300, "arch": arch, "state_dict": state, "optimizer": {"state": {}}}


def _bn(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[name + ".running_mean"],
        sd[name + ".running_var"],
        sd[name + ".weight"],
        sd[name + ".bias"],
        training=False,
        eps=1e-5,
    )


def reference_resnet50_features(sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor):
    """Pooled features of the official slow-only Bottleneck ResNet (shortcut A), eval mode."""
    w = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    x = F.conv3d(x, w["conv1.weight"], stride=(1, 2, 2), padding=(0, 3, 3))
    x = F.relu(_bn(x, w, "bn1"))
    x = F.max_pool3d(x, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
    for stage in range(1, 5):
        temporal_pad = (1, 0, 0) if stage >= 3 else (0, 0, 0)
        nblocks = 1 + max(int(k.split(".")[1]) for k in w if k.startswith(f"layer{stage}."))
        for b in range(nblocks):
            n = f"layer{stage}.{b}"
            stride = 2 if (stage > 1 and b == 0) else 1
            out = F.relu(
                _bn(F.conv3d(x, w[n + ".conv1.weight"], padding=temporal_pad), w, n + ".bn1")
            )
            out = F.conv3d(
                out, w[n + ".conv2.weight"], stride=(1, stride, stride), padding=(0, 1, 1)
            )
            out = F.relu(_bn(out, w, n + ".bn2"))
            out = _bn(F.conv3d(out, w[n + ".conv3.weight"]), w, n + ".bn3")
            residual = x
            if b == 0:  # shortcut A: 1x1x1 average pool with stride, then zero channels
                residual = F.avg_pool3d(x, kernel_size=1, stride=(1, stride, stride))
                zeros = residual.new_zeros(
                    residual.shape[0], out.shape[1] - residual.shape[1], *residual.shape[2:]
                )
                residual = torch.cat([residual, zeros], dim=1)
            x = F.relu(out + residual)
    return F.avg_pool3d(x, kernel_size=x.shape[2:]).flatten(1)


def reference_video_embedding(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Official ``vis_emb(visual_encoder(x))`` then L2 norm, from a ``module.``-prefixed dict."""
    feats = reference_resnet50_features(sd, "module.visual_encoder.", x)
    emb = F.linear(feats, sd["module.vis_emb.weight"], sd["module.vis_emb.bias"])
    return F.normalize(emb, dim=1)


def reference_logits(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Official finetuned classifier logits (dropout is off in eval mode)."""
    feats = reference_resnet50_features(sd, "module.", x)
    return F.linear(feats, sd["module.fc.weight"], sd["module.fc.bias"])


def official_token_ids(tokenizer, captions: list[str], length: int = 64) -> torch.Tensor:
    """As the official dataset: ``encode`` (with [CLS]/[SEP]), keep the first 64, zero-pad."""
    out = torch.zeros(len(captions), length, dtype=torch.long)
    for i, caption in enumerate(captions):
        ids = tokenizer.encode(caption)[:length]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def reference_text_embedding(
    sd: dict[str, torch.Tensor], tokenizer, captions: list[str]
) -> torch.Tensor:
    """Official text path: DistilBERT without attention mask, mean over ids != 0, head, norm."""
    from transformers import DistilBertConfig, DistilBertModel
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every weight is loaded (strictly) just below
        bert = DistilBertModel(DistilBertConfig())
    prefix = "module.textual_encoder."
    bert.load_state_dict({k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)})
    bert.eval()
    ids = official_token_ids(tokenizer, captions)
    with torch.no_grad():
        tokens = bert(ids)[0]
    mask = (ids != 0).float().unsqueeze(2)
    pooled = (tokens * mask).sum(1) / mask.sum(1)
    h = F.linear(pooled, sd["module.text_emb.0.weight"], sd["module.text_emb.0.bias"])
    h = F.relu(_bn(h, sd, "module.text_emb.1"))
    h = F.linear(h, sd["module.text_emb.3.weight"], sd["module.text_emb.3.bias"])
    return F.normalize(h, dim=1)
