"""L1-magnitude pruning of every Conv2d weight, without fine-tuning; the ``prune`` config group.

``scope=layer`` prunes each conv by the same ratio (the original report's method); ``scope=global``
ranks all conv weights together, so layers with many small weights give up more of them.
``structured``, ``round_to``, ``pool_round_to`` and ``slice_pools`` reshape LPRNet's channels
afterwards: ``lpr_sweep.prune.channels``.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import nn
from torch.nn.utils import prune as torch_prune

from lpr_sweep import ConfigError

Scope = Enum("Scope", {"layer": "layer", "global": "global"})  # functional form: `global` is a keyword


@dataclass
class PruneConfig:
    ratio: float = 0.0  # fraction of conv weights zeroed, in [0, 1); 0 leaves the model untouched
    scope: Scope = Scope["global"]
    structured: bool = False  # rebuild the model without the channels the pruning killed
    round_to: int = 1  # structured: pad each conv's channels with zero channels to a multiple of this
    pool_round_to: int = 0  # structured: pad what each channel-selecting pool passes on to a multiple of this; 0 = round_to
    slice_pools: bool = False  # order each pool's producer so the pool slices a prefix instead of gathering or striding
    split_producers: bool = True  # then compute that prefix in a conv of its own: no channel selection in the graph

    def __post_init__(self):
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"prune.ratio={self.ratio} is outside [0, 1); use e.g. prune.ratio=0.5")
        if self.round_to < 1:
            raise ConfigError(f"prune.round_to={self.round_to} must be >= 1; use prune.round_to=1 (no padding) or 8")
        if self.pool_round_to < 0:
            raise ConfigError(f"prune.pool_round_to={self.pool_round_to} must be >= 0; use 0 (as prune.round_to) or e.g. 32")
        for key in ("round_to", "pool_round_to"):
            if getattr(self, key) > 1 and not self.structured:
                raise ConfigError(f"prune.{key}={getattr(self, key)} pads the channels of a structured model; "
                                  f"add prune.structured=true or use prune.{key}={int(key == 'round_to')}")

    @property
    def pools_to(self) -> int:
        """The multiple each channel-selecting pool is padded to."""
        return self.pool_round_to or self.round_to


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def run(model: nn.Module, cfg: PruneConfig) -> nn.Module:
    """Zero the smallest conv weights in place and make it permanent."""
    if cfg.ratio == 0.0:
        return model
    targets = [(m, "weight") for _, m in conv_layers(model)]
    if cfg.scope is Scope["layer"]:
        for module, name in targets:
            torch_prune.l1_unstructured(module, name, amount=cfg.ratio)
    else:
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=cfg.ratio)
    # Folding the masks in drops weight_orig/weight_mask, which would otherwise double the
    # state dict and break export.
    for module, name in targets:
        torch_prune.remove(module, name)
    return model


def sparsity(model: nn.Module) -> float:
    """Fraction of conv weights that are exactly zero."""
    weights = [m.weight.detach() for _, m in conv_layers(model)]
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights) / total)


def params_dense(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
