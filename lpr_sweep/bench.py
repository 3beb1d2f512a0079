"""``python -m lpr_sweep.bench`` (``make bench``): torch eager vs ONNX Runtime, baseline and pruned.

Every variant is built first, then timed in interleaved rounds in this one process, so machine
drift (±30 % here) hits all rows alike. Ratios are against the baseline on each runtime.
Protocol: batch 1, ``--threads`` intra-op threads, one real scored plate as input, ``--warmup``
untimed calls per variant, then ``--rounds`` rounds of ``--calls`` timed calls each.
Accuracy is on the scored plates only (the calibration split is held out).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from hydra import compose, initialize

from lpr_sweep import benchmark, config, data, evaluate, export, hardware, prune, runtime, size
from lpr_sweep import model as lprnet

VARIANTS = {  # name -> overrides, on top of the default config
    "baseline": [],
    "prune global 0.5": ["prune.ratio=0.5", "prune.scope=global"],
    "prune layer 0.5": ["optimization=prune"],
}
RUNTIMES = ("torch", "onnxruntime")


def build(overrides: list[str], threads: int, workdir: Path):
    """(config, runtimes by name, onnx path) for one variant."""
    conf = config.validate(compose("config", overrides=[*overrides, f"hardware.threads={threads}"]))
    root = data.resolve_root(conf.data.root)
    net = prune.run(lprnet.load(root / conf.model.weights, conf.model.norm), conf.prune)
    prepared = runtime.Prepared(net, export.to_onnx(net, workdir / "model.onnx"))
    rts = {n: runtime.build(n, prepared, conf.hardware, workdir) for n in RUNTIMES}
    return conf, rts, prepared.path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpr_sweep.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40, help="timed calls per variant per round")
    args = parser.parse_args(argv)

    with initialize(config_path="../conf", version_base="1.3"), tempfile.TemporaryDirectory() as tmp:
        built = {name: build(o, args.threads, Path(tmp) / str(i)) for i, (name, o) in enumerate(VARIANTS.items())}
        conf = next(iter(built.values()))[0]
        _, _, scored = data.load(conf.data)
        x = benchmark.inputs(scored, 1)
        rows = [(v, n, rt) for v, (_, rts, _) in built.items() for n, rt in rts.items()]
        times: dict[int, list[np.ndarray]] = {i: [] for i in range(len(rows))}
        for i, (_, _, rt) in enumerate(rows):
            benchmark.time_calls(rt, x, args.warmup, 1)
        for _ in range(args.rounds):
            for i, (_, _, rt) in enumerate(rows):
                times[i].append(benchmark.time_calls(rt, x, 0, args.calls))
        stats = [benchmark.summarize(np.concatenate(times[i])) for i in range(len(rows))]
        base = {n: stats[i]["latency_p50_ms"] for i, (v, n, _) in enumerate(rows) if v == "baseline"}
        eager = base["torch"]

        print(f"# make bench: {hardware.fingerprint()['hw.cpu']}, {args.threads} threads, batch 1, "
              f"{args.warmup} warm-up + {args.rounds}x{args.calls} interleaved timed calls per row; "
              f"accuracy on {len(scored)} scored plates (calibration split of {conf.data.calib_size} held out)")
        print("| variant | runtime | p50 ms | p90 ms | speed-up vs torch eager baseline | speed-up vs same-runtime baseline "
              "| accuracy | sparsity | file bytes | nonzero bytes |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for (variant, name, rt), st in zip(rows, stats):
            net_sparsity = prune.sparsity(built[variant][1]["torch"].model)
            acc = evaluate.run(rt, scored, conf.evaluate).accuracy
            sizes = size.measure(rt.artifacts, built[variant][2])
            p50 = st["latency_p50_ms"]
            print(f"| {variant} | {name} | {p50:.2f} | {st['latency_p90_ms']:.2f} | {eager / p50:.2f}x "
                  f"| {base[name] / p50:.2f}x | {acc:.4f} | {net_sparsity:.2f} | {sizes['size_file_bytes']} "
                  f"| {sizes['size_nonzero_bytes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
