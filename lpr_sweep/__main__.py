"""``python -m lpr_sweep [-m] key=value ...``: compose the config, run one trial per job."""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from lpr_sweep import ConfigError, config, pipeline, signals  # noqa: F401  (config registers the schema)
from lpr_sweep.data import DataError

log = logging.getLogger("lpr_sweep")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    signals.handle_interrupts()
    signals.check_interrupted()  # a signal during the previous trial stops the sweep here
    try:
        return pipeline.run(cfg)
    except (ConfigError, DataError, FileNotFoundError) as e:
        if not multirun:
            raise SystemExit(f"error: {e}") from None
        log.error("trial failed: %s", e)
    except Exception as e:
        if not multirun:
            raise
        # Recorded as FAILED in MLflow already; the sweep goes on and its end reports the failure.
        log.exception("trial failed: %s", e)
    return None


if __name__ == "__main__":
    sys.exit(main())
