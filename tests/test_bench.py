import pytest

from lpr_sweep import bench

pytestmark = pytest.mark.slow


def test_bench_prints_one_row_per_variant_and_runtime(capsys):
    assert bench.main(["--warmup", "1", "--rounds", "2", "--calls", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# make bench:") and "1 threads, batch 1" in out[0]
    rows = [line.split(" | ") for line in out if line.startswith("| ") and "---" not in line][1:]
    assert [(r[0].lstrip("| "), r[1]) for r in rows] == [(v, n) for v in bench.VARIANTS for n in bench.RUNTIMES]
    baseline = {r[1]: r for r in rows if r[0] == "| baseline"}
    assert baseline["torch"][4] == "1.00x" and baseline["onnxruntime"][5] == "1.00x"
    sparsity = {r[0].lstrip("| "): float(r[7]) for r in rows}
    assert sparsity["baseline"] == 0.0 and sparsity["prune global 0.5"] == pytest.approx(0.5, abs=0.01)
    assert sparsity["prune layer 0.5"] == pytest.approx(0.5, abs=0.01)
