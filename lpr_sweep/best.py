"""``python -m lpr_sweep.best``: print a sweep's champion under a rule; nothing is written or registered.

A view on ``lpr_sweep.report`` (same rules, same selection); ``python -m lpr_sweep.report`` also
writes the report and plot and registers the champion.
"""
from __future__ import annotations

import argparse
import sys

from lpr_sweep import decision, report, tracking


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpr_sweep.best", description=__doc__.splitlines()[0])
    decision.add_rule_arguments(parser)
    args = parser.parse_args(argv)
    try:
        sweep = decision.load(tracking.TrackingConfig(uri=args.tracking_uri, experiment=args.experiment), args.sweep)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rule = decision.rule_of(args)
    decided = decision.decide(sweep, rule)
    champion, note = decided.champion, decided.note
    print(report.markdown(sweep, rule, decided, report.pareto(sweep.trials, rule.min_gain)))
    if champion is None:
        print(f"error: {note}", file=sys.stderr)
        return 1
    print(f"best: {champion.name} (run {champion.run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
