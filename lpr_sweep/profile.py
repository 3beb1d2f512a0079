"""Where a trial's time goes: a per-op profile from the runtime's own counters; the ``profile`` group.

Taken after the paired timing, on a load of its own (counters on), so it never disturbs the
timing that decides. Each runtime that can count says so with a ``profile(model_file, hardware,
workdir, x, warmup, calls)`` classmethod returning one dict per op (``node``, ``op_type``, ``kernel``, ``precision``, ``us_per_call``):
- OpenVINO: ``PERF_COUNT`` counters (node, layer type, kernel implementation such as
  ``brgconv_avx512_I8`` or ``ref_f32``, its precision);
- ONNX Runtime: its session profiler (node, op type, execution provider, input element type);
- TVM: the Relax VM's instrument hook around every call (compiled kernels and VM builtins).
PyTorch gives none.

Logged per trial: ``profile.csv`` (node, op type, kernel, precision, µs per call averaged over
``profile.calls`` calls after ``profile.warmup``), ``profile.png`` (time by op type) and the metrics
``profile_total_us``, ``profile_ops``, ``profile_reorder_us`` (layout conversions) and, where the
runtime names its kernels, ``profile_ref_kernel_us`` (OpenVINO's ``ref_*`` reference kernels).
Per-op times are the runtime's own, so they need not add up to the paired p50 (that includes the
call's overhead) and they come from a process whose counters are on.
"""
from __future__ import annotations

import collections
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpr_sweep import ConfigError, runtime
from lpr_sweep.tracking import record


@dataclass
class ProfileConfig:
    enabled: bool = True
    warmup: int = 20  # uncounted calls first
    calls: int = 200  # counted calls, averaged

    def __post_init__(self):
        if self.calls < 100 or self.warmup < 0:
            raise ConfigError(f"profile.calls={self.calls} must be >= 100 and profile.warmup={self.warmup} >= 0 "
                              "(fewer calls average too little); use profile.calls=200 or profile.enabled=false")


def available(runtime_cfg: Any) -> bool:
    return hasattr(runtime.get(runtime_cfg), "profile")


def take(cfg: ProfileConfig, runtime_cfg: Any, model_file: Any, hardware: Any, x: np.ndarray, workdir: Path) -> list[dict]:
    """The per-op rows of ``model_file`` on ``runtime_cfg`` (a RuntimeConfig or a name), costliest
    first; [] when profiles are off or the runtime cannot count."""
    if not cfg.enabled or not available(runtime_cfg):
        return []
    workdir.mkdir(parents=True, exist_ok=True)
    ops = runtime.get(runtime_cfg).profile(model_file, hardware, workdir, x, cfg.warmup, cfg.calls, **runtime.options(runtime_cfg))
    return sorted(ops, key=lambda r: -r["us_per_call"])


def is_ref(row: dict) -> bool:
    return row["kernel"].startswith("ref")


def metrics(rows: list[dict], names_kernels: bool) -> dict[str, float]:
    if not rows:
        return {}
    out = {"profile_total_us": sum(r["us_per_call"] for r in rows), "profile_ops": float(len(rows)),
           "profile_reorder_us": sum(r["us_per_call"] for r in rows if "Reorder" in r["op_type"])}
    if names_kernels:
        out["profile_ref_kernel_us"] = sum(r["us_per_call"] for r in rows if is_ref(r))
    return out


def by_op_type(rows: list[dict]) -> list[tuple[str, float]]:
    total: dict[str, float] = collections.defaultdict(float)
    for r in rows:
        total[r["op_type"]] += r["us_per_call"]
    return sorted(total.items(), key=lambda kv: -kv[1])


def from_csv(text: str) -> list[dict]:
    return [{**r, "us_per_call": float(r["us_per_call"])} for r in csv.DictReader(io.StringIO(text))]


def plot(rows: list[dict], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = by_op_type(rows)[:15][::-1]
    ref = {k: sum(r["us_per_call"] for r in rows if r["op_type"] == k and is_ref(r)) for k, _ in kinds}
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(kinds) + 1.2))
    ax.barh([k for k, _ in kinds], [v for _, v in kinds], color="tab:blue", label="optimized kernels")
    if any(ref.values()):
        ax.barh([k for k, _ in kinds], [ref[k] for k, _ in kinds], color="tab:red", label="reference kernels (ref_*)")
        ax.legend(loc="lower right")
    ax.set_xlabel("µs per call")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def table(rows: list[dict], n: int = 5) -> list[str]:
    """The ``n`` costliest ops as markdown rows, with their share of the profiled time."""
    total = sum(r["us_per_call"] for r in rows) or 1.0
    lines = ["| node | op type | kernel | precision | µs per call | share |", "|---|---|---|---|---:|---:|"]
    lines += [f"| {r['node']} | {r['op_type']} | {r['kernel']} | {r['precision']} | {r['us_per_call']:.1f} "
              f"| {100 * r['us_per_call'] / total:.0f} % |" for r in rows[:n]]
    return lines


def by_stage(rows: list[dict], onnx_path: Path) -> dict[str, float]:
    """µs per call of the convolutions of each LPRNet stage (``prune.STAGES``), for the runtimes whose
    profile keeps the ONNX graph's node names (OpenVINO: ``node_Conv_69/WithoutBiases``); {} for
    those that rename fused nodes (ONNX Runtime's ``relu_16_nchwc``) or compile them (TVM). A conv's
    stage is its weight's name in the graph (``backbone.8.block.2.weight``: block2)."""
    import onnx

    from lpr_sweep.prune import stage_of

    stage = {n.name: stage_of(n.input[1]) for n in onnx.load(str(onnx_path), load_external_data=False).graph.node
             if n.op_type == "Conv" and len(n.input) > 1}
    out: dict[str, float] = collections.defaultdict(float)
    for r in rows:
        if (s := stage.get(r["node"].split("/")[0])) is not None:
            out[s] += r["us_per_call"]
    return dict(out)


def log(rows: list[dict], runtime_cfg: Any, title: str, workdir: Path, onnx_path: Path | None = None) -> dict[str, float]:
    """``profile.csv`` and ``profile.png`` on the active run; the profile's metrics, with
    ``profile_us_<stage>`` (conv time per LPRNet stage) where the nodes map to ``onnx_path``'s convs."""
    import mlflow

    if not rows:
        return {}
    record.log_table([{**r, "us_per_call": f"{r['us_per_call']:.2f}"} for r in rows], "profile.csv")
    mlflow.log_artifact(str(plot(rows, title, workdir / "profile.png")))
    stages = by_stage(rows, onnx_path) if onnx_path else {}
    return {**metrics(rows, getattr(runtime.get(runtime_cfg), "kernel_names", False)), **{f"profile_us_{k}": v for k, v in stages.items()}}


def of_run(run_id: str) -> list[dict]:
    """A logged trial's profile ([] when it has none: a runtime without counters, or an older run)."""
    import mlflow

    try:
        return from_csv(mlflow.artifacts.load_text(f"runs:/{run_id}/profile.csv"))
    except Exception:  # MLflow raises several types for a missing artifact
        return []


def per_call(totals: dict[tuple[str, str, str, str], float], calls: int) -> list[dict]:
    """Rows from {(node, op type, kernel, precision): µs summed over ``calls`` calls}."""
    return [{"node": k[0], "op_type": k[1], "kernel": k[2], "precision": k[3], "us_per_call": us / calls}
            for k, us in totals.items()]
