"""The MetaSchedule builder's fast import of TVM's tensor intrinsics (the pool itself runs in test_tune)."""
import inspect

from lpr_sweep import builder


def test_the_fast_import_answers_pseudo_files_at_once_and_restores_getmodule():
    original = inspect.getmodule
    with builder.fast_tvmscript_import():
        assert inspect.getmodule(None, "<frozen importlib._bootstrap>") is None  # no scan of sys.modules
        assert inspect.getmodule(test_the_fast_import_answers_pseudo_files_at_once_and_restores_getmodule).__name__ == __name__
    assert inspect.getmodule is original
    try:
        with builder.fast_tvmscript_import():
            raise KeyError("x")
    except KeyError:
        pass
    assert inspect.getmodule is original  # restored when the import fails too
