"""One trial, top to bottom: data -> model -> prune -> export -> quant -> runtime -> evaluate -> benchmark -> size.

``run(cfg)`` is what ``python -m lpr_sweep`` calls per trial and what tests call directly.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lpr_sweep import benchmark, cache, config, data, evaluate, export, finetune, hardware, profile, prune, quant, runtime, signals, size, tracking
from lpr_sweep import model as lprnet
from lpr_sweep.model_file import ModelFile
from lpr_sweep.prune import channels
from lpr_sweep.tracking import record, sweep

log = logging.getLogger(__name__)


def _workdir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(tempfile.mkdtemp(prefix="lpr_sweep-"))


def _run_name(cfg: config.Config) -> str:
    return cfg.tracking.run_name or _overrides() or cfg.optimization.name


def _overrides() -> str:
    """The job's overrides but the paths (Hydra's override_dirname), or empty outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().job.override_dirname if HydraConfig.initialized() else ""


class Stages:
    """Says which stage of which trial is running, and sums each stage's seconds."""

    def __init__(self, trial: str = ""):
        self.trial = trial
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        log.info("[%s] stage %s", self.trial, name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = f"stage_{name}_seconds"
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0
        signals.check_interrupted()


@dataclass
class Built:
    """A trial's model, ready to measure."""

    runtime: runtime.Runtime
    model_file: ModelFile  # what the runtime was built from (before any lowering)
    fp32_onnx: Path
    sparsity: float
    params_dense: int
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # structured: conv -> (before, after)
    zero_channels: dict[str, int] = field(default_factory=dict)  # prune.round_to: conv -> all-zero channels added
    finetune: finetune.Log | None = None
    guard: quant.Guard | None = None
    fp32_accuracy: float | None = None  # int8 trials: the fp32 model on the validation plates (the guard's yardstick)
    fp32_runtime: runtime.Runtime | None = None  # int8 trials: that fp32 model, to report its scored accuracy
    lowering_stats: dict[str, float] = field(default_factory=dict)
    cache_hits: dict[str, float] = field(default_factory=dict)
    loaded: ModelFile | None = None  # what ``runtime`` loaded (after any lowering): more loads come from it


class _Runner:
    """Lowers (where the runtime declares a lowering stage) and builds the trial's runtime, as often
    as the int8 guard asks; counts and seconds add up over every build, the rest is the last's."""

    def __init__(self, conf: config.Config, workdir: Path, stages: Stages):
        self.conf, self.workdir, self.stages = conf, workdir, stages
        self.stage = getattr(runtime.get(conf.runtime), "lowering", None)
        self.builds = 0
        self.stats: dict[str, float] = {}
        self.loaded: ModelFile | None = None

    def __call__(self, model_file: ModelFile) -> runtime.Runtime:
        if self.stage:
            # A folder per build: the guard's candidates must not overwrite a library still loaded.
            with self.stages(self.stage):
                model_file, stats = runtime.lower(self.conf, model_file, self.workdir / f"{self.stage}_{self.builds}")
            self.builds += 1
            for key, value in stats.items():
                additive = key.endswith(("_seconds", "_run")) and key in self.stats
                self.stats[key] = self.stats[key] + value if additive else value
        self.loaded = model_file
        return runtime.build(self.conf.runtime, model_file, self.conf.hardware, self.workdir)


def _export(conf: config.Config, weights: Path, prune_cfg: prune.PruneConfig, workdir: Path, stages: Stages,
            calib: data.Plates | None = None, teacher: runtime.Runtime | None = None) -> tuple[ModelFile, dict, str, bool]:
    """Load, prune and (with ``finetune=kd``) distil from ``teacher`` on the calibration plates, then
    export, each through the stage cache: (fp32 model file, prune facts, export key, export hit)."""
    finetune_cfg = conf.finetune if teacher is not None else finetune.FinetuneConfig()
    with stages("prune"):
        net = lprnet.load(weights, conf.model.norm)
        prune.run(net, prune_cfg)
        facts = {"sparsity": prune.sparsity(net)}  # of the pruned weights, before structured removal drops the dead ones
        facts["channels"] = channels.remove_dead_channels(net) if prune_cfg.structured else {}
    # round_to, pool_round_to, slice_pools and split_producers reshape after the finetune, so only the export depends on them
    reshaping = ("round_to", "pool_round_to", "slice_pools", "split_producers")
    weights_cfg = {k: v for k, v in asdict(prune_cfg).items() if k not in reshaping}
    source = cache.key("prune", cache.file_digest(weights), weights_cfg, conf.model.norm)
    if finetune_cfg.enabled:
        # the teacher is the reference runtime, which depends on the device (torch on cuda)
        source = cache.key("finetune", source, asdict(finetune_cfg), calib.files, conf.hardware.device)

        def distil(out: Path) -> None:
            finetune.save(net, finetune.run(net, teacher, calib.images, finetune_cfg), out)

        with stages("finetune"):
            folder, facts["cache_hit_finetune"] = cache.fetch(conf.cache, "finetune", source, distil, workdir)
            facts["finetune"] = finetune.load(net, folder)
    zero = channels.reshape(net, prune_cfg)
    if zero:
        facts["zero_channels"] = zero
    key = cache.key("export", source, *(getattr(prune_cfg, k) for k in reshaping[2:]), prune_cfg.round_to, prune_cfg.pools_to)
    with stages("export"):
        folder, hit = cache.fetch(conf.cache, "export", key, lambda out: export.to_onnx(net, out / "model.onnx"), workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return ModelFile(net, Path(shutil.copy(folder / "model.onnx", workdir / "model.onnx"))), facts, key, hit


def reference(conf: config.Config, root: Path, workdir: Path) -> tuple[runtime.Runtime, str]:
    """What every trial is paired with: the unpruned, unquantized fp32 model (same norm) on the
    benchmark's reference runtime, with the trial's threads; and a line that says what it is."""
    name = conf.benchmark.reference_runtime(conf.hardware.device)
    fp32, _, _, _ = _export(conf, conf.model.file(root), prune.PruneConfig(), workdir, Stages("reference"))
    rt = runtime.build(name, fp32, conf.hardware, workdir)
    return rt, f"unpruned fp32 ONNX export (model.norm={conf.model.norm}) on {name}, hardware={conf.hardware.device}"


def build(conf: config.Config, root: Path, calib: data.Plates, val: data.Plates, workdir: Path,
          stages: Stages | None = None, teacher: runtime.Runtime | None = None) -> Built:
    """Load, prune, export and (under the accuracy guard) quantize; return the runtime to measure.

    Export and quantization come from the stage cache when an earlier trial built them from the
    same inputs; pruning is cheap and deterministic, so it always runs (the torch runtime needs it).
    The int8 guard decides on the validation plates ``val``; it never sees a scored plate.
    """
    stages = stages or Stages()
    workdir.mkdir(parents=True, exist_ok=True)
    if conf.finetune.enabled and teacher is None:
        teacher, _ = reference(conf, root, workdir / "reference")
    fp32, facts, export_key, hit = _export(conf, conf.model.file(root), conf.prune, workdir, stages, calib, teacher)
    hits = {"cache_hit_export": float(hit)}
    if "cache_hit_finetune" in facts:
        hits["cache_hit_finetune"] = float(facts["cache_hit_finetune"])

    runner = _Runner(conf, workdir, stages)
    with stages("runtime"):
        built = Built(runner(fp32), fp32, fp32.path, facts["sparsity"], prune.params_dense(fp32.module), facts["channels"],
                      facts.get("zero_channels", {}), facts.get("finetune"), lowering_stats=runner.stats, cache_hits=hits)
    if conf.quant.backend != "none":
        with stages("evaluate_fp32"):
            built.fp32_accuracy = evaluate.run(built.runtime, val, conf.evaluate).accuracy
        with stages("quant"):
            built.guard, hits["cache_hit_quant"] = _quantize(conf, fp32, export_key, calib, val, runner,
                                                             built.fp32_accuracy, workdir)
        built.fp32_runtime = built.runtime
        built.model_file = built.guard.chosen
        with stages("runtime"):
            built.runtime = runner(built.model_file)
    hits["cache_hits"] = sum(hits.values())
    built.loaded = runner.loaded
    return built


def loads(conf: config.Config, built: Built, workdir: Path) -> list[runtime.Runtime]:
    """The trial's runtime and ``benchmark.loads - 1`` more loads of the same files, to time."""
    out = [built.runtime]
    for i in range(1, conf.benchmark.loads):
        (workdir / f"load_{i}").mkdir(parents=True, exist_ok=True)
        out.append(runtime.build(conf.runtime, built.loaded, conf.hardware, workdir / f"load_{i}"))
    return out


def _quantize(conf: config.Config, fp32: ModelFile, export_key: str, calib: data.Plates, val: data.Plates,
              runner: _Runner, fp32_accuracy: float, workdir: Path) -> tuple[quant.Guard, float]:
    """The accuracy guard's choice, from the stage cache when this export was quantized so before."""
    backend = quant.backend_of(conf.quant)

    def guard() -> quant.Guard:
        return quant.run(
            fp32, calib.images, conf.quant, score=lambda m: evaluate.run(runner(m), val, conf.evaluate).accuracy,
            logits=lambda m, images: runner(m)(images), fp32_accuracy=fp32_accuracy,
            layers=[name for name, _ in prune.conv_layers(fp32.module)], workdir=workdir / "quant",
        )

    if not backend.cacheable:
        return guard(), 0.0
    lowering = runner.stage and asdict(getattr(conf, runner.stage))  # the guard scores what the lowering builds
    key = cache.key("quant", export_key, asdict(conf.quant), asdict(conf.runtime), lowering, asdict(conf.evaluate),
                    calib.files[: conf.quant.calib_size], val.files, conf.hardware.device,
                    packages=backend.packages + runtime.get(conf.runtime).packages)
    folder, hit = cache.fetch(conf.cache, "quant", key, lambda out: guard().save(out), workdir)
    return quant.Guard.load(folder, fp32), float(hit)


def _log_quant(conf: config.Config, built: Built, n_calib: int) -> dict[str, float]:
    guard = built.guard
    verdict = "met" if guard.met else f"not met: best drop {guard.row['drop_pts']:.2f} pts > {conf.quant.max_drop}"
    record.log_quant(guard, {"quant.n_calib_used": min(conf.quant.calib_size, n_calib), "quant.chosen_method": guard.row["method"],
                               "quant.chosen_keep_float": guard.row["keep_float"]}, verdict)
    return {"val_accuracy_fp32": built.fp32_accuracy, "quant_candidates": len(guard.rows),
            "sparsity_int8": size.int8_sparsity(built.runtime.constants())}


def _accuracy(result: evaluate.Result, ref: evaluate.Result, n: int) -> dict[str, float]:
    """Scored-plate accuracy with its Wilson interval, and the paired difference against the reference."""
    low, high = evaluate.wilson(sum(result.correct), n)
    return {"accuracy": result.accuracy, "accuracy_ci_low": low, "accuracy_ci_high": high,
            "char_accuracy": result.char_accuracy, "accuracy_ref": ref.accuracy,
            **evaluate.paired_drop(ref.correct, result.correct)}


def _description(conf: config.Config, name: str) -> str:
    """The run's description in the MLflow UI: what varies, and what it is."""
    per_stage = "".join(f", {k} {v:.3g}" for k, v in conf.prune.stages.set().items())
    parts = [f"runtime {conf.runtime.name}", f"prune {conf.prune.scope.value} {conf.prune.ratio}{per_stage}"
             + (" structured" if conf.prune.structured else ""), f"finetune {conf.finetune.method}", f"quant {conf.quant.backend}"]
    return f"Trial `{name}` (preset {conf.optimization.name}): " + ", ".join(parts) + "."


def run(cfg: DictConfig, workdir: Path | None = None) -> dict[str, float]:
    conf = config.validate(cfg)  # ranges first: a bad value costs nothing
    hardware.check(conf.hardware)
    config.preflight(conf)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    config_hash = tracking.config_hash(resolved, data.identity(conf.data))
    name = _run_name(conf)
    if conf.resume and (done := tracking.finished_trial(conf.tracking, config_hash)) is not None:
        log.info("[%s] resume: already FINISHED as run %s; skipped", name, done.info.run_id)
        parent = sweep.parent_run_id()
        if parent and done.data.tags.get("mlflow.parentRunId") != parent:  # another sweep's: this one's report needs it too
            sweep.link_reused(conf.tracking, done.info.run_id, parent)
        return dict(done.data.metrics)
    workdir = Path(workdir) if workdir else _workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    params = tracking.flatten(resolved)
    stages = Stages(name)

    packages = runtime.get(conf.runtime).packages + (quant.backend_of(conf.quant).packages if conf.quant.backend != "none" else ())
    with record.trial(conf.tracking, run_name=name, params=params, parent_run_id=sweep.parent_run_id(),
                        config_hash=config_hash, packages=packages, overrides=_overrides()):
        with stages("data"):
            root, calib, val, scored = data.load(conf.data)
        with stages("reference"):
            ref, ref_what = reference(conf, root, workdir / "reference")
        record.log_trial({
            "protocol.data_root": str(root),
            # what the report checks before it ranks two trials together (selection.COMPARABLE_PARAMS)
            "protocol.data_identity": data.identity(conf.data),
            "protocol.scored_digest": data.files_digest(scored),
            "protocol.val_digest": data.files_digest(val),
            "protocol.n_scored": len(scored),
            "protocol.n_calib": len(calib),
            "protocol.n_val": len(val),
            "protocol.images_resized": calib.resized + val.resized + scored.resized,
            "protocol.threads": hardware.threads(conf.hardware),
            "protocol.parallel_jobs": hardware.parallel_jobs(),
            "protocol.reference": ref_what,
            **benchmark.protocol(conf.benchmark, ref_what),
        }, _description(conf, name), OmegaConf.to_yaml(resolved))
        record.log_plates(root, {"scored": scored, "val": val, "calib": calib}, conf.data.seed)

        built = build(conf, root, calib, val, workdir, stages, teacher=ref)
        rt = built.runtime
        metrics = {"sparsity": built.sparsity, "params_dense": built.params_dense, "macs": size.macs(built.fp32_onnx),
                   **built.lowering_stats, **built.cache_hits}
        if built.channels:
            record.log_table([{"conv": k, "channels_before": a, "channels_after": b, "zero_channels_added": built.zero_channels.get(k, 0)}
                              for k, (a, b) in built.channels.items()],
                               "structured_channels.csv")
        if built.finetune:
            metrics.update(finetune_seconds=built.finetune.seconds, finetune_loss_final=built.finetune.losses[-1])
            record.log_finetune(built.finetune.losses, calib.files)
        if built.guard:
            metrics.update(_log_quant(conf, built, len(calib)))

        with stages("evaluate"):
            result = evaluate.run(rt, scored, conf.evaluate)
            ref_result = evaluate.run(ref, scored, conf.evaluate)
            metrics.update(_accuracy(result, ref_result, len(scored)))
            if len(val):  # the decisions' accuracy: the validation plates against the same reference
                on_val, ref_val = evaluate.run(rt, val, conf.evaluate), evaluate.run(ref, val, conf.evaluate)
                paired = evaluate.paired_drop(ref_val.correct, on_val.correct)
                metrics.update(val_accuracy=on_val.accuracy, val_drop_pts=paired["drop_pts"],
                               val_drop_pts_ci_high=paired["drop_pts_ci_high"])
            if built.fp32_runtime is not None:
                metrics["accuracy_fp32"] = evaluate.run(built.fp32_runtime, scored, conf.evaluate).accuracy
                metrics["accuracy_drop_pts"] = 100 * (metrics["accuracy_fp32"] - result.accuracy)
        with stages("benchmark"):
            metrics.update(benchmark.run(loads(conf, built, workdir), ref, scored, conf.benchmark, hardware.threads(conf.hardware)))
        if metrics.get("bench_host_busy"):
            log.warning("[%s] other processes used %.2f cores of this trial's while it was timed: flagged bench_noisy; its "
                        "ranking is uncertain (rerun it on a quiet host)", name, metrics["bench_other_cores"])
        elif metrics["bench_noisy"]:
            log.warning("[%s] speed-up interval [%.2f, %.2f] is wider than benchmark.max_ci_width after %d blocks: "
                        "flagged bench_noisy; its ranking is uncertain", name, metrics["speedup_ci_low"],
                        metrics["speedup_ci_high"], metrics["bench_blocks"])
        with stages("profile"):  # after the timing, on a load of its own: the counters never slow what is timed
            threads = hardware.threads(conf.hardware)
            try:
                rows = profile.take(conf.profile, conf.runtime, built.loaded, conf.hardware, benchmark.inputs(scored, 1), workdir / "profile")
            except Exception as e:  # a diagnostic: its failure must not cost the trial its measurements
                log.warning("[%s] no per-op profile: %s: %s", name, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
                rows = []
            metrics.update(profile.log(rows, conf.runtime, f"{name}: µs per call by op type ({conf.runtime.name}, {threads} threads, "
                                       f"batch 1, mean of {conf.profile.calls} calls)", workdir / "profile", built.fp32_onnx))
        with stages("size"):
            metrics.update(size.measure(rt.artifacts, rt.constants()))
        with stages("deploy"):
            record.log_model(rt, conf.runtime.name, hardware.threads(conf.hardware), packages,
                               data.read_bgr(root / (calib.files or val.files or scored.files)[0])[np.newaxis], workdir,
                               conf.runtime.precision)
        metrics.update(stages.seconds)
        record.log_table([{"file": f, "label": t, "prediction": p, "correct": int(c)}
                            for f, t, p, c in zip(scored.files, scored.labels, result.predictions, result.correct)],
                           "predictions.csv")
        record.log_result(metrics, sorted({built.fp32_onnx, *rt.artifacts}))
    log.info("[%s] accuracy %.4f (drop %.2f pts, 95 %% [%.2f, %.2f]), speed-up %.2fx [%.2f, %.2f], p50 %.2f ms",
             name, metrics["accuracy"], metrics["drop_pts"], metrics["drop_pts_ci_low"], metrics["drop_pts_ci_high"],
             metrics["speedup"], metrics["speedup_ci_low"], metrics["speedup_ci_high"], metrics["latency_p50_ms"])
    return metrics
