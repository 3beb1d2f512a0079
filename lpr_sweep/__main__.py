"""``python -m lpr_sweep [-m] key=value ...``: compose the config, run one trial per job."""
from __future__ import annotations

import logging
import signal
import sys

import hydra
from omegaconf import DictConfig

from lpr_sweep import ConfigError, config, pipeline, signals  # noqa: F401  (config registers the schema)
from lpr_sweep.data import DataError
from lpr_sweep.tracking import sweep

log = logging.getLogger("lpr_sweep")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    signals.handle_interrupts()
    try:
        signals.check_interrupted()  # a signal during the previous trial stops the sweep here
        return pipeline.run(cfg)
    except KeyboardInterrupt:
        if multirun:  # close the sweep now: an exit hook can be skipped (torch.export registers its own)
            sweep.close_interrupted(cfg.tracking)
        raise
    except (ConfigError, DataError, FileNotFoundError) as e:
        if not multirun:
            raise SystemExit(f"error: {e}") from None
        log.error("trial failed: %s", e)
        _note_if_unrecorded(e)
    except Exception as e:
        if not multirun:
            raise
        # The sweep goes on; its end reports the failure (from MLflow, or from the note below).
        log.exception("trial failed: %s", e)
        _note_if_unrecorded(e)
    return None


def _note_if_unrecorded(e: BaseException) -> None:
    if not hasattr(e, "lpr_sweep_run_id"):  # set once the trial's run existed; without it, MLflow knows nothing
        from hydra.core.hydra_config import HydraConfig

        sweep.record_unrecorded(HydraConfig.get().job.override_dirname or HydraConfig.get().job.name, e)


def cli() -> int:
    """``main`` with an interrupt as one line, not Hydra's traceback: the runs are already closed KILLED."""
    try:
        return main()
    except KeyboardInterrupt:
        name = signals.received() or "SIGINT"
        print(f"error: interrupted by {name}; finished trials are kept, and the same command with resume=true runs the rest",
              file=sys.stderr)
        return 128 + getattr(signal.Signals, name, signal.SIGINT)


if __name__ == "__main__":
    sys.exit(cli())
