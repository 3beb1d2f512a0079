"""The report's final: the finalists' logged MLflow Models timed side by side, in one process.

Each trial timed its model against the reference in its own process, minutes apart from the
others, and the host's own speed moves paired ratios between such processes (int8 rows by 10-13 %
between runs of one sweep; docs/protocol.md, "The final"). So before the champion is chosen the
report loads each finalist's deployable from its logged MLflow Model (what a user would deploy, not a
rebuild), builds the reference as the trials did, and times them all together with
``benchmark.rotating``: the trials' own protocol (threads, warm-up, calls per block, loads, at least
``min_seconds``, bootstrap intervals), with every finalist beside the same reference in every block.
A host-speed step then moves all the finalists' ratios alike, and the champion rule reads these.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lpr_sweep import benchmark, config, data, hardware, pipeline
from lpr_sweep.selection import Trial

# What the final replaces in a finalist's metrics; the in-trial speed-up stays as ``trial_speedup``.
FINAL_KEYS = ("speedup", "speedup_ci_low", "speedup_ci_high", "latency_p50_ms", "latency_ref_p50_ms", "bench_noisy",
              "bench_other_cores", "bench_host_busy", "bench_load_spread", "bench_blocks", "bench_seconds")
Fn = Callable[[np.ndarray], object]


def trial_config(trial: Trial) -> config.Config:
    """The config a trial ran with, from its logged ``config.yaml``, on the data root it read."""
    import mlflow
    from omegaconf import OmegaConf

    text = mlflow.artifacts.load_text(f"runs:/{trial.run_id}/config.yaml")
    merged = OmegaConf.merge(OmegaConf.structured(config.Config), OmegaConf.create(text))
    if trial.params.get("protocol.data_root"):
        merged.data.root = trial.params["protocol.data_root"]
    return config.validate(merged)


def deployable(trial: Trial) -> Fn:
    """One load of the trial's logged MLflow Model: the runtime inside its pyfunc, which takes the
    preprocessed batch the reference takes (the pyfunc's own image decoding is the same for all)."""
    import mlflow

    from lpr_sweep import tracking

    return mlflow.pyfunc.load_model(trial.tags[tracking.MODEL_TAG]).unwrap_python_model().runtime


def measure(finalists: Sequence[Trial], loads: Sequence[Sequence[Fn]], reference: Fn, x: np.ndarray,
            cfg: benchmark.BenchmarkConfig, clock: benchmark.Clock | None = None, host: benchmark.Host | None = None,
            spare_cores: float = 0.0) -> list[Trial]:
    """The finalists with the final's speed-ups in place of their own (``trial_speedup`` keeps those)."""
    kwargs = {"clock": clock} if clock else {}
    results = benchmark.rotating(loads, reference, x, cfg, host=host, spare_cores=spare_cores, **kwargs)
    out = []
    for t, r in zip(finalists, results):
        own = {f"trial_{k}": t.metrics[k] for k in ("speedup", "speedup_ci_low", "speedup_ci_high") if k in t.metrics}
        out.append(replace(t, metrics={**t.metrics, **own, **{k: r[k] for k in FINAL_KEYS if k in r}}))
    return out


def run(finalists: Sequence[Trial]) -> tuple[list[Trial], dict[str, str]]:
    """Time the finalists' logged models against the reference built from the first finalist's config
    (they are comparable: same data, reference and protocol). The finalists with the final's metrics,
    and the protocol it ran under."""
    conf = trial_config(finalists[0])
    root, _, _, scored = data.load(conf.data)
    threads = hardware.threads(conf.hardware)
    spare = max(0, len(os.sched_getaffinity(0)) - threads)
    with tempfile.TemporaryDirectory(prefix="lpr_sweep-final-") as workdir:
        ref, what = pipeline.reference(conf, root, Path(workdir) / "reference")
        loads = [[deployable(t) for _ in range(conf.benchmark.loads)] for t in finalists]
        timed = measure(finalists, loads, ref, benchmark.inputs(scored, 1), conf.benchmark, host=benchmark.host_cpu,
                        spare_cores=spare)
    b = conf.benchmark
    protocol = {
        "reference": what, "threads": str(threads), "batch": "1", "input": "first scored plate",
        "warmup": str(b.warmup), "calls_per_block": str(b.calls_per_block), "loads": str(b.loads),
        "seconds_min_max": f"{b.min_seconds:g}-{b.max_seconds:g}",
        "order": "each block times the reference and every finalist once, the order rotating a step every round over the loads",
    }
    return timed, protocol
