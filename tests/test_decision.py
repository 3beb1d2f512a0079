"""The champion decision: finalists, the final's ratios, and the promotion gate against the incumbent."""
from lpr_sweep import decision, report
from lpr_sweep.selection import Rule, Trial


def _trial(name, speed, val):
    m = {"val_accuracy": val, "accuracy": val, "val_drop_pts": 100 * (0.9 - val), "speedup": speed, "speedup_ci_low": speed * 0.99,
         "speedup_ci_high": speed * 1.01, "size_file_bytes": 1e6, "latency_ref_p50_ms": 2.0}
    return Trial(name, name, "FINISHED", m)


def test_decide_reads_the_finals_ratios_and_falls_back_when_it_fails():
    a, b = _trial("a", 2.0, 0.90), _trial("b", 2.6, 0.895)  # b looks faster in its own trial
    sweep = decision.Sweep("p", None, [a, b])
    rule = Rule("latency", max_drop_pts=1.0)

    def even(finalists):  # the final finds them equal
        out = [Trial(t.run_id, t.name, t.status, {**t.metrics, "trial_speedup": t.metrics["speedup"], "trial_speedup_ci_low": 0.0,
                     "trial_speedup_ci_high": 9.0, "speedup": 2.2, "speedup_ci_low": 2.19, "speedup_ci_high": 2.21})
               for t in finalists]
        return out, {"reference": "r", "threads": "2", "batch": "1", "input": "i", "warmup": "20", "calls_per_block": "20",
                     "loads": "3", "seconds_min_max": "10-30", "order": "rotating"}

    decided = decision.decide(sweep, rule, timer=even)
    assert decided.champion.name == "a" and decided.decided_on.startswith("the final: 2 finalists")
    assert "| a **(winner)** | 2.200x [2.190, 2.210] |" in "\n".join(report.final_table(decided))

    def broken(finalists):
        raise OSError("no space left on device")

    decided = decision.decide(sweep, rule, timer=broken)
    assert decided.champion.name == "b" and "the final failed (OSError: no space left on device)" in decided.decided_on
    assert decision.decide(sweep, rule).decided_on.endswith("(--no-final)")


def test_the_gate_moves_the_champion_only_for_a_better_comparable_model():
    rule = Rule("latency", max_drop_pts=1.0)
    new = _trial("new", 3.0, 0.90)
    sweep = decision.Sweep("p", None, [new])
    first = decision.decide(sweep, rule)
    assert first.promote and first.why == "no champion was registered yet"
    slower = decision.decide(sweep, rule, incumbent=("1", _trial("old", 2.0, 0.90)))
    assert slower.promote and slower.champion.name == "new"
    faster = decision.decide(sweep, rule, incumbent=("1", _trial("old", 4.0, 0.90)))
    assert not faster.promote and faster.incumbent.name == "old"
    gone = decision.decide(sweep, rule, incumbent=("1", None))
    assert not gone.promote and "its trial run is gone from the store" in gone.why


def test_the_account_names_the_trials_the_champion_tied_with():
    a, b, c = _trial("a", 2.0, 0.90), _trial("b", 2.02, 0.895), _trial("c", 3.0, 0.70)  # c fails the rule
    champion, line = decision.choose(decision.Sweep("p", None, [a, b, c]), Rule("latency", max_drop_pts=1.0))
    assert champion.name == "a" and line.endswith("; tied on speed with b, chosen by the tie rule"), line
