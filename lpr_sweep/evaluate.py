"""Accuracy on the scored plates: CTC greedy decoding, exact-plate and character accuracy."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lpr_sweep import ConfigError
from lpr_sweep.data import Plates
from lpr_sweep.model import BLANK, CHARS
from lpr_sweep.runtime import Runtime


@dataclass
class EvaluateConfig:
    batch_size: int = 100  # plates per call; only matters for model.norm=batch (upstream used 100)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"evaluate.batch_size={self.batch_size} must be >= 1")


@dataclass
class Result:
    accuracy: float  # exact plate match
    char_accuracy: float
    predictions: list[str]
    correct: list[bool]


def decode(logits: np.ndarray) -> list[str]:
    """(N, classes, T) -> plate strings: argmax per column, collapse repeats, drop blanks."""
    plates = []
    for path in logits.argmax(axis=1):
        chars, prev = [], BLANK
        for k in path:
            if k != prev and k != BLANK:
                chars.append(CHARS[k])
            prev = k
        plates.append("".join(chars))
    return plates


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def char_accuracy(predictions: list[str], labels: list[str]) -> float:
    """1 - edit distance / label length per plate, floored at 0, weighted by label length."""
    kept = sum(max(0, len(t) - edit_distance(p, t)) for p, t in zip(predictions, labels))
    return kept / sum(len(t) for t in labels)


def run(runtime: Runtime, plates: Plates, cfg: EvaluateConfig) -> Result:
    predictions = []
    for start in range(0, len(plates), cfg.batch_size):
        predictions += decode(runtime(plates.images[start : start + cfg.batch_size]))
    correct = [p == t for p, t in zip(predictions, plates.labels)]
    return Result(
        accuracy=sum(correct) / len(plates),
        char_accuracy=char_accuracy(predictions, plates.labels),
        predictions=predictions,
        correct=correct,
    )


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (it stays inside [0, 1] near 0 % and 100 %)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_drop(reference: list[bool], candidate: list[bool], resamples: int = 4000, seed: int = 0) -> dict[str, float]:
    """Accuracy points lost against ``reference`` on the same plates, with a 95 % bootstrap interval over
    plates; and the plates each got right that the other did not."""
    ref, cand = np.asarray(reference, bool), np.asarray(candidate, bool)
    diff = ref.astype(np.int8) - cand.astype(np.int8)  # +1 lost, -1 gained, per plate
    idx = np.random.default_rng(seed).integers(0, len(diff), (resamples, len(diff)))
    boot = 100 * diff[idx].mean(axis=1)
    return {
        "drop_pts": float(100 * diff.mean()),
        "drop_pts_ci_low": float(np.percentile(boot, 2.5)),
        "drop_pts_ci_high": float(np.percentile(boot, 97.5)),
        "plates_lost": float((diff == 1).sum()),
        "plates_gained": float((diff == -1).sum()),
    }
