"""Ctrl-C and SIGTERM unwind a trial like an exception, so its run is closed KILLED, not left RUNNING.

Some libraries swallow a KeyboardInterrupt raised inside their callbacks (Python prints and drops an
exception raised in a weakref callback), so the signal is also remembered and checked again after
every stage and before every trial.

A signal that lands while MLflow's store (SQLAlchemy over SQLite) is inside a write waits for the write
to end: unwound mid-transaction, the write's connection still held SQLite's lock while the sweep closed
its runs KILLED, which then met "database is locked" (and a traceback in the user's log).
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Any

_interrupted: list[str] = []  # the signal, once one arrived
_raised: list[bool] = []  # once its KeyboardInterrupt was raised
RETRY_S = 0.05  # how soon a deferred signal looks again whether the store's write is over
_STORE_CODE = (f"{os.sep}sqlalchemy{os.sep}", f"{os.sep}mlflow{os.sep}store{os.sep}")


def _in_store(frame: Any) -> bool:
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in _STORE_CODE):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum: int, frame: Any) -> None:
    if signum != signal.SIGALRM:
        # Only the first signal unwinds: a second one 10 ms later would land inside the handler that is
        # recording the first, and leave the run for MLflow's exit hook to close as FINISHED.
        if _interrupted:
            return
        _interrupted.append(signal.Signals(signum).name)
    if _raised or not _interrupted:
        return
    if _in_store(frame):
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)  # SIGALRM brings us back here
        return
    _raise()


def _raise() -> None:
    # A deferred signal's timer may still be pending when check_interrupted raises first; left armed,
    # it would raise a second KeyboardInterrupt in the exit path (the process then dies by SIGINT).
    signal.setitimer(signal.ITIMER_REAL, 0)
    _raised.append(True)
    raise KeyboardInterrupt(f"signal {_interrupted[0]}")


def _unraisable(info: Any, default=sys.unraisablehook) -> None:
    # Our KeyboardInterrupt raised inside a weakref callback or __del__ (seen: torch's WeakIdKeyDictionary)
    # cannot propagate; Python would print it with a traceback. check_interrupted raises it again.
    if isinstance(info.exc_value, KeyboardInterrupt) and _interrupted:
        return
    default(info)


def handle_interrupts() -> None:
    """Let SIGTERM unwind like Ctrl-C, so runs get marked KILLED instead of staying RUNNING."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(signum, _interrupt)
    sys.unraisablehook = _unraisable


def check_interrupted() -> None:
    """Raise again if a signal came and some library swallowed its KeyboardInterrupt."""
    if _interrupted:
        _raise()


def received() -> str | None:
    """The signal that arrived (SIGTERM, SIGINT), or None."""
    return _interrupted[0] if _interrupted else None
