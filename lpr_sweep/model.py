"""LPRNet (Zherzdev & Gruzdev, 2018, arXiv:1806.10447) as published by sirius-ai/LPRNet_Pytorch.

Two deliberate departures from upstream, neither of which changes the state dict keys:
- Upstream pools with ``nn.MaxPool3d((1,3,3), stride=(s,1,w))`` on 4-D tensors, which PyTorch reads
  as an unbatched 3-D pool over (C,H,W): it silently subsamples channels by ``s`` and fails on large
  batches. ``ChannelStridePool`` does the same thing explicitly, exports to ONNX, and matches the
  upstream outputs bit for bit.
- Upstream divides each kept feature map by ``mean(f**2)`` over the whole batch tensor, so a plate's
  prediction depends on its batch mates. ``norm="sample"`` takes the mean per plate instead;
  ``norm="batch"`` keeps upstream behaviour for reproducing the original protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lpr_sweep import ConfigError, DataError, restore_hint

CHARS = (
    list("京沪津渝冀晋蒙辽吉黑苏浙皖闽赣鲁豫鄂湘粤桂琼川贵云藏陕甘青宁新")
    + list("0123456789")
    + list("ABCDEFGHJKLMNPQRSTUVWXYZIO")
    + ["-"]
)
BLANK = len(CHARS) - 1  # CTC blank is the last class
INPUT_HW = (24, 94)
NORMS = ("sample", "batch")

# Indices in ``backbone`` whose outputs feed the global context, and how each is pooled to 4x18.
_KEEP = (2, 6, 13, 22)
_CONTEXT_POOL = {
    0: dict(kernel_size=5, stride=5),
    1: dict(kernel_size=5, stride=5),
    2: dict(kernel_size=(4, 10), stride=(4, 2)),
}


class ChannelStridePool(nn.Module):
    """Keep every ``channel_stride``-th channel, then 3x3 max-pool with stride (1, ``w_stride``).

    Structured pruning replaces the stride by the explicit ``channels`` that survive, so that the
    channels kept are still the ones the original model used; ``prune.slice_pools`` then reorders the
    producer so that they come first, and ``first`` keeps that prefix (a Split, not a Gather, in ONNX).
    ``prune.split_producers`` goes on to compute that prefix in a conv of its own: the pool then gets
    the producer's two parts and reads the first, and the graph selects no channel at all.
    """

    def __init__(self, channel_stride: int, w_stride: int):
        super().__init__()
        self.channel_stride = channel_stride
        self.pool = nn.MaxPool2d(3, stride=(1, w_stride))
        self.register_buffer("channels", None, persistent=False)
        self.first = 0

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if isinstance(x, tuple):  # a split producer (prune.split_producers): its first part is what passes on
            return self.pool(x[0])
        if self.first:
            if self.first < x.shape[1]:  # a Split: NNCF quantizes across it, and not across a Slice
                x = x.split([self.first, x.shape[1] - self.first], dim=1)[0]
        elif self.channels is not None:
            x = x.index_select(1, self.channels)
        elif self.channel_stride > 1:
            x = x[:, :: self.channel_stride]
        return self.pool(x)


class SmallBasicBlock(nn.Module):
    def __init__(self, ch_in: int, ch_out: int):
        super().__init__()
        mid = ch_out // 4
        self.block = nn.Sequential(
            nn.Conv2d(ch_in, mid, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(mid, mid, kernel_size=(3, 1), padding=(1, 0)),
            nn.ReLU(),
            nn.Conv2d(mid, mid, kernel_size=(1, 3), padding=(0, 1)),
            nn.ReLU(),
            nn.Conv2d(mid, ch_out, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class LPRNet(nn.Module):
    def __init__(self, class_num: int = len(CHARS), dropout: float = 0.5, norm: str = "sample"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"model.norm={norm!r} is not one of {NORMS}; pick one of them")
        self.norm = norm
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=1),  # 0
            nn.BatchNorm2d(64),
            nn.ReLU(),  # 2: context
            ChannelStridePool(1, 1),
            SmallBasicBlock(64, 128),  # 4
            nn.BatchNorm2d(128),
            nn.ReLU(),  # 6: context
            ChannelStridePool(2, 2),
            SmallBasicBlock(64, 256),  # 8
            nn.BatchNorm2d(256),
            nn.ReLU(),
            SmallBasicBlock(256, 256),  # 11
            nn.BatchNorm2d(256),
            nn.ReLU(),  # 13: context
            ChannelStridePool(4, 2),
            nn.Dropout(dropout),
            nn.Conv2d(64, 256, kernel_size=(1, 4), stride=1),  # 16
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(256, class_num, kernel_size=(13, 1), stride=1),  # 20
            nn.BatchNorm2d(class_num),
            nn.ReLU(),  # 22: context
        )
        self.context_pools = nn.ModuleList(
            [nn.AvgPool2d(**_CONTEXT_POOL[i]) if i in _CONTEXT_POOL else nn.Identity() for i in range(4)]
        )
        self.container = nn.Sequential(nn.Conv2d(64 + 128 + 256 + class_num, class_num, kernel_size=1))
        # Set by structured pruning (lpr_sweep.prune) once it removes constant context channels: per
        # context, the squares those channels added to the norm's sum (per plate), the original
        # element count, and their term in the container's output (to divide by the norm).
        self.register_buffer("folded_squares", None, persistent=False)
        self.register_buffer("folded_count", None, persistent=False)
        self.register_buffer("folded_logits", None, persistent=False)

    def _norm(self, f: torch.Tensor, i: int) -> torch.Tensor:
        """The divisor of context ``i``: the mean of f**2 per plate (``sample``) or per batch."""
        if self.folded_count is None:
            return torch.mean(f * f, dim=(1, 2, 3), keepdim=True) if self.norm == "sample" else torch.mean(f * f)
        if self.norm == "sample":
            return (torch.sum(f * f, dim=(1, 2, 3), keepdim=True) + self.folded_squares[i]) / self.folded_count[i]
        n = f.shape[0]
        return (torch.sum(f * f) + n * self.folded_squares[i]) / (n * self.folded_count[i])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 24, 94) normalised BGR -> (N, classes, 18) per-column logits."""
        kept = []
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i in _KEEP:
                kept.append(x)
        context, norms = [], []
        for i, (pool, f) in enumerate(zip(self.context_pools, kept)):  # one branch at a time, as upstream:
            # the exported graph, and so the TVM tuning database key, stay the same; a split producer's parts
            # are pooled apart (the pool is per channel) and meet only in the small pooled tensor
            f = torch.cat([pool(p) for p in f], dim=1) if isinstance(f, tuple) else pool(f)
            norms.append(self._norm(f, i))
            context.append(f / norms[-1])
        x = self.container(torch.cat(context, dim=1))
        if self.folded_logits is not None:
            for i, d in enumerate(norms):
                x = x + self.folded_logits[i].view(1, -1, 1, 1) / d
        return torch.mean(x, dim=2)


