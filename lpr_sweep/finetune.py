"""Label-free distillation after pruning: the unpruned fp32 model teaches the pruned one.

What it sees: the calibration plates' images only (``data.calib_size``, the plates int8
calibration uses), randomly augmented. What it never sees: a label (the target is the teacher's
output), a validation plate or a scored plate. The teacher is the unpruned model with the same
``model.norm``.

The student stays in eval mode by default: LPRNet has dropout, and fine-tuned in train mode a
structured global-0.9 student fell from 0.887 to about 0.80 within 100 steps whatever the loss or
learning rate (docs/measured.md, "Distillation"). Every conv weight that is zero when the finetune
starts (what pruning removed) is set back to zero after each step, so the logged sparsity holds.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpr_sweep import ConfigError
from lpr_sweep.model import BLANK

METHODS = ("none", "kd")
LOSSES = ("kl", "ctc")
WEIGHTS = "weights.pt"
LOG = "finetune.json"


@dataclass
class FinetuneConfig:
    method: str = "none"  # none | kd (distillation from the unpruned fp32 model)
    loss: str = "kl"  # kl: the teacher's per-column character distributions | ctc: its decoded strings
    steps: int = 300
    lr: float = 1e-4  # Adam, cosine-decayed to 0 over the steps
    batch_size: int = 32
    temperature: float = 1.0  # kl only
    train_mode: bool = False  # true: dropout on and BatchNorm statistics updated (hurt, see the docstring)
    augment: bool = True  # +-4 deg rotation, scale 0.92-1.08, +-3 px shift, +-5 % contrast, +-5 brightness
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"finetune.method={self.method!r} is not one of {METHODS}; use finetune=kd or finetune=none")
        if self.loss not in LOSSES:
            raise ConfigError(f"finetune.loss={self.loss!r} is not one of {LOSSES}; use finetune.loss=kl")
        for key in ("steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"finetune.{key}={getattr(self, key)} must be >= 1")
        if not (self.lr > 0 and self.temperature > 0):
            raise ConfigError(f"finetune.lr={self.lr} and finetune.temperature={self.temperature} must be > 0")

    @property
    def enabled(self) -> bool:
        return self.method != "none"


def check_data(cfg: FinetuneConfig, calib_size: int) -> None:
    if cfg.enabled and calib_size < 1:
        raise ConfigError("finetune=kd trains on the calibration plates, but data.calib_size=0; "
                          "use data.calib_size=100 or finetune=none")


@dataclass
class Log:
    losses: list[float] = field(default_factory=list)  # one per step
    seconds: float = 0.0  # how long the finetune took when it ran (a cache hit reports the original's)
    steps: int = 0


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild geometric and photometric jitter of normalised (N, 3, H, W) plates; stronger
    photometric jitter (+-30 % contrast, noise, blur) hurt (docs/measured.md, "Distillation")."""
    n, _, h, w = x.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=gen)

    angle, scale = uniform(-4, 4) * math.pi / 180, uniform(0.92, 1.08)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # affine_grid works in [-1, 1] on both axes: the aspect ratio keeps the rotation a rotation.
    theta = torch.stack([torch.stack([cos, -sin * h / w, uniform(-3, 3) * 2 / w], 1),
                         torch.stack([sin * w / h, cos, uniform(-3, 3) * 2 / h], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(0.95, 1.05).view(n, 1, 1, 1)
    brightness = (uniform(-5, 5) / 128).view(n, 1, 1, 1)  # grey levels, in the normalised scale
    return (x - mean) * contrast + mean + brightness


def _loss(student: torch.Tensor, teacher: torch.Tensor, cfg: FinetuneConfig) -> torch.Tensor:
    """Both (N, classes, columns) logits."""
    if cfg.loss == "kl":
        t = cfg.temperature
        return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                        reduction="none").sum(1).mean() * t * t
    targets = _greedy(teacher)
    lengths = torch.tensor([len(s) for s in targets])
    log_probs = F.log_softmax(student, 1).permute(2, 0, 1)  # (columns, N, classes)
    return F.ctc_loss(log_probs, torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long),
                      torch.full((len(targets),), log_probs.shape[0], dtype=torch.long), lengths,
                      blank=BLANK, zero_infinity=True)


def _greedy(logits: torch.Tensor) -> list[torch.Tensor]:
    """The teacher's CTC greedy decoding, as class indices per plate."""
    out = []
    for path in logits.argmax(1):
        keep = torch.ones_like(path, dtype=torch.bool)
        keep[1:] = path[1:] != path[:-1]
        out.append(path[keep & (path != BLANK)])
    return out


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Where each conv weight is nonzero now."""
    return {name: m.weight.detach() != 0 for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def run(student: nn.Module, teacher: Callable[[np.ndarray], np.ndarray], images: np.ndarray, cfg: FinetuneConfig,
        progress: bool = True) -> Log:
    """Distil ``teacher`` (images -> logits) into ``student`` in place on ``images`` (N, 3, H, W);
    return the loss per step.

    The teacher is any runtime of the unpruned model: the pipeline passes the trial's reference
    (ONNX Runtime on a CPU): torch eager's teacher forward took most of each step here (a one-off
    script, timed one after the other, not paired).
    """
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = torch.from_numpy(np.ascontiguousarray(images))
    masks = zero_masks(student)
    convs = {name: m for name, m in student.named_modules() if isinstance(m, nn.Conv2d)}
    student.train(cfg.train_mode)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    log = Log(steps=cfg.steps)
    t0 = time.perf_counter()
    torch.set_flush_denormal(True)  # BN-folded and pruned weights leave denormals, slow on x86
    bar = tqdm(range(cfg.steps), desc=f"finetune {cfg.method} ({cfg.loss})", disable=not progress, mininterval=1.0)
    try:
        for _ in bar:
            batch = data[torch.randint(len(data), (cfg.batch_size,), generator=gen)]
            if cfg.augment:
                batch = augment(batch, gen)
            target = torch.from_numpy(np.asarray(teacher(batch.numpy()), dtype=np.float32))
            loss = _loss(student(batch), target, cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                for name, mask in masks.items():
                    convs[name].weight.mul_(mask)
            log.losses.append(loss.item())
            bar.set_postfix(loss=f"{log.losses[-1]:.4f}", refresh=False)
    finally:
        bar.close()
        torch.set_flush_denormal(False)  # torch's default; torch has no getter to restore another
        student.eval()
    log.seconds = time.perf_counter() - t0
    return log


def save(student: nn.Module, log: Log, folder: Path) -> None:
    torch.save(student.state_dict(), folder / WEIGHTS)
    (folder / LOG).write_text(json.dumps(asdict(log)))


def load(student: nn.Module, folder: Path) -> Log:
    """The finetuned weights into ``student`` (which must have the pruned model's shapes), and the log."""
    student.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True), strict=True)
    student.eval()
    return Log(**json.loads((folder / LOG).read_text()))
