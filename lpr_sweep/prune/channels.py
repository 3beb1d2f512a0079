"""Structured channel surgery on LPRNet after L1 pruning: remove, pad, and reorder channels.

``structured=true`` rebuilds LPRNet without the channels pruning killed, as a smaller dense
model with the same outputs (``remove_dead_channels``). A conv output channel whose remaining
weights are all zero emits a constant (its bias through BatchNorm and ReLU). Such a channel is
removed after its constant is folded into each consumer: into an unpadded conv's bias, or (for the
global context) into the norm's sum of squares and a logit term divided by that norm. A channel
that every consumer ignores (all-zero input weights) is removed with nothing to fold. A constant
channel that feeds a padded conv is kept unless it is zero: the padding would make it non-constant
at the borders.

``round_to`` then pads each conv of the rebuilt model back up to a multiple of that many channels
with all-zero channels (``align_channels``): the same logits, in shapes that CPU kernels block
well (faster on ONNX Runtime; neutral on OpenVINO on AVX-512). ``pool_round_to`` pads what each
channel-selecting max-pool passes on apart from that: OpenVINO's int8 max-pool on AVX2 runs about
ten times slower off multiples of 32 channels (docs/optimizations.md, "Channel alignment"). ``slice_pools``
reorders each pool's producer so that the pool reads a prefix instead of gathering (``slice_pools``;
docs/optimizations.md, "Pools that slice").
"""
from __future__ import annotations

import collections

import torch
from torch import nn

from lpr_sweep import ConfigError
from lpr_sweep.model import INPUT_HW, LPRNet
from lpr_sweep.prune import PruneConfig


def reshape(model: LPRNet, cfg: PruneConfig) -> dict[str, int]:
    """What the export sees, after the finetune: ``round_to`` / ``pool_round_to`` padding, then
    ``slice_pools`` and ``split_producers``, as ``cfg`` asks; return {conv: zero channels added}."""
    padded = align_channels(model, cfg.round_to, cfg.pools_to) if cfg.round_to > 1 or cfg.pools_to > 1 else {}
    sliced = slice_pools(model, cfg.round_to) if cfg.slice_pools or cfg.split_producers else {}
    if cfg.split_producers:
        split_producers(model)
    return dict(collections.Counter(padded) + collections.Counter(sliced))


# LPRNet's channel flow: each producer conv (with its BatchNorm, if any, then a ReLU) and what reads
# its output: a conv directly, a conv through a channel-selecting pool, or global context ``i``.
_FLOW = [
    ("backbone.0", "backbone.1", [("context", None, 0), ("pool", "backbone.3", "backbone.4.block.0")]),
    *[
        edge
        for block, bn, consumers in [
            ("backbone.4", "backbone.5", [("context", None, 1), ("pool", "backbone.7", "backbone.8.block.0")]),
            ("backbone.8", "backbone.9", [("conv", None, "backbone.11.block.0")]),
            ("backbone.11", "backbone.12", [("context", None, 2), ("pool", "backbone.14", "backbone.16")]),
        ]
        for edge in [
            (f"{block}.block.0", None, [("conv", None, f"{block}.block.2")]),
            (f"{block}.block.2", None, [("conv", None, f"{block}.block.4")]),
            (f"{block}.block.4", None, [("conv", None, f"{block}.block.6")]),
            (f"{block}.block.6", bn, consumers),
        ]
    ],
    ("backbone.16", "backbone.17", [("conv", None, "backbone.20")]),
    ("backbone.20", "backbone.21", [("context", None, 3)]),
]


def _check_structure(model: nn.Module, option: str = "prune.structured") -> None:
    if not isinstance(model, LPRNet):
        raise ConfigError(f"{option} knows LPRNet only, not {type(model).__name__}; use {option}=false")
    modules = dict(model.named_modules())
    for conv, bn, consumers in _FLOW:
        names = [conv, bn, *(c[1] for c in consumers if c[0] == "pool"), *(c[2] for c in consumers if c[0] != "context")]
        for name in filter(None, names):
            if name not in modules:
                raise ConfigError(f"{option}: the model has no {name}, so its layout is not LPRNet's; use {option}=false")
    if [type(m) for m in model.container] != [nn.Conv2d]:
        raise ConfigError(f"{option}: the container is not a single conv as in LPRNet; use {option}=false")


def _padded(conv: nn.Conv2d) -> bool:
    return any(p != 0 for p in conv.padding) if not isinstance(conv.padding, str) else conv.padding != "valid"


