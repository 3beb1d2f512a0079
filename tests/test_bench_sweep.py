import pytest

from lpr_sweep import bench_sweep

pytestmark = pytest.mark.slow


def test_prints_four_timed_sweeps_with_ratios(tiny_root, capsys):
    tiny = [f"data.root={tiny_root}", "data.calib_size=2", "data.val_size=2", "quant.calib_size=2", "quant.max_drop=100",
            "benchmark.warmup=1", "benchmark.throughput_batch=2", "benchmark.loads=2", "benchmark.blocks=2",
            "benchmark.max_blocks=2", "benchmark.calls_per_block=2", "prune.ratio=0.5"]  # 2 short trials a sweep (CI time)
    assert bench_sweep.main(tiny) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# bench_sweep:") and "2 trials" in out[0]
    rows = [line.strip("| ").split(" | ") for line in out if line.startswith("| ") and "---" not in line][1:]
    assert [(r[0], r[1]) for r in rows] == [("serial", "cold"), ("serial", "warm"), ("2-way parallel", "cold"), ("2-way parallel", "warm")]
    assert rows[0][3] == "1.00x" and all(float(r[2]) > 0 for r in rows)
