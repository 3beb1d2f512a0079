"""L1-magnitude pruning of every Conv2d weight, without fine-tuning; the ``prune`` config group.

``scope=layer`` prunes each conv by the same ratio (the original report's method); ``scope=global``
ranks all conv weights together, so layers with many small weights give up more of them.
``stages`` sets a ratio per stage of LPRNet (stem, block1-3, head, classifier, container) for a
search over them (``+experiment=stage_search``). ``structured``, ``round_to``, ``pool_round_to``,
``slice_pools`` and ``split_producers`` reshape LPRNet's channels afterwards: ``lpr_sweep.prune.channels``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Optional

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from lpr_sweep import ConfigError

Scope = Enum("Scope", {"layer": "layer", "global": "global"})  # functional form: `global` is a keyword


# LPRNet's stages, by the names of the convs they hold (prefixes): what ``prune.stages`` sets ratios for.
STAGES = {
    "stem": ("backbone.0",), "block1": ("backbone.4.",), "block2": ("backbone.8.",), "block3": ("backbone.11.",),
    "head": ("backbone.16",), "classifier": ("backbone.20",), "container": ("container.",),
}


@dataclass
class StageRatios:
    """A pruning ratio per stage of LPRNet (None: as ``prune.ratio`` prunes it). Under ``scope=global``
    each stage set here ranks its own convs' weights."""

    stem: Optional[float] = None
    block1: Optional[float] = None
    block2: Optional[float] = None
    block3: Optional[float] = None
    head: Optional[float] = None
    classifier: Optional[float] = None
    container: Optional[float] = None

    def __post_init__(self):
        for stage, ratio in self.set().items():
            if not 0.0 <= ratio < 1.0:
                raise ConfigError(f"prune.stages.{stage}={ratio} is outside [0, 1); use e.g. prune.stages.{stage}=0.8 or null")

    def set(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class PruneConfig:
    ratio: float = 0.0  # fraction of conv weights zeroed, in [0, 1); 0 leaves the model untouched
    scope: Scope = Scope["global"]
    structured: bool = False  # rebuild the model without the channels the pruning killed
    round_to: int = 1  # structured: pad each conv's channels with zero channels to a multiple of this
    pool_round_to: int = 0  # structured: pad what each channel-selecting pool passes on to a multiple of this; 0 = round_to
    slice_pools: bool = False  # order each pool's producer so the pool slices a prefix instead of gathering or striding
    split_producers: bool = True  # then compute that prefix in a conv of its own: no channel selection in the graph
    stages: StageRatios = field(default_factory=StageRatios)  # per-stage ratios that override ``ratio``

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


def stage_of(conv_name: str) -> str | None:
    return next((stage for stage, prefixes in STAGES.items() if conv_name.startswith(prefixes)), None)


def run(model: nn.Module, cfg: PruneConfig) -> nn.Module:
    """Zero the smallest conv weights in place and make it permanent: every conv at ``cfg.ratio``
    (one ranking under ``scope=global``), then each stage in ``cfg.stages`` again from its original
    weights at its own ratio (ranked within the stage). The stages not set end exactly as without
    ``stages``."""
    convs = conv_layers(model)
    stages = cfg.stages.set()
    original = {name: m.weight.detach().clone() for name, m in convs if stage_of(name) in stages}
    _prune([m for _, m in convs], cfg.ratio, cfg.scope)
    for stage, ratio in stages.items():
        members = [m for name, m in convs if stage_of(name) == stage]
        with torch.no_grad():
            for name, m in convs:
                if stage_of(name) == stage:
                    m.weight.copy_(original[name])
        _prune(members, ratio, cfg.scope)
    return model


def _prune(modules: list[nn.Module], ratio: float, scope: Scope) -> None:
    if ratio == 0.0 or not modules:
        return
    targets = [(m, "weight") for m in modules]
    if scope is Scope["layer"]:
        for module, name in targets:
            torch_prune.l1_unstructured(module, name, amount=ratio)
    else:
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=ratio)
    # Folding the masks in drops weight_orig/weight_mask, which would otherwise double the
    # state dict and break export.
    for module, name in targets:
        torch_prune.remove(module, name)


def sparsity(model: nn.Module) -> float:
    """Fraction of conv weights that are exactly zero."""
    weights = [m.weight.detach() for _, m in conv_layers(model)]
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights) / total)


def params_dense(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
