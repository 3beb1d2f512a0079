"""One trial, top to bottom: data -> model -> prune -> export -> quant -> runtime -> evaluate -> benchmark -> size.

``run(cfg)`` is what ``python -m lpr_sweep`` calls per trial and what tests call directly.
"""
from __future__ import annotations

import csv
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from omegaconf import DictConfig, OmegaConf

from lpr_sweep import benchmark, compile, config, data, evaluate, export, hardware, prune, quant, runtime, size, tracking
from lpr_sweep import model as lprnet

log = logging.getLogger(__name__)


def _workdir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(tempfile.mkdtemp(prefix="lpr_sweep-"))


def _run_name(cfg: config.Config) -> str:
    from hydra.core.hydra_config import HydraConfig

    overrides = HydraConfig.get().job.override_dirname if HydraConfig.initialized() else ""
    return overrides or cfg.optimization.name


def _predictions_csv(plates: data.Plates, result: evaluate.Result) -> str:
    return _csv([
        {"file": f, "label": t, "prediction": p, "correct": int(c)}
        for f, t, p, c in zip(plates.files, plates.labels, result.predictions, result.correct)
    ])


@dataclass
class Built:
    """A trial's model, ready to measure."""

    runtime: runtime.Runtime
    prepared: runtime.Prepared
    fp32_onnx: Path
    sparsity: float
    params_dense: int
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # structured: conv -> (before, after)
    guard: quant.Guard | None = None
    fp32_accuracy: float | None = None
    compile_stats: dict[str, float] = field(default_factory=dict)


def build(conf: config.Config, root: Path, calib: data.Plates, scored: data.Plates, workdir: Path) -> Built:
    """Load, prune, export and (under the accuracy guard) quantize; return the runtime to measure."""
    weights = Path(conf.model.weights)
    net = lprnet.load(weights if weights.is_absolute() else root / weights, conf.model.norm)
    prune.run(net, conf.prune)
    sparsity = prune.sparsity(net)  # of the pruned weights, before structured removal drops the dead ones
    channels = prune.remove_dead_channels(net) if conf.prune.structured else {}
    prepared = runtime.Prepared(net, export.to_onnx(net, workdir / "model.onnx"))

    compile_stats: dict[str, float] = {}
    builds: list[dict[str, float]] = []

    def on_runtime(p: runtime.Prepared) -> runtime.Runtime:
        if conf.runtime.name == "tvm":  # TVM runs what the compile stage builds from the ONNX file
            # A folder per build: the guard's candidates must not overwrite a library still loaded.
            p, stats = compile.run(p, conf.compile, conf.hardware, workdir / f"tvm_{len(builds)}")
            builds.append(stats)
            compile_stats.update(stats)
            for key in ("tune_trials_run", "tune_seconds"):  # every build of this trial counts
                compile_stats[key] = sum(b[key] for b in builds)
        return runtime.build(conf.runtime.name, p, conf.hardware, workdir)

    built = Built(on_runtime(prepared), prepared, prepared.path, sparsity, prune.params_dense(net), channels,
                  compile_stats=compile_stats)
    if conf.quant.backend != "none":
        built.fp32_accuracy = evaluate.run(built.runtime, scored, conf.evaluate).accuracy
        built.guard = quant.run(
            prepared, calib, scored, conf.quant, build=on_runtime, fp32_accuracy=built.fp32_accuracy,
            layers=[name for name, _ in prune.conv_layers(net)], workdir=workdir / "quant", score_cfg=conf.evaluate,
        )
        built.prepared = built.guard.chosen
        built.runtime = on_runtime(built.prepared)
    return built


def graph_of(built: Built) -> Path | torch.nn.Module:
    """What size and sparsity are counted on: the module torch runs, or the file other runtimes load."""
    return built.prepared.module if built.runtime.name == "torch" else built.prepared.path


def _log_quant(conf: config.Config, built: Built, n_calib: int) -> dict[str, float]:
    import mlflow

    guard = built.guard
    mlflow.log_text(_csv(guard.rows), "quant_candidates.csv")
    if guard.sensitivity:
        mlflow.log_text(_csv([{"conv_kept_float": n, "logit_mse": e} for n, e in guard.sensitivity]), "quant_sensitivity.csv")
    mlflow.log_params({"quant.n_calib_used": min(conf.quant.calib_size, n_calib),
                       "quant.chosen_method": guard.row["method"], "quant.chosen_keep_float": guard.row["keep_float"]})
    verdict = "met" if guard.met else f"not met: best drop {guard.row['drop_pts']:.2f} pts > {conf.quant.max_drop}"
    mlflow.set_tag("quant_guard", verdict)
    return {"accuracy_fp32": built.fp32_accuracy, "quant_candidates": len(guard.rows),
            "sparsity_int8": size.int8_sparsity(graph_of(built))}


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def run(cfg: DictConfig, workdir: Path | None = None) -> dict[str, float]:
    conf = config.validate(cfg)  # ranges first: a bad value costs nothing
    hardware.check(conf.hardware)
    workdir = Path(workdir) if workdir else _workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    params = tracking.flatten(resolved)

    with tracking.trial(conf.tracking, run_name=_run_name(conf), params=params, parent_run_id=tracking.parent_run_id()):
        import mlflow

        root, calib, scored = data.load(conf.data)
        mlflow.log_params({
            "protocol.data_root": str(root),
            "protocol.n_scored": len(scored),
            "protocol.n_calib": len(calib),
            "protocol.images_resized": calib.resized + scored.resized,
            "protocol.threads": hardware.threads(conf.hardware),
            "protocol.latency_batch": 1,
            "protocol.latency_input": "first scored plate",
        })
        mlflow.log_text("\n".join(scored.files) + "\n", "scored_files.txt")
        mlflow.log_text(OmegaConf.to_yaml(resolved), "config.yaml")

        built = build(conf, root, calib, scored, workdir)
        rt = built.runtime
        metrics = {"sparsity": built.sparsity, "params_dense": built.params_dense, "macs": size.macs(built.fp32_onnx),
                   **built.compile_stats}
        if built.channels:
            mlflow.log_text(_csv([{"conv": k, "channels_before": a, "channels_after": b} for k, (a, b) in built.channels.items()]),
                            "structured_channels.csv")
        if built.guard:
            metrics.update(_log_quant(conf, built, len(calib)))

        log.info("evaluating %s on %d scored plates", rt.name, len(scored))
        result = evaluate.run(rt, scored, conf.evaluate)
        metrics.update(accuracy=result.accuracy, char_accuracy=result.char_accuracy)
        if "accuracy_fp32" in metrics:
            metrics["accuracy_drop_pts"] = 100 * (metrics["accuracy_fp32"] - result.accuracy)
        log.info("benchmarking %s: %d warm-up, %d timed calls", rt.name, conf.benchmark.warmup, conf.benchmark.repeats)
        metrics.update(benchmark.run(rt, scored, conf.benchmark))
        metrics.update(size.measure(rt.artifacts, graph_of(built)))
        mlflow.log_metrics(metrics)
        mlflow.log_text(_predictions_csv(scored, result), "predictions.csv")
        for path in {built.fp32_onnx, *rt.artifacts}:
            mlflow.log_artifact(str(path))
    log.info("accuracy %.4f, p50 %.2f ms", metrics["accuracy"], metrics["latency_p50_ms"])
    return metrics
