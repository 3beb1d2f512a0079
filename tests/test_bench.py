import re

import pytest

from lpr_sweep import bench

pytestmark = pytest.mark.slow


def test_bench_prints_one_row_each_with_ratios_to_every_baseline(capsys):
    rows = ["OpenVINO int8 (nncf)", "ORT fp32, prune global 0.5", "OpenVINO fp32, structured global 0.8"]
    assert bench.main(["--warmup", "1", "--rounds", "2", "--calls", "2", "--threads", "1", "--rows", *rows]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# make bench:") and "1 threads, batch 1" in out[0]  # nothing printed before
    table = [line.strip("| ").split(" | ") for line in out if line.startswith("| ") and "---" not in line][1:]
    assert [r[0] for r in table] == [*bench.BASELINES, *rows]
    by_name = {r[0]: r for r in table}
    assert by_name["ORT fp32"][4] == "1.00x [1.00, 1.00]" and by_name["OpenVINO fp32"][5] == "1.00x [1.00, 1.00]"
    assert by_name["torch eager fp32"][6] == "1.00x [1.00, 1.00]" and by_name["ORT fp32"][8] == "0.00"
    assert by_name["OpenVINO int8 (nncf)"][9].startswith("default, float: -")
    assert float(by_name["OpenVINO int8 (nncf)"][8]) <= 1.0
    assert int(by_name["OpenVINO int8 (nncf)"][10]) < int(by_name["ORT fp32"][10])
    est, low, high = map(float, re.fullmatch(r"([\d.]+)x \[([\d.]+), ([\d.]+)\]", by_name["OpenVINO int8 (nncf)"][4]).groups())
    assert low <= est <= high
    assert by_name["ORT fp32"][1] == "144.4" and float(by_name["OpenVINO fp32, structured global 0.8"][1]) < 70
