"""Signals unwind like Ctrl-C, and one swallowed inside a callback leaves no traceback on the screen."""
import subprocess
import sys

from conftest import REPO

SCRIPT = """
import os, signal, weakref
from lpr_sweep import signals
signals.handle_interrupts()
class Box: pass
box = Box()
def callback(ref):  # the signal lands while a weakref callback runs, as it did inside torch
    os.kill(os.getpid(), signal.SIGTERM)
keep = weakref.ref(box, callback)
del box  # the callback's KeyboardInterrupt cannot propagate: Python hands it to sys.unraisablehook
print("received", signals.received(), flush=True)
try:
    signals.check_interrupted()
except KeyboardInterrupt as e:
    print("raised again:", e, flush=True)
class Other:
    def __del__(self):
        raise ValueError("not ours")
Other()
"""


def test_a_signal_swallowed_by_a_callback_is_raised_again_without_a_traceback():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["received SIGTERM", "raised again: signal SIGTERM"], done.stdout + done.stderr
    assert "KeyboardInterrupt" not in done.stderr
    assert "ValueError: not ours" in done.stderr  # anything else unraisable is still shown