def _restore(weights: Path) -> str:
    # upstream's weights sit in <data root>/weights/
    return restore_hint(weights.parent.parent if weights.parent.name == "weights" else Path("<the data root>"))


def load(weights: Path, norm: str = "sample") -> LPRNet:
    """Build LPRNet in eval mode from an upstream state dict (strict keys, tensors only)."""
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(
            f"weights not found: {weights}; point model.weights at LPRNet's .pth (or data.root / LPR_DATA_ROOT at a data "
            "root that holds it), or run `python -m lpr_sweep.download`"
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model = LPRNet(norm=norm)
        model.load_state_dict(state, strict=True)
    except Exception as e:  # torch raises several types for a file that is empty, truncated or not this model's
        reason = "empty" if weights.stat().st_size == 0 else f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        raise DataError(f"cannot load weights {weights} ({reason}); {_restore(weights)}") from None
    return model.eval()


@dataclass
class ModelConfig:
    weights: str = "weights/Final_LPRNet_model.pth"  # relative to data.root unless absolute
    norm: str = "sample"  # sample | batch, see the module docstring

    def file(self, root: Path) -> Path:
        """The weights file: ``weights`` under the data root, unless it is absolute."""
        weights = Path(self.weights)
        return weights if weights.is_absolute() else root / weights

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ConfigError(f"model.norm={self.norm!r} is not one of {NORMS}; use model.norm=sample")
