import numpy as np
import pytest

from lpr_sweep import evaluate
from lpr_sweep.data import Plates, encode
from lpr_sweep.model import BLANK, CHARS


def _logits(paths: list[list[int]]) -> np.ndarray:
    """One-hot logits (N, classes, T) whose argmax follows ``paths``."""
    out = np.zeros((len(paths), len(CHARS), len(paths[0])), np.float32)
    for n, path in enumerate(paths):
        out[n, path, range(len(path))] = 1.0
    return out


def test_greedy_decoding_collapses_repeats_and_drops_blanks():
    a, b = encode("京A")
    assert evaluate.decode(_logits([[a, a, BLANK, b, b, BLANK, b]])) == ["京AA"]
    assert evaluate.decode(_logits([[BLANK] * 5])) == [""]


def test_edit_distance():
    assert evaluate.edit_distance("京A1234", "京A1234") == 0
    assert evaluate.edit_distance("京A124", "京A1234") == 1
    assert evaluate.edit_distance("", "abc") == 3


def test_char_accuracy_is_floored_per_plate():
    assert evaluate.char_accuracy(["京A1234", "京A1299"], ["京A1234", "京A1234"]) == pytest.approx(10 / 12)  # two substitutions in 12 characters
    assert evaluate.char_accuracy(["XXXXXXXXXXXXXX"], ["京A"]) == 0.0


def test_run_scores_every_plate_in_batches():
    labels = ["京A1", "沪B2", "川C3"]
    paths = [encode(t) + [BLANK] * 2 for t in labels]
    paths[2] = encode("川C4") + [BLANK] * 2
    logits = _logits(paths)
    calls = []

    def fake_runtime(batch):
        calls.append(len(batch))
        return logits[batch[:, 0, 0, 0].astype(int)]

    images = np.zeros((3, 3, 24, 94), np.float32)
    images[:, 0, 0, 0] = [0, 1, 2]
    result = evaluate.run(fake_runtime, Plates(["a", "b", "c"], labels, images), evaluate.EvaluateConfig(batch_size=2))
    assert calls == [2, 1]
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.correct == [True, True, False]
    assert result.char_accuracy == pytest.approx(8 / 9)


def test_wilson_interval_matches_known_values_and_stays_in_range():
    low, high = evaluate.wilson(90, 100)
    assert (round(low, 4), round(high, 4)) == (0.8256, 0.9448)  # the textbook 90/100 case
    assert evaluate.wilson(0, 10)[0] == 0.0 and evaluate.wilson(10, 10)[1] == 1.0
    assert evaluate.wilson(0, 0) == (0.0, 1.0)


def test_paired_drop_counts_plates_and_its_interval_holds_zero_for_a_swap():
    ref = [True] * 90 + [False] * 10
    same_count = [True] * 89 + [False] + [True] + [False] * 9  # lost one plate, gained another
    d = evaluate.paired_drop(ref, same_count)
    assert (d["drop_pts"], d["plates_lost"], d["plates_gained"]) == (0.0, 1.0, 1.0)
    assert d["drop_pts_ci_low"] < 0 < d["drop_pts_ci_high"]
    worse = [True] * 80 + [False] * 20  # lost ten plates, gained none
    d = evaluate.paired_drop(ref, worse)
    assert d["drop_pts"] == 10.0 and d["drop_pts_ci_low"] > 0 and d["plates_gained"] == 0
