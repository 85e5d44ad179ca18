"""The "slow-only" 3D ResNet that CPD uses as its video encoder (depths 10/18/34/50/101).

Layout (see ``shared/reference/CPD.md``): a (1,7,7) stem with spatial stride 2 and a (1,3,3)
max-pool, then four stages of 64/128/256/512 planes (times ``base_width / 64``). Only layer3 and
layer4 have temporal kernels, and nothing ever strides in time, so the output keeps all ``T``
input frames. The global average pool adapts to any ``T x H x W`` (the official pool had a kernel
fixed at construction).

Parameter and buffer names equal the official ones (``conv1``, ``bn1``, ``layerN.i.convK``,
``layerN.i.bnK``, ``layerN.0.downsample.{0,1}`` for shortcut "B", ``fc``), so a released
state dict loads one to one. The interface follows timm: ``forward_features`` (pooled
``[B, num_features]``), ``forward_head``, ``num_features``, ``reset_classifier``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

ShortcutType = Literal["A", "B"]

__all__ = [
    "ARCHS",
    "BasicBlock",
    "Bottleneck",
    "ResNet3d",
    "arch_from_layers",
    "create_resnet3d",
    "resnet3d_10",
    "resnet3d_18",
    "resnet3d_34",
    "resnet3d_50",
    "resnet3d_101",
]


def _zero_pad_shortcut(
    x: torch.Tensor, out_channels: int, stride: int, grad: bool = False
) -> torch.Tensor:
    """Shortcut "A": subsample space by ``stride`` and zero-pad the missing channels.

    ``grad=False`` (the official behaviour) detaches the result, as the official
    ``downsample_basic_block`` did by rebuilding it from ``out.data``: no gradient reaches the
    block input through this shortcut, only through the residual branch. ``grad=True`` lets
    the gradient through the identity part, as in any residual network. The forward values
    are the same either way.
    """
    if not grad:
        x = x.detach()
    if stride != 1:
        x = x[:, :, :, ::stride, ::stride]
    missing = out_channels - x.shape[1]
    if missing > 0:
        # F.pad pads from the last dim backwards: (W, W, H, H, T, T, C_before, C_after).
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, missing))
    return x


class _Shortcut(nn.Module):
    """Parameter-free shortcut "A" as a module (so it shows up in ``print(model)``).

    ``grad``: whether the gradient flows through it (False: detached, as the official code).
    """

    def __init__(self, out_channels: int, stride: int, grad: bool = False) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride
        self.grad = grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _zero_pad_shortcut(x, self.out_channels, self.stride, self.grad)

    def extra_repr(self) -> str:
        return (
            f"out_channels={self.out_channels}, stride={self.stride}, zero_pad=True, "
            f"grad={self.grad}"
        )


def _conv(cin: int, cout: int, kernel: tuple[int, int, int], stride: int = 1) -> nn.Conv3d:
    """Bias-free Conv3d, "same" padding, spatial stride only."""
    pad = tuple(k // 2 for k in kernel)
    return nn.Conv3d(cin, cout, kernel, stride=(1, stride, stride), padding=pad, bias=False)


class BasicBlock(nn.Module):
    """Two-conv residual block (ResNet-10/18/34). ``temporal``: conv1 is (3,3,3), else (1,3,3)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        temporal: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = _conv(inplanes, planes, (3, 3, 3) if temporal else (1, 3, 3), stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv(planes, planes, (1, 3, 3))
        self.bn2 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1-3-1 bottleneck (ResNet-50/101). ``temporal``: conv1 is (3,1,1), else (1,1,1)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        temporal: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = _conv(inplanes, planes, (3, 1, 1) if temporal else (1, 1, 1))
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv(planes, planes, (1, 3, 3), stride)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = _conv(planes, planes * 4, (1, 1, 1))
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet3d(nn.Module):
    """Slow-only 3D ResNet. Input ``[B, 3, T, H, W]``; any T >= 1 and H, W >= 1 work.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in layer1..layer4.
        num_classes: size of ``fc``; 0 gives no classifier (``fc`` is ``nn.Identity``), as in
            the CPD pretraining model whose encoder has no ``fc`` keys.
        base_width: planes of the stem and layer1 (64 = official; 16/32 for tiny CPU models).
        shortcut: "A" (parameter-free zero-pad, all released models) or "B" (1x1x1 conv + BN).
        shortcut_grad: shortcut "A" only, in the blocks where the shape changes (the first block
            of each stage that strides or widens; identity shortcuts always pass the gradient):
            False (official) detaches the zero-pad shortcut, as the official code did, so the
            gradient reaches the block input only through the residual branch; True lets it
            through the identity part too. Forward values are identical; shortcut "B" (a conv)
            always passes the gradient.
        dropout: dropout probability applied to the pooled features in ``forward_head``.
        in_chans: input channels.
        temporal_stages: the stages (1..4) whose blocks have temporal kernels: (3, 4) is the
            slow-only network of CPD and every released checkpoint; (1, 2, 3, 4) gives motion
            features at full resolution (R3D-style), which a small model on small clips needs
            to learn motion from captions.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int] | list[int],
        *,
        num_classes: int = 0,
        base_width: int = 64,
        shortcut: ShortcutType = "A",
        shortcut_grad: bool = False,
        dropout: float = 0.0,
        in_chans: int = 3,
        temporal_stages: tuple[int, ...] | list[int] = (3, 4),
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        if len(layers) != 4:
            raise ValueError(f"layers must have 4 entries, got {list(layers)}")
        if not set(temporal_stages) <= {1, 2, 3, 4}:
            raise ValueError(f"temporal_stages must be among 1..4, got {list(temporal_stages)}")
        self.temporal_stages = tuple(sorted(set(temporal_stages)))
        self.block = block
        self.layers = tuple(layers)
        self.base_width = base_width
        self.shortcut = shortcut
        self.shortcut_grad = bool(shortcut_grad)
        self.dropout_rate = dropout
        self.config: Any = None  # the ModelConfig, when built by cpd.models.build_model
        self._inplanes = base_width

        self.conv1 = nn.Conv3d(
            in_chans, base_width, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False
        )
        self.bn1 = nn.BatchNorm3d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        w = base_width
        self.layer1 = self._make_layer(
            block, w, layers[0], stride=1, temporal=1 in self.temporal_stages
        )
        self.layer2 = self._make_layer(
            block, 2 * w, layers[1], stride=2, temporal=2 in self.temporal_stages
        )
        self.layer3 = self._make_layer(
            block, 4 * w, layers[2], stride=2, temporal=3 in self.temporal_stages
        )
        self.layer4 = self._make_layer(
            block, 8 * w, layers[3], stride=2, temporal=4 in self.temporal_stages
        )
        self.num_features = 8 * w * block.expansion
        self.dropout = nn.Dropout(dropout)
        self.num_classes = num_classes
        self.fc: nn.Module = (
            nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        )

        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int,
        temporal: bool,
    ) -> nn.Sequential:
        out_channels = planes * block.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self._inplanes != out_channels:
            if self.shortcut == "A":
                downsample = _Shortcut(out_channels, stride, grad=self.shortcut_grad)
            else:
                downsample = nn.Sequential(
                    nn.Conv3d(
                        self._inplanes, out_channels, 1, stride=(1, stride, stride), bias=False
                    ),
                    nn.BatchNorm3d(out_channels),
                )
        modules = [block(self._inplanes, planes, stride, downsample, temporal)]
        self._inplanes = out_channels
        modules += [block(out_channels, planes, temporal=temporal) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone and global average pool: ``[B, 3, T, H, W] -> [B, num_features]``."""
        if x.dim() != 5:
            raise ValueError(f"expected a [B, C, T, H, W] video tensor, got shape {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # mean over T, H, W: adaptive to any size, and layout-agnostic (channels_last_3d).
        return x.mean(dim=(2, 3, 4))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Dropout then ``fc`` (identity when ``num_classes == 0``)."""
        features = self.dropout(features)
        return features if pre_logits else self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` (or dropped-out features when there is no classifier)."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final ``fc`` layer (``nn.Identity`` without classifier)."""
        return self.fc

    def reset_classifier(self, num_classes: int, dropout: float | None = None) -> None:
        """Replace ``fc`` by a freshly initialised ``Linear(num_features, num_classes)``.

        ``num_classes == 0`` removes the classifier; ``dropout`` optionally changes the rate.
        """
        self.num_classes = num_classes
        if dropout is not None:
            self.dropout_rate = dropout
            self.dropout = nn.Dropout(dropout)
        device = next(self.parameters()).device
        self.fc = (
            nn.Linear(self.num_features, num_classes, device=device)
            if num_classes
            else nn.Identity()
        )


_DEPTHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    10: (BasicBlock, (1, 1, 1, 1)),
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def _factory(depth: int) -> Callable[..., ResNet3d]:
    block, layers = _DEPTHS[depth]

    def build(**kwargs: object) -> ResNet3d:
        return ResNet3d(block, layers, **kwargs)  # type: ignore[arg-type]

    build.__name__ = f"resnet3d_{depth}"
    build.__doc__ = f"Slow-only 3D ResNet-{depth}; keyword arguments as for :class:`ResNet3d`."
    return build


resnet3d_10 = _factory(10)
resnet3d_18 = _factory(18)
resnet3d_34 = _factory(34)
resnet3d_50 = _factory(50)
resnet3d_101 = _factory(101)

#: Registry of architecture names ("r3d10", ..., "r3d101") to constructors.
ARCHS: dict[str, Callable[..., ResNet3d]] = {
    "r3d10": resnet3d_10,
    "r3d18": resnet3d_18,
    "r3d34": resnet3d_34,
    "r3d50": resnet3d_50,
    "r3d101": resnet3d_101,
}


def create_resnet3d(arch: str, **kwargs: object) -> ResNet3d:
    """Build a registered 3D ResNet by name, e.g. ``create_resnet3d("r3d50", num_classes=101)``."""
    try:
        factory = ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown video arch {arch!r}; choose one of {sorted(ARCHS)}") from None
    return factory(**kwargs)


def arch_from_layers(block: type[nn.Module], layers: tuple[int, ...]) -> str | None:
    """The registry name of a (block type, blocks per stage) pair, or None if not registered."""
    for depth, (b, ls) in _DEPTHS.items():
        if b is block and tuple(layers) == ls:
            return f"r3d{depth}"
    return None
