"""``python -m lpr_sweep.bench_sweep`` (``make bench-sweep``): wall time of one 6-trial sweep, four ways.

The same sweep (pruning 0.5/0.8/0.9, each fp32 and ORT static int8, on ONNX Runtime) runs as a
subprocess serially and 2-way parallel (``hydra/launcher=joblib``), each first with an empty stage
cache (cold) and then again with the cache the cold run filled (warm). All four run one after
another in this invocation on this machine, each into its own MLflow store; the table gives wall
seconds and the ratios to the serial cold run. Benchmark settings are cut (``benchmark.blocks=4``)
so that the stages that the cache and the parallelism act on dominate.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["prune.ratio=0.5,0.8,0.9", "quant=none,ort_static", "benchmark.blocks=4", "benchmark.max_blocks=4",
         "benchmark.throughput_repeats=3"]
MODES = {"serial": [], "2-way parallel": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}


def run(tmp: Path, name: str, mode: list[str], cache: Path, extra: list[str]) -> float:
    out = tmp / name.replace(" ", "_")
    args = [sys.executable, "-m", "lpr_sweep", "-m", *SWEEP, *extra, *mode, f"cache.dir={cache}",
            f"tracking.uri=sqlite:///{out}/mlflow.db", f"tracking.artifact_root={out}/mlruns", f"hydra.sweep.dir={out}/sweep"]
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"error: the {name} sweep failed:\n{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpr_sweep.bench_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="more overrides for every sweep, e.g. data.root=/path")
    args = parser.parse_args(argv)
    from lpr_sweep import config, hardware

    trials = len(config.expand(SWEEP + args.overrides, []))  # an override of a swept key replaces its values

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for mode, launcher in MODES.items():
            cache = tmp / f"cache_{len(rows)}"  # each mode starts cold
            for state in ("cold", "warm"):
                rows.append((mode, state, run(tmp, f"{mode} {state}", launcher, cache, args.overrides)))
    first = rows[0][2]
    fp = hardware.fingerprint()
    print(f"# bench_sweep: {fp['hw.cpu']}, {fp['hw.cores']} cores; {trials} trials: {' '.join(SWEEP + args.overrides)}; wall seconds of the "
          "whole `python -m lpr_sweep -m` process (start-up included), one after another in this invocation")
    print("| sweep | stage cache | wall s | vs serial cold |")
    print("|---|---|---:|---:|")
    for mode, state, seconds in rows:
        print(f"| {mode} | {state} | {seconds:.1f} | {first / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
