"""Ctrl-C and SIGTERM unwind a trial like an exception, so its run is closed KILLED, not left RUNNING.

Some libraries swallow a KeyboardInterrupt raised inside their callbacks (Python prints and drops an
exception raised in a weakref callback), so the signal is also remembered and checked again after
every stage and before every trial.
"""
from __future__ import annotations

import signal
import sys
from typing import Any

_interrupted: list[str] = []  # the signal, once one arrived


def _interrupt(signum: int, frame: Any) -> None:
    first = not _interrupted
    _interrupted.append(signal.Signals(signum).name)
    # Only the first signal unwinds: a second one 10 ms later would land inside the handler that is
    # recording the first, and leave the run for MLflow's exit hook to close as FINISHED.
    if first:
        raise KeyboardInterrupt(f"signal {_interrupted[0]}")


def _unraisable(info: Any, default=sys.unraisablehook) -> None:
    # Our KeyboardInterrupt raised inside a weakref callback or __del__ (seen: torch's WeakIdKeyDictionary)
    # cannot propagate; Python would print it with a traceback. check_interrupted raises it again.
    if isinstance(info.exc_value, KeyboardInterrupt) and _interrupted:
        return
    default(info)


def handle_interrupts() -> None:
    """Let SIGTERM unwind like Ctrl-C, so runs get marked KILLED instead of staying RUNNING."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    sys.unraisablehook = _unraisable


def check_interrupted() -> None:
    """Raise again if a signal came and some library swallowed its KeyboardInterrupt."""
    if _interrupted:
        raise KeyboardInterrupt(f"signal {_interrupted[0]}")


def received() -> str | None:
    """The signal that arrived (SIGTERM, SIGINT), or None."""
    return _interrupted[0] if _interrupted else None
