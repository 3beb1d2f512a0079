import re

import pytest

from lpr_sweep import bench, peers

pytestmark = pytest.mark.slow


def test_bench_prints_one_row_each_with_ratios_to_every_baseline_and_the_peers(capsys):
    rows = ["OpenVINO int8 (nncf)", "ORT fp32, prune global 0.5", "OpenVINO fp32, structured global 0.8"]
    assert bench.main(["--warmup", "1", "--rounds", "2", "--calls", "2", "--threads", "1", "--profile", "--rows", *rows]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# make bench:") and "1 threads, batch 1" in out[0]  # nothing printed before
    assert "peers built by hand" in out[0]
    table = [line.strip("| ").split(" | ") for line in out if line.startswith("| ") and "---" not in line and not line.startswith("| node")]
    table = [r for r in table if len(r) == 14][1:]
    assert [r[0] for r in table] == [*bench.BASELINES[:3], *peers.NAMES, *rows]
    by_name = {r[0]: r for r in table}
    assert by_name["ORT fp32"][4] == "1.00x [1.00, 1.00]" and by_name["OpenVINO fp32"][5] == "1.00x [1.00, 1.00]"
    assert by_name["torch eager fp32"][6] == "1.00x [1.00, 1.00]" and by_name[peers.PLAIN_NNCF][7] == "1.00x [1.00, 1.00]"
    assert by_name["ORT fp32"][9] == "0.00"
    assert by_name["OpenVINO int8 (nncf)"][10].startswith("default, float: -") and by_name[peers.PLAIN_NNCF][10] == "-"
    assert float(by_name["OpenVINO int8 (nncf)"][9]) <= 1.0 and float(by_name[peers.PLAIN_ORT][9]) <= 0.15  # the same model
    assert int(by_name["OpenVINO int8 (nncf)"][11]) < int(by_name["ORT fp32"][11])
    est, low, high = map(float, re.fullmatch(r"([\d.]+)x \[([\d.]+), ([\d.]+)\]", by_name["OpenVINO int8 (nncf)"][4]).groups())
    assert low <= est <= high
    assert by_name["ORT fp32"][1] == "144.4" and by_name[peers.PLAIN_ORT][1] == "144.4"
    assert float(by_name["OpenVINO fp32, structured global 0.8"][1]) < 70
    # --profile: one section per row; OpenVINO and ONNX Runtime rows list ops, torch says it has none
    assert "## OpenVINO int8 (nncf)" in out and "no profile: runtime torch gives none" in out
    assert sum(line == "| node | op type | kernel | precision | µs per call | share |" for line in out) == 5
