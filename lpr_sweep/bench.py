"""``python -m lpr_sweep.bench`` (``make bench``): every runtime and optimization, side by side.

Every row is built first through the same code a trial uses (``pipeline.build``, so int8 rows
pass the accuracy guard), then all rows are timed in interleaved rounds in this one process, so
machine drift (±30 % here) hits them alike. Ratios are speed-ups against the ORT fp32, OpenVINO
fp32 and torch eager baselines: in each round, the baseline's median call over the row's; the
median of those per-round ratios, with a 95 % bootstrap interval over the rounds. Each row is one
load of its model (a trial times several: docs/measured.md, "One load is one draw").
Protocol: batch 1, ``--threads`` intra-op threads, one real scored plate as input, ``--warmup``
untimed calls per row, then ``--rounds`` rounds of ``--calls`` timed calls each, rows in the same
order every round. p50 and p90 are over all timed calls of the row. Accuracy is on
the scored plates only; the calibration plates (int8 calibration) and the validation plates (the
int8 guard's decisions) are never scored. The TVM rows
tune once per graph and target (about 20 minutes here) and reuse the database afterwards.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from hydra import compose, initialize

from lpr_sweep import benchmark, config, data, evaluate, hardware, pipeline, size

ROWS = {  # row name -> overrides on the default config
    "torch eager fp32": ["runtime=torch"],
    "ORT fp32": [],
    "OpenVINO fp32": ["runtime=openvino"],
    "ORT int8 (ort_static)": ["quant=ort_static"],
    "OpenVINO int8 (nncf)": ["quant=nncf", "runtime=openvino"],
    "OpenVINO int8 (ort_static QDQ)": ["quant=ort_static", "runtime=openvino"],
    "torch int8 (torch_x86, compiled)": ["quant=torch_x86", "runtime=torch"],
    "TVM fp32, untuned": ["runtime=tvm", "compile=untuned"],
    "TVM fp32, tuned (mlc, default budget)": ["optimization=mlc"],
    "ORT fp32, prune layer 0.5 (report's method)": ["optimization=prune", "prune.scope=layer"],
    "torch eager fp32, prune global 0.5": ["optimization=prune", "runtime=torch"],
    "ORT fp32, prune global 0.5": ["optimization=prune"],
    "ORT int8, prune global 0.5": ["optimization=prune", "quant=ort_static"],
    "OpenVINO int8, prune global 0.5 (prune_quant)": ["optimization=prune_quant"],
    "TVM fp32, prune global 0.5 (prune_mlc)": ["optimization=prune_mlc"],
    "ORT fp32, structured global 0.8 (prune_structured)": ["optimization=prune_structured"],
    "OpenVINO int8 (nncf), structured global 0.8 (prune_structured_quant)": ["optimization=prune_structured_quant"],
    "OpenVINO int8 (nncf), structured global 0.8, pools gather, not padded": [  # the preset before slice_pools
        "optimization=prune_structured_quant", "prune.pool_round_to=0", "prune.slice_pools=false"],
    "OpenVINO int8 (nncf), pools sliced (quant + prune.slice_pools)": ["optimization=quant", "prune.slice_pools=true"],
    "TVM fp32, structured global 0.8 (prune_structured_mlc)": ["optimization=prune_structured_mlc"],
    "ORT fp32, structured global 0.9 + kd (prune_structured_kd)": ["optimization=prune_structured_kd"],
    "ORT fp32, structured global 0.9 + kd, pools gather": ["optimization=prune_structured_kd", "prune.slice_pools=false"],
    "ORT fp32, structured global 0.9 + kd, channels not padded, pools gather": [
        "optimization=prune_structured_kd", "prune.round_to=1", "prune.slice_pools=false"],
    "OpenVINO int8 (nncf), structured global 0.9 + kd (prune_structured_kd_quant)": ["optimization=prune_structured_kd_quant"],
    "OpenVINO int8 (nncf), structured global 0.9 + kd, pools gather": [  # the preset slices them
        "optimization=prune_structured_kd_quant", "prune.slice_pools=false"],
    "OpenVINO int8 (nncf), structured global 0.9 + kd, channels and pools padded to 8, pools gather": [
        "optimization=prune_structured_kd_quant", "prune.pool_round_to=0", "prune.slice_pools=false"],  # the preset pads its pools to 32
    "OpenVINO int8 (nncf), structured global 0.9 + kd, not padded, pools gather": [
        "optimization=prune_structured_kd_quant", "prune.round_to=1", "prune.pool_round_to=0", "prune.slice_pools=false"],
    **{
        f"{runtime} {precision}, structured global {ratio}": [
            "prune.structured=true", f"prune.ratio={ratio}", *overrides
        ]
        for ratio in (0.7, 0.8, 0.9)
        for runtime, precision, overrides in [
            ("ORT", "fp32", []),
            ("OpenVINO", "fp32", ["runtime=openvino"]),
            ("ORT", "int8 (ort_static)", ["quant=ort_static"]),
            ("OpenVINO", "int8 (nncf)", ["quant=nncf", "runtime=openvino"]),
        ]
    },
    **{
        f"{runtime} {precision}, structured global {ratio}, channels padded to 8": [
            "prune.structured=true", f"prune.ratio={ratio}", "prune.round_to=8", *overrides
        ]
        for ratio in (0.8, 0.9)
        for runtime, precision, overrides in [("ORT", "fp32", []), ("OpenVINO", "int8 (nncf)", ["quant=nncf", "runtime=openvino"])]
    },
}
BASELINES = ("ORT fp32", "OpenVINO fp32", "torch eager fp32")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpr_sweep.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=40, help="timed calls per row per round")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), metavar="ROW",
                        help="a subset of rows (the baselines are always measured)")
    args = parser.parse_args(argv)
    names = [*BASELINES, *(r for r in args.rows if r not in BASELINES)]

    with initialize(config_path="../conf", version_base="1.3"), tempfile.TemporaryDirectory() as tmp:
        confs = {n: config.validate(compose("config", overrides=[*ROWS[n], f"hardware.threads={args.threads}"])) for n in names}
        root, calib, val, scored = data.load(confs["ORT fp32"].data)
        built = {n: pipeline.build(confs[n], root, calib, val, Path(tmp) / str(i), pipeline.Stages(n))
                 for i, n in enumerate(names)}
        x = benchmark.inputs(scored, 1)
        for b in built.values():
            benchmark.time_calls(b.runtime, x, args.warmup, 1)
        times: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for n in names:
                times[n].append(benchmark.time_calls(built[n].runtime, x, 0, args.calls))
        stats = {n: benchmark.summarize(np.concatenate(times[n])) for n in names}
        round_p50 = {n: np.array([np.median(t) for t in times[n]]) for n in names}
        accuracy = {n: evaluate.run(built[n].runtime, scored, confs[n].evaluate).accuracy for n in names}

        print(f"# make bench: {hardware.fingerprint()['hw.cpu']} ({hardware.fingerprint()['hw.isa']}), "
              f"{args.threads} threads, batch 1, {args.warmup} warm-up + {args.rounds}x{args.calls} interleaved "
              f"timed calls per row; speed-ups: median of per-round ratios [95 % bootstrap over rounds]; "
              f"accuracy on {len(scored)} scored plates, drop in points against ORT fp32; "
              f"int8 calibrated on {len(calib)} and guarded on {len(val)} other plates, none of them scored")
        print("| row | MACs M | p50 ms | p90 ms | vs ORT fp32 | vs OpenVINO fp32 | vs torch eager | accuracy | drop pts "
              "| int8 guard | file bytes | nonzero bytes | gzip bytes |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for n in names:
            b, p50 = built[n], stats[n]["latency_p50_ms"]
            sizes = size.measure(b.runtime.artifacts, b.runtime.constants())
            ratios = " | ".join("{:.2f}x [{:.2f}, {:.2f}]".format(*benchmark.interval(round_p50[base] / round_p50[n]))
                                for base in BASELINES)
            guard = "-" if b.guard is None else f"{b.guard.row['method']}, float: {b.guard.row['keep_float']}" + ("" if b.guard.met else " (NOT met)")
            print(f"| {n} | {size.macs(b.fp32_onnx) / 1e6:.1f} | {p50:.2f} | {stats[n]['latency_p90_ms']:.2f} | {ratios} | {accuracy[n]:.4f} "
                  f"| {100 * (accuracy['ORT fp32'] - accuracy[n]):.2f} | {guard} | {sizes['size_file_bytes']} "
                  f"| {sizes['size_nonzero_bytes']} | {sizes['size_gzip_bytes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
