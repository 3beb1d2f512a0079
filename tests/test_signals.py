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


# A write() whose code says it is SQLAlchemy's, as a write inside MLflow's store would be: it sends
# itself SIGTERM, then works on for {pause} s.
STORE_WRITE = """
import os, signal, time
from lpr_sweep import signals
signals.handle_interrupts()
store = {{}}
exec(compile('''
def write():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep({pause})
    print("write finished", flush=True)
''', os.path.join(os.sep, "site-packages", "sqlalchemy", "orm", "session.py"), "exec"), {{"os": os, "signal": signal, "time": time, "print": print}}, store)
"""


def _run(pause: float, then: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", STORE_WRITE.format(pause=pause) + then], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_a_signal_during_a_store_write_waits_for_the_write_to_end():
    done = _run(0.3, """
try:
    store["write"]()
    print("after the write", flush=True)
    time.sleep(2)
    print("never", flush=True)
except KeyboardInterrupt as e:
    print("raised:", e, flush=True)
try:
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGTERM)  # a second signal does not unwind again
    time.sleep(0.3)
    print("second ignored", flush=True)
except KeyboardInterrupt:
    print("raised twice", flush=True)
""")
    assert done.stdout.splitlines() == ["write finished", "after the write", "raised: signal SIGTERM", "second ignored"], (
        done.stdout + done.stderr)


def test_a_deferred_signal_raised_at_a_stage_boundary_does_not_raise_again_later():
    done = _run(0.01, """
store["write"]()  # it ends before the deferred signal looks again
try:
    signals.check_interrupted()  # the next stage boundary comes first
except KeyboardInterrupt as e:
    print("raised at the boundary:", e, flush=True)
time.sleep(0.3)  # the deferred signal's timer must not raise a second time
print("exited cleanly", flush=True)
""")
    assert done.stdout.splitlines() == ["write finished", "raised at the boundary: signal SIGTERM", "exited cleanly"], (
        done.stdout + done.stderr)
    assert done.returncode == 0
