"""``python -m lpr_sweep.predict [--model URI] IMAGE...``: read plates with a logged model.

Prints one line per image: file, plate, confidence (tab-separated), and ``blank image: no plate``
after an image without contrast. The model is any MLflow model URI a trial logged, by default the
registered champion (``models:/lpr_sweep@champion``). An image that cannot be read, or that the
model refuses (too small), gets one line naming it, the others are still read, and the exit status is 1.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "models:/lpr_sweep@champion"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpr_sweep.predict", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"an MLflow model URI (default {DEFAULT_MODEL})")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                        help="where models:/ and runs:/ URIs are looked up")
    args = parser.parse_args(argv)

    from lpr_sweep import data, tracking

    readable, failed = [], 0
    for path in args.images:
        try:
            readable.append((path, data.read_bgr(path)))
        except data.DataError as e:  # it names the file
            failed += 1
            print(f"error: {e}", file=sys.stderr)
        except OSError as e:
            failed += 1
            print(f"error: cannot read {path}: {e.strerror or e}", file=sys.stderr)
    if readable:
        try:
            model = tracking.load_model(args.model, args.tracking_uri)
        except LookupError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        from mlflow.exceptions import MlflowException

        for path, img in readable:  # one image at a time: sizes may differ, and the model resizes each
            try:
                row = model.predict(img[np.newaxis]).iloc[0]
            except MlflowException as e:  # the model's own one-line refusal (an image too small to hold a plate)
                failed += 1
                print(f"error: {path}: {e.message}", file=sys.stderr)
                continue
            print(f"{path}\t{row['plate']}\t{row['confidence']:.3f}" + ("\tblank image: no plate" if row.get("blank") else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
