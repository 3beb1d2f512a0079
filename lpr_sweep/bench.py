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
int8 guard's decisions) are never scored. The TVM rows start from the shipped records (re-measured
here unless tuned for this CPU) and reuse the database afterwards; the "tuned from nothing here" rows
tune once per graph in a cache of their own (~7 minutes each on 2 cores).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from hydra import compose, initialize

from lpr_sweep import ConfigError, benchmark, config, data, evaluate, hardware, peers, pipeline, profile, runtime, size, tracking

ROWS = {  # row name -> overrides on the default config
    "torch eager fp32": ["runtime=torch"],
    "ORT fp32": [],
    "OpenVINO fp32": ["runtime=openvino"],
    "OpenVINO bf16": ["runtime=openvino", "runtime.precision=bf16"],
    "OpenVINO fp32, channels strided (split_producers=false)": ["runtime=openvino", "prune.split_producers=false"],
    "OpenVINO bf16, channels strided (split_producers=false)": ["runtime=openvino", "runtime.precision=bf16", "prune.split_producers=false"],
    "ORT fp32, channels strided (split_producers=false)": ["prune.split_producers=false"],
    "OpenVINO int8 (nncf), channels strided (split_producers=false)": ["optimization=quant", "prune.split_producers=false"],
    "ORT int8 (ort_static)": ["quant=ort_static"],
    "OpenVINO int8 (nncf)": ["quant=nncf", "runtime=openvino"],
    "OpenVINO int8 (ort_static QDQ)": ["quant=ort_static", "runtime=openvino"],
    "torch int8 (torch_x86, compiled)": ["quant=torch_x86", "runtime=torch"],
    "TVM fp32, untuned": ["runtime=tvm", "compile=untuned"],
    "TVM fp32, tuned (mlc, default budget)": ["optimization=mlc"],
    # the same budget tuned from nothing on this CPU, in a cache of its own: what shipped records must match
    "TVM fp32, tuned from nothing here (mlc, compile.records=none)": [
        "optimization=mlc", "compile.records=none", "compile.cache_dir='~/.cache/lpr_sweep/tvm-from-nothing'"],
    "ORT fp32, prune layer 0.5 (report's method)": ["optimization=prune", "prune.scope=layer"],
    "torch eager fp32, prune global 0.5": ["optimization=prune", "runtime=torch"],
    "ORT fp32, prune global 0.5": ["optimization=prune"],
    "ORT int8, prune global 0.5": ["optimization=prune", "quant=ort_static"],
    "OpenVINO int8, prune global 0.5 (prune_quant)": ["optimization=prune_quant"],
    "TVM fp32, prune global 0.5 (prune_mlc)": ["optimization=prune_mlc"],
    "ORT fp32, structured global 0.8 (prune_structured)": ["optimization=prune_structured"],
    "OpenVINO int8 (nncf), structured global 0.8 (prune_structured_quant)": ["optimization=prune_structured_quant"],
    "OpenVINO int8 (nncf), structured global 0.8, pools gather, not padded": [  # the preset before slice_pools
        "optimization=prune_structured_quant", "prune.pool_round_to=0", "prune.slice_pools=false", "prune.split_producers=false"],
    "OpenVINO fp32, pools sliced (prune.slice_pools, split_producers=false)": [
        "runtime=openvino", "prune.slice_pools=true", "prune.split_producers=false"],
    "OpenVINO int8 (nncf), pools sliced (quant + prune.slice_pools)": ["optimization=quant", "prune.slice_pools=true", "prune.split_producers=false"],
    "TVM fp32, structured global 0.8 (prune_structured_mlc)": ["optimization=prune_structured_mlc"],
    "TVM fp32, structured global 0.8, tuned from nothing here (prune_structured_mlc, compile.records=none)": [
        "optimization=prune_structured_mlc", "compile.records=none", "compile.cache_dir='~/.cache/lpr_sweep/tvm-from-nothing'"],
    "ORT fp32, structured global 0.8 (prune_structured_mlc's graph)": ["optimization=prune_structured_mlc", "runtime=onnxruntime"],
    "torch eager fp32, structured global 0.8 (prune_structured_mlc's model)": ["optimization=prune_structured_mlc", "runtime=torch"],
    "ORT fp32, structured global 0.9 + kd (prune_structured_kd)": ["optimization=prune_structured_kd"],
    "ORT fp32, structured global 0.9 + kd, pools gather": ["optimization=prune_structured_kd", "prune.slice_pools=false", "prune.split_producers=false"],
    "ORT fp32, structured global 0.9 + kd, channels not padded, pools gather": [
        "optimization=prune_structured_kd", "prune.round_to=1", "prune.slice_pools=false", "prune.split_producers=false"],
    "OpenVINO int8 (nncf), structured global 0.9 + kd (prune_structured_kd_quant)": ["optimization=prune_structured_kd_quant"],
    # the kd_variants sweep's champion on the AMD EPYC (docs/results/kd_variants-amd-epyc-avx512.md)
    "OpenVINO int8 (nncf), structured global 0.9 + kd on decoded strings (kd_variants' pick)": [
        "optimization=prune_structured_kd_quant", "finetune.loss=ctc"],
    # the stage_search sweep's champion on the AMD EPYC (docs/results/stage_search-amd-epyc-avx512.md)
    "OpenVINO int8 (nncf), structured per-stage + kd (stage_search's pick)": [
        "optimization=prune_structured_kd_quant", "prune.stages.block1=0.3587333672627762", "prune.stages.block2=0.9203314116755277",
        "prune.stages.block3=0.9138610465103167", "prune.stages.head=0.9295807528416108", "prune.stages.classifier=0.8524426740567261"],
    # the netadapt greedy's pick on the AMD EPYC (docs/results/netadapt-amd-epyc-avx512.md): block3 pruned a fifth further
    "OpenVINO int8 (nncf), structured per-stage + kd (netadapt's pick)": [
        "optimization=prune_structured_kd_quant", "prune.stages.block1=0.3", "prune.stages.block2=0.87",
        "prune.stages.block3=0.9632", "prune.stages.head=0.961", "prune.stages.classifier=0.938"],
    "OpenVINO int8 (nncf), structured global 0.9 + kd, pools gather": [  # the preset slices them
        "optimization=prune_structured_kd_quant", "prune.slice_pools=false", "prune.split_producers=false"],
    "OpenVINO int8 (nncf), structured global 0.9 + kd, channels and pools padded to 8, pools gather": [
        "optimization=prune_structured_kd_quant", "prune.pool_round_to=0", "prune.slice_pools=false", "prune.split_producers=false"],  # the preset pads its pools to 32
    "OpenVINO int8 (nncf), structured global 0.9 + kd, not padded, pools gather": [
        "optimization=prune_structured_kd_quant", "prune.round_to=1", "prune.pool_round_to=0", "prune.slice_pools=false", "prune.split_producers=false"],
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
BASELINES = ("ORT fp32", "OpenVINO fp32", "torch eager fp32", peers.PLAIN_NNCF)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpr_sweep.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=40, help="timed calls per row per round")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), metavar="ROW",
                        help="a subset of rows (the baselines and the peers are always measured)")
    parser.add_argument("--profile", action="store_true", help="print each row's five costliest ops and its time by op type "
                                                               "(OpenVINO, ONNX Runtime and TVM rows)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file (e.g. docs/results/bench-<cpu>.md)")
    args = parser.parse_args(argv)
    names = list(dict.fromkeys(n for n in (*BASELINES, *args.rows) if n in ROWS))  # the peers are built apart

    with initialize(config_path="../conf", version_base="1.3"), tempfile.TemporaryDirectory() as tmp:
        confs = {}
        for n in names:
            try:
                confs[n] = config.validate(compose("config", overrides=[*ROWS[n], f"hardware.threads={args.threads}"]))
            except ConfigError as e:  # e.g. bf16 on a CPU without it: the other rows still run
                print(f"skipped row {n!r}: {e}", file=sys.stderr)
        names = list(confs)
        base = confs["ORT fp32"]
        root, calib, val, scored = data.load(base.data)
        built = {n: pipeline.build(confs[n], root, calib, val, Path(tmp) / str(i), pipeline.Stages(n))
                 for i, n in enumerate(names)}
        rows = {n: (b.runtime, b.fp32_onnx, b.guard) for n, b in built.items()}
        by_hand = peers.build(base.model.file(root), calib.images[: base.quant.calib_size], args.threads, Path(tmp) / "peers")
        rows.update({n: (p, by_hand[peers.PLAIN_ORT].path, None) for n, p in by_hand.items()})
        names = [*names[:3], *peers.NAMES, *names[3:]]
        x = benchmark.inputs(scored, 1)
        for rt, _, _ in rows.values():
            benchmark.time_calls(rt, x, args.warmup, 1)
        times: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for n in names:
                times[n].append(benchmark.time_calls(rows[n][0], x, 0, args.calls))
        stats = {n: benchmark.summarize(np.concatenate(times[n])) for n in names}
        round_p50 = {n: np.array([np.median(t) for t in times[n]]) for n in names}
        accuracy = {n: evaluate.run(rows[n][0], scored, base.evaluate).accuracy for n in names}

        out: list[str] = []
        hw, commit = hardware.fingerprint(), tracking.git_commit()
        out.append(f"# make bench: `python -m lpr_sweep.bench {' '.join(argv if argv is not None else sys.argv[1:])}` at commit "
                   f"{commit[:12] + ('-dirty' if commit.endswith('-dirty') else '')}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {hw['hw.cpu']} ({hw['hw.isa']}), "
                   f"{args.threads} threads, batch 1, {args.warmup} warm-up + {args.rounds}x{args.calls} interleaved "
                   f"timed calls per row; speed-ups: median of per-round ratios [95 % bootstrap over rounds]; "
                   f"accuracy on {len(scored)} scored plates, drop in points against ORT fp32; "
                   f"int8 calibrated on {len(calib)} and guarded on {len(val)} other plates, none of them scored; "
                   f"peers built by hand as lpr_sweep/peers.py says (OpenVINO's own precision: "
                   f"{'; '.join(n.split(', ', 1)[1] + ': ' + by_hand[n].precision for n in peers.NAMES[1:])})")
        out.append("| row | MACs M | p50 ms | p90 ms | vs ORT fp32 | vs OpenVINO fp32 | vs torch eager | vs peer OpenVINO + NNCF | accuracy "
                   "| drop pts | int8 guard | file bytes | nonzero bytes | gzip bytes |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for n in names:
            rt, onnx_path, guard = rows[n]
            p50 = stats[n]["latency_p50_ms"]
            sizes = size.measure(rt.artifacts, rt.constants())
            ratios = " | ".join("{:.2f}x [{:.2f}, {:.2f}]".format(*benchmark.interval(round_p50[b] / round_p50[n])) for b in BASELINES)
            verdict = "-" if guard is None else f"{guard.row['method']}, float: {guard.row['keep_float']}" + ("" if guard.met else " (NOT met)")
            out.append(f"| {n} | {size.macs(onnx_path) / 1e6:.1f} | {p50:.2f} | {stats[n]['latency_p90_ms']:.2f} | {ratios} | {accuracy[n]:.4f} "
                       f"| {100 * (accuracy['ORT fp32'] - accuracy[n]):.2f} | {verdict} | {sizes['size_file_bytes']} "
                       f"| {sizes['size_nonzero_bytes']} | {sizes['size_gzip_bytes']} |")
        if args.profile:
            for n, b in built.items():
                ops = profile.take(confs[n].profile, confs[n].runtime, b.loaded, confs[n].hardware, x, Path(tmp) / "profile" / n)
                out.append(f"\n## {n}\n")
                if not ops:
                    out.append(f"no profile: runtime {confs[n].runtime.name} gives none")
                    continue
                m = profile.metrics(ops, getattr(runtime.get(confs[n].runtime), "kernel_names", False))
                ref = f"{m['profile_ref_kernel_us']:.0f} in kernels named ref_*" if "profile_ref_kernel_us" in m else "kernels not named"
                out.append(f"{m['profile_total_us']:.0f} µs per call in {len(ops)} ops; {ref}; {m['profile_reorder_us']:.0f} in Reorders\n")
                out.append("\n".join(profile.table(ops, 5)))
                out.append("\nµs per call by op type: " + ", ".join(f"{k} {v:.0f}" for k, v in profile.by_op_type(ops)[:8]))
    text = "\n".join(out) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
