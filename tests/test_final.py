"""The report's final: finalists timed side by side, on simulated clocks and on a real sweep's logged models."""
import numpy as np
import pytest

from lpr_sweep import benchmark, final
from lpr_sweep.benchmark import BenchmarkConfig
from lpr_sweep.selection import Trial, best


class Host:
    """A clock that advances by what each call costs; after ``step_ms`` the host slows, the dense
    reference by ``ref_slow`` and the small models by ``small_slow`` (int8 and fp32 kernels slow unequally)."""

    def __init__(self, step_ms=None, ref_slow=1.6, small_slow=1.3, seed=0):
        self.now, self.rng = 0.0, np.random.default_rng(seed)
        self.step_ms, self.ref_slow, self.small_slow = step_ms, ref_slow, small_slow

    def clock(self):
        return int(self.now * 1e6)

    def model(self, ms, dense=False):
        def call(x):
            slow = self.step_ms is not None and self.now >= self.step_ms
            factor = (self.ref_slow if dense else self.small_slow) if slow else 1.0
            self.now += ms * factor * (1 + 0.02 * self.rng.standard_normal())
        return call


def _trial(name, speed, val):
    m = {"val_accuracy": val, "accuracy": val, "val_drop_pts": 100 * (0.9 - val), "speedup": speed, "speedup_ci_low": speed * 0.99,
         "speedup_ci_high": speed * 1.01, "size_file_bytes": 1e6, "latency_ref_p50_ms": 2.0}
    return Trial(name, name, "FINISHED", m)


def _in_trial(true_ms, step):
    """The paired speed-up a trial measures alone, on a host that is slow (``step``) or fast the whole time."""
    host = Host(step_ms=0.0 if step else None)
    return benchmark.paired(host.model(true_ms), host.model(2.0, dense=True), None, BenchmarkConfig(warmup=2), clock=host.clock)


def test_a_host_speed_step_moves_the_in_trial_ratios_but_not_the_finals():
    # Two models with the same true cost (1.0 ms against a 2.0 ms reference); b is the less accurate.
    # Timed minutes apart, b's trial fell in a slow spell: alone it reads 2.46x against a's 2.0x.
    a_alone, b_alone = _in_trial(1.0, step=False), _in_trial(1.0, step=True)
    assert b_alone["speedup"] / a_alone["speedup"] > 1.2
    a, b = _trial("a", a_alone["speedup"], 0.90), _trial("b", b_alone["speedup"], 0.895)
    for t, alone in ((a, a_alone), (b, b_alone)):
        t.metrics.update({k: alone[k] for k in ("speedup_ci_low", "speedup_ci_high")})
    assert best([a, b]).name == "b"  # the in-trial ratios would crown the less accurate one
    # The final times both beside one reference, with the same step halfway through: both move alike.
    host = Host(step_ms=6000.0)
    timed = final.measure([a, b], [[host.model(1.0)] * 3, [host.model(1.0)] * 3], host.model(2.0, dense=True), None,
                          BenchmarkConfig(warmup=2), clock=host.clock)
    fa, fb = timed[0].metrics, timed[1].metrics
    assert abs(fa["speedup"] / fb["speedup"] - 1) < 0.03, (fa["speedup"], fb["speedup"])
    assert fa["trial_speedup"] == a.metrics["speedup"] and fb["trial_speedup"] == b.metrics["speedup"]
    assert fa["latency_ref_p50_ms"] == fb["latency_ref_p50_ms"] and fa["bench_seconds"] >= 10
    assert best(timed).name == "a"  # tied on speed: the more accurate wins


def test_the_final_still_separates_models_that_differ():
    host = Host(step_ms=4000.0)
    trials = [_trial("fast", 1.0, 0.9), _trial("slow", 1.0, 0.9)]
    timed = final.measure(trials, [[host.model(0.5)], [host.model(1.0)]], host.model(2.0, dense=True), None,
                          BenchmarkConfig(warmup=2, loads=1), clock=host.clock)
    assert best(timed).name == "fast" and timed[0].metrics["speedup_ci_low"] > timed[1].metrics["speedup_ci_high"]


def test_rotating_blocks_give_every_model_every_position():
    seen = []
    models = [[lambda x, i=i: seen.append(f"m{i}")] for i in range(2)]
    cfg = BenchmarkConfig(warmup=0, loads=1, blocks=3, calls_per_block=1, min_seconds=0, max_blocks=3)
    benchmark.rotating(models, lambda x: seen.append("ref"), None, cfg)
    assert [seen[i:i + 3] for i in range(0, 9, 3)] == [["ref", "m0", "m1"], ["m0", "m1", "ref"], ["m1", "ref", "m0"]]