def _bn_affine(bn: nn.BatchNorm2d | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval as y = scale * x + shift (identity when there is none)."""
    if bn is None:
        return torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bn.bias.double() - bn.running_mean.double() * scale


@torch.no_grad()
def remove_dead_channels(model: LPRNet) -> dict[str, tuple[int, int]]:
    """Rebuild ``model`` in place without dead channels; return {conv: (channels before, after)}."""
    _check_structure(model)
    modules = dict(model.named_modules())
    conv = {name: m for name, m in modules.items() if isinstance(m, nn.Conv2d)}
    bias = {name: m.bias.double().clone() for name, m in conv.items()}
    keep_in = {name: list(range(m.in_channels)) for name, m in conv.items()}
    keep_out: dict[str, list[int]] = {}
    selected: dict[str, list[int]] = {}  # pool -> producer channels (original indices) it passes on
    spatial = _context_positions(model)
    ctx_channels = [[], [], [], []]  # kept producer channels per context, in order
    n_ctx = len(model.folded_squares) if model.folded_squares is not None else 4
    squares = model.folded_squares.double().clone() if model.folded_squares is not None else torch.zeros(n_ctx, dtype=torch.float64)
    count = model.folded_count.double().clone() if model.folded_count is not None else torch.zeros(n_ctx, dtype=torch.float64)
    container = model.container[0]
    logits = (model.folded_logits.double().clone() if model.folded_logits is not None
              else torch.zeros(n_ctx, container.out_channels, dtype=torch.float64))
    offsets = _context_offsets(model)
    report = {}

    for name, bn_name, consumers in _FLOW:
        m = conv[name]
        weight = m.weight.double()[:, keep_in[name]]
        dead = weight.flatten(1).abs().sum(1) == 0
        scale, shift = _bn_affine(modules.get(bn_name) if bn_name else None, m.out_channels)
        value = torch.relu(scale * bias[name] + shift)  # what a dead channel emits after BN and ReLU
        removable = torch.ones(m.out_channels, dtype=torch.bool)
        for kind, pool, reader in consumers:
            if kind == "context":
                removable &= dead
                continue
            w = conv[reader].weight.double()
            if kind == "conv":  # reads every channel, in order
                ignored = w.flatten(2).abs().sum((0, 2)) == 0
                foldable = dead & (~torch.tensor(_padded(conv[reader])) | (value == 0))
                removable &= ignored | foldable
                continue
            stride = modules[pool].channel_stride
            passed = list(range(0, m.out_channels, stride)) if modules[pool].channels is None else modules[pool].channels.tolist()
            reads = torch.zeros(m.out_channels, dtype=torch.bool)
            keep = []
            for j, k in enumerate(passed):
                if j not in keep_in[reader]:
                    continue
                if dead[k] or w[:, j].abs().sum() == 0:  # the reader is unpadded: constants fold exactly
                    bias[reader] += value[k] * w[:, j].sum((1, 2))
                    keep_in[reader].remove(j)
                else:
                    reads[k] = True
                    keep.append(k)
            removable &= ~reads
            selected[pool] = keep
        kept = [k for k in range(m.out_channels) if not removable[k]]
        if not kept:
            raise ConfigError(f"prune.structured: pruning killed every output channel of {name}; lower prune.ratio")
        keep_out[name] = kept
        report[name] = (m.out_channels, len(kept))
        for kind, _, reader in consumers:
            if kind == "conv":
                w = conv[reader].weight.double()
                for k in range(m.out_channels):
                    if removable[k]:
                        bias[reader] += value[k] * w[:, k].sum((1, 2))
                keep_in[reader] = kept
            elif kind == "context":
                i = reader
                gone = [k for k in range(m.out_channels) if removable[k]]
                if count[i] == 0:
                    count[i] = m.out_channels * spatial
                squares[i] += spatial * sum(float(value[k]) ** 2 for k in gone)
                for k in gone:
                    logits[i] += value[k] * container.weight.double()[:, offsets[i] + k, 0, 0]
                ctx_channels[i] = [offsets[i] + k for k in kept]

    for name, m in conv.items():
        if m is container:
            continue
        _replace(model, name, _shrunk_conv(m, keep_out[name], keep_in[name], bias[name]))
    for name, bn_name, _ in _FLOW:
        if bn_name:
            _replace(model, bn_name, _shrunk_bn(modules[bn_name], keep_out[name]))
    for name, _, consumers in _FLOW:
        position = {k: i for i, k in enumerate(keep_out[name])}
        for kind, pool, _ in consumers:
            if kind == "pool":
                modules[pool].channels = torch.tensor([position[k] for k in selected[pool]], dtype=torch.long)
    container_in = [c for ctx in ctx_channels for c in ctx]
    _replace(model, "container.0", _shrunk_conv(container, list(range(container.out_channels)), container_in, container.bias.double()))
    model.folded_squares, model.folded_count, model.folded_logits = squares.float(), count.float(), logits.float()
    return report


@torch.no_grad()
def align_channels(model: LPRNet, multiple: int, pool_multiple: int = 0) -> dict[str, int]:
    """Pad a rebuilt ``model`` in place so that every conv's output channels are multiples of
    ``multiple``, and the channels each channel-selecting pool passes on multiples of ``pool_multiple``
    (default: ``multiple``); return {conv: zero channels added}.

    A padded channel has zero weights, zero bias and an identity BatchNorm, so it emits exactly 0: its
    readers get zero weight columns for it, and the global context's norm (a sum of squares over a
    fixed count once ``remove_dead_channels`` has run) does not change. A pool pads its selection with
    padded channels, or with channel 0 read through zero weights when the producer has none.
    """
    if model.folded_count is None:
        raise ValueError("align_channels pads a model rebuilt by remove_dead_channels; run that first")
    modules = dict(model.named_modules())
    added, context = {}, {}
    for name, bn_name, consumers in _FLOW:
        conv = modules[name]
        width, extra = conv.out_channels, -conv.out_channels % multiple
        added[name] = extra
        _pad_conv(conv, out=extra)
        if bn_name:
            _pad_bn(modules[bn_name], extra)
        for kind, pool, reader in consumers:
            if kind == "conv":
                _pad_conv(modules[reader], inp=extra)
            elif kind == "pool":
                selected = modules[pool].channels
                fill = -len(selected) % (pool_multiple or multiple)
                spare = list(range(width, width + extra))[:fill]
                modules[pool].channels = torch.cat([selected, torch.tensor(spare + [0] * (fill - len(spare)), dtype=torch.long)])
                _pad_conv(modules[reader], inp=fill)
            else:
                context[reader] = (width, extra)
    container = model.container[0]
    columns, start = [], 0
    for i in sorted(context):  # the container reads the contexts concatenated in order
        width, extra = context[i]
        columns += [container.weight[:, start : start + width], container.weight.new_zeros(container.out_channels, extra, 1, 1)]
        start += width
    _pad_conv(container, weight=torch.cat(columns, dim=1))
    return added


@torch.no_grad()
def slice_pools(model: LPRNet, multiple: int = 1) -> dict[str, int]:
    """Reorder each pool's producer in place so that the channels the pool passes on come first, in
    the pool's order, and let the pool keep that prefix; return {conv: zero channels added}. A
    producer that grows is padded on to a multiple of ``multiple``. On a model not rebuilt (the
    pools take every second or fourth channel) only the order changes.

    A Gather over channels makes OpenVINO and ONNX Runtime convert the tensor to a plain layout and
    back around it; a prefix is a Split, which they run in place (docs/optimizations.md, "Pools that slice"). A
    channel that a pool passes on again (padding, read through zero weights) is replaced by one the
    pool skips, or by a new zero channel once none is left. The logits stay the same: the readers'
    weights follow the order, and the global context's norm divides by a fixed count once
    ``remove_dead_channels`` has run.
    """
    _check_structure(model, "prune.slice_pools")
    modules = dict(model.named_modules())
    container = model.container[0]
    offsets = _context_offsets(model)
    contexts = [container.weight[:, a:b] for a, b in zip(offsets, offsets[1:] + [container.in_channels])]
    added = {}
    for name, bn_name, consumers in _FLOW:
        pools = [modules[pool] for kind, pool, _ in consumers if kind == "pool"]
        if not pools:
            continue
        conv, (pool,) = modules[name], pools
        passed = pool.channels.tolist() if pool.channels is not None else list(range(0, conv.out_channels, pool.channel_stride))
        spare = [c for c in range(conv.out_channels) if c not in passed]
        seen, order, extra = set(), [], 0
        for c in passed:  # a repeat is read through zero weights: any channel the pool skips can stand in
            if c in seen:
                c = spare.pop(0) if spare else conv.out_channels + extra
                extra += c >= conv.out_channels
            order.append(c)
            seen.add(c)
        extra += -(conv.out_channels + extra) % multiple if extra else 0
        if extra and model.folded_count is None:  # new channels would change the context's mean square
            raise ValueError("slice_pools adds channels only to a model rebuilt by remove_dead_channels; run that first")
        perm = order + [c for c in range(conv.out_channels + extra) if c not in order]
        _pad_conv(conv, out=extra)
        conv.weight, conv.bias = nn.Parameter(conv.weight[perm]), nn.Parameter(conv.bias[perm])
        if bn_name:
            bn = modules[bn_name]
            _pad_bn(bn, extra)
            for key in ("weight", "bias", "running_mean", "running_var"):
                value = getattr(bn, key)[perm]
                setattr(bn, key, nn.Parameter(value) if key in ("weight", "bias") else value)
        for kind, _, reader in consumers:
            if kind == "conv":
                _pad_conv(modules[reader], inp=extra)
                modules[reader].weight = nn.Parameter(modules[reader].weight[:, perm])
            elif kind == "context":
                columns = torch.cat([contexts[reader], contexts[reader].new_zeros(container.out_channels, extra, 1, 1)], dim=1)
                contexts[reader] = columns[:, perm]
        pool.channels, pool.first = None, len(order)
        added[name] = extra
    _pad_conv(container, weight=torch.cat(contexts, dim=1))
    return added


class SplitProducer(nn.Module):
    """A pool's producer (conv, BatchNorm, ReLU) as two: the channels the pool passes on, and the
    rest, which only the global context reads. Returns both; LPRNet pools the context per part."""

    def __init__(self, head: nn.Module, conv: nn.Conv2d, bn: nn.BatchNorm2d, first: int):
        super().__init__()
        self.head = head
        self.parts = nn.ModuleList(
            nn.Sequential(_shrunk_conv(conv, part, list(range(conv.in_channels)), conv.bias), _shrunk_bn(bn, part), nn.ReLU())
            for part in (list(range(first)), list(range(first, conv.out_channels)))
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(x)
        return self.parts[0](h), self.parts[1](h)


# Each channel-selecting pool's producer in LPRNet's backbone: (index of the conv or block, its
# last conv's name, the pool's index); BatchNorm and ReLU follow at the next two indices.
_PRODUCERS = [(0, "backbone.0", 3), (4, "backbone.4.block.6", 7), (11, "backbone.11.block.6", 14)]


@torch.no_grad()
def split_producers(model: LPRNet) -> list[str]:
    """After ``slice_pools``: compute each pool's prefix in a conv of its own, so that no Slice,
    Split or Gather selects channels in the exported graph (OpenVINO runs those in reference
    kernels: docs/optimizations.md, "Producers that split"). The logits stay the same (to float
    rounding: the context's norm sums the same squares in another order). Returns the producers split."""
    _check_structure(model, "prune.split_producers")
    modules = dict(model.named_modules())
    done = []
    for index, conv_name, pool_index in _PRODUCERS:
        conv, pool = modules[conv_name], model.backbone[pool_index]
        if not pool.first or pool.first >= conv.out_channels:  # the pool passes on every channel: nothing to select
            continue
        head = nn.Identity() if index == 0 else model.backbone[index].block[:6]
        model.backbone[index] = SplitProducer(head, conv, model.backbone[index + 1], pool.first).eval()
        model.backbone[index + 1], model.backbone[index + 2] = nn.Identity(), nn.Identity()
        done.append(conv_name)
    return done


def _pad_conv(conv: nn.Conv2d, out: int = 0, inp: int = 0, weight: torch.Tensor | None = None) -> None:
    w = conv.weight if weight is None else weight
    w = torch.cat([w, w.new_zeros(out, *w.shape[1:])])
    w = torch.cat([w, w.new_zeros(w.shape[0], inp, *w.shape[2:])], dim=1)
    conv.weight = nn.Parameter(w)
    conv.bias = nn.Parameter(torch.cat([conv.bias, conv.bias.new_zeros(out)]))
    conv.out_channels, conv.in_channels = w.shape[0], w.shape[1]


def _pad_bn(bn: nn.BatchNorm2d, extra: int) -> None:
    for key, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        value = torch.cat([getattr(bn, key), getattr(bn, key).new_full((extra,), fill)])
        setattr(bn, key, nn.Parameter(value) if key in ("weight", "bias") else value)
    bn.num_features += extra


def _context_positions(model: LPRNet) -> int:
    """H x W of the global context (every branch is pooled to the same size)."""
    sizes = []
    hook = model.container.register_forward_hook(lambda mod, args, out: sizes.append(args[0].shape[2] * args[0].shape[3]))
    try:
        model(torch.zeros(1, 3, *INPUT_HW))
    finally:
        hook.remove()
    return sizes[0]


def _context_offsets(model: LPRNet) -> list[int]:
    widths = [dict(model.named_modules())[name].out_channels for name in ("backbone.0", "backbone.4.block.6", "backbone.11.block.6", "backbone.20")]
    return [sum(widths[:i]) for i in range(4)]


def _shrunk_conv(m: nn.Conv2d, outs: list[int], ins: list[int], bias: torch.Tensor) -> nn.Conv2d:
    new = nn.Conv2d(len(ins), len(outs), m.kernel_size, m.stride, m.padding, m.dilation)
    new.weight.copy_(m.weight[outs][:, ins])
    new.bias.copy_(bias[outs].float())
    return new


def _shrunk_bn(bn: nn.BatchNorm2d, keep: list[int]) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), eps=bn.eps, momentum=bn.momentum)
    for key in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, key).copy_(getattr(bn, key)[keep])
    return new.eval()


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
