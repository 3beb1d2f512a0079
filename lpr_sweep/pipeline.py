"""One trial, top to bottom: data -> model -> prune -> export -> runtime -> evaluate -> benchmark -> size.

``run(cfg)`` is what ``python -m lpr_sweep`` calls per trial and what tests call directly.
"""
from __future__ import annotations

import csv
import io
import logging
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lpr_sweep import benchmark, config, data, evaluate, export, hardware, prune, runtime, size, tracking
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
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["file", "label", "prediction", "correct"])
    writer.writerows(zip(plates.files, plates.labels, result.predictions, map(int, result.correct)))
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

        weights = Path(conf.model.weights)
        net = lprnet.load(weights if weights.is_absolute() else root / weights, conf.model.norm)
        prune.run(net, conf.prune)
        onnx_path = export.to_onnx(net, workdir / "model.onnx")
        rt = runtime.build(conf.runtime.name, model=net, onnx_path=onnx_path, hardware=conf.hardware, workdir=workdir)

        log.info("evaluating %s on %d scored plates", rt.name, len(scored))
        result = evaluate.run(rt, scored, conf.evaluate)
        log.info("benchmarking %s: %d warm-up, %d timed calls", rt.name, conf.benchmark.warmup, conf.benchmark.repeats)
        metrics = {
            "accuracy": result.accuracy,
            "char_accuracy": result.char_accuracy,
            "sparsity": prune.sparsity(net),
            **benchmark.run(rt, scored, conf.benchmark),
            **size.measure(rt.artifact, onnx_path),
        }
        mlflow.log_metrics(metrics)
        mlflow.log_text(_predictions_csv(scored, result), "predictions.csv")
        mlflow.log_artifact(str(onnx_path))
        if rt.artifact != onnx_path:
            mlflow.log_artifact(str(rt.artifact))
    log.info("accuracy %.4f, p50 %.2f ms", metrics["accuracy"], metrics["latency_p50_ms"])
    return metrics
