"""MetaSchedule's builder for this project: one persistent worker pool per run that logs progress
and keeps build errors, with TVM's tensor intrinsics imported the fast way. Used by the tuning
search (``lpr_sweep.tune``) and by the re-measuring of shipped records (``lpr_sweep.records``).
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

log = logging.getLogger(__name__)
RECYCLE_AFTER = 64  # builds per builder worker before it is restarted


@contextlib.contextmanager
def fast_tvmscript_import():
    """Let ``import tvm.s_tir.tensor_intrin`` take ~6 s instead of ~40 s (measured here).

    Its ~250 TVMScript functions each call ``inspect.stack()``, which asks ``inspect.getmodule`` for
    every frame; for the import machinery's frames ("<frozen importlib._bootstrap>") no module ever
    matches, so each call scans all of ``sys.modules``. Answering None for such pseudo-files at once
    is what the scan would conclude anyway. Both the tuning process and every builder worker import it.
    """
    import inspect

    original = inspect.getmodule

    def getmodule(obj, _filename=None):
        if _filename is not None and _filename.startswith("<"):
            return None
        return original(obj, _filename)

    inspect.getmodule = getmodule
    try:
        yield
    finally:
        inspect.getmodule = original


def _worker_init():
    with fast_tvmscript_import():
        import tvm.s_tir.tensor_intrin  # noqa: F401  (each build needs it; import it once per worker)


def progress(cfg: Any, threads: int, budget: int, batch: int | None = None):
    """A MetaSchedule builder with a persistent worker pool that logs progress and keeps build errors.

    TVM's LocalBuilder starts a fresh pool for every batch, and each worker's first build imports
    TVM's tensor intrinsics (~40 s here): most of a default tuning run was that start-up. This pool
    lives for the whole run and its workers import them the fast way; a worker is recycled after
    ``RECYCLE_AFTER`` builds, which bounds the memory leak TVM restarts its pool for. ``batch`` is how
    many candidates a build call brings (MetaSchedule's ``trials_per_iter`` unless given).
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import (
        _serialize_params,
        _worker_func,
    )
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    batches = -(-budget // (batch or cfg.trials_per_iter))

    @derived_object
    class ProgressBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool = PopenPoolExecutor(max_workers=threads, timeout=cfg.builder_timeout_s,
                                          maximum_process_uses=RECYCLE_AFTER, initializer=_worker_init)
            self.t0, self.batches, self.done, self.built, self.errors, self.dead_batches = time.perf_counter(), 0, 0, 0, [], 0

        def build(self, build_inputs):
            if not build_inputs:  # a task whose design space is spent: MetaSchedule asks again until it gives up
                return []
            jobs = [(None, None, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
            results = []
            for r in self.pool.map_with_error_catching(lambda job: _worker_func(*job), jobs):
                if r.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(r.value, None))
                elif r.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"LocalBuilder: Timeout, killed after {cfg.builder_timeout_s} seconds"))
                else:
                    results.append(BuilderResult(None, f"LocalBuilder: An exception occurred\n{r.value}"))
            ok = sum(r.error_msg is None for r in results)
            self.batches, self.done, self.built = self.batches + 1, self.done + len(results), self.built + ok
            if results and not ok:
                self.dead_batches += 1
                self.errors.append(str(results[0].error_msg).strip().splitlines()[-1])
                log.error("tune: all %d candidates of batch %d failed to build: %s", len(results), self.batches, self.errors[-1])
            elapsed = time.perf_counter() - self.t0
            log.info("tune: batch %d/~%d, %d/%d trials (%d built), %.0f s elapsed, ~%.0f s left", self.batches, batches,
                     self.done, budget, self.built, elapsed, elapsed / self.done * max(budget - self.done, 0))
            return results

        def close(self):
            self.pool.shutdown()

    return ProgressBuilder()
