"""python -m lpr_sweep.results: a reported sweep into docs/results/<experiment>-<cpu>.md and README's block."""
import pytest
from mlflow import MlflowClient

from lpr_sweep import report, results, tracking
from test_report import _t

CPU = "AMD EPYC 7B13 64-Core Processor"
TAGS = {"hw.cpu": CPU, "hw.isa": "avx2,fma", "hw.cores": "2", "hw.platform": "Linux-6", "git_commit": "abc123",
        "version.onnxruntime": "1.23.2"}


def _sweep(cfg, command, rows):
    client = MlflowClient()
    exp = tracking.experiment_id(cfg)
    parent = client.create_run(exp, run_name="s", tags={tracking.ROLE_TAG: "sweep", "mlflow.note.content": command}).info.run_id
    for name, acc, speed in rows:
        run = client.create_run(exp, run_name=name, tags={"mlflow.parentRunId": parent, tracking.ROLE_TAG: "trial",
                                                          tracking.HASH_TAG: f"hash-{name}", **TAGS}).info.run_id
        client.log_param(run, "optimization.name", "prune")
        for k, v in _t(name, acc, speed).metrics.items():
            client.log_metric(run, k, v)
        client.set_terminated(run, "FINISHED")
    client.set_terminated(parent)
    return parent


@pytest.fixture
def store(tmp_path):
    cfg = tracking.TrackingConfig(uri=f"sqlite:///{tmp_path}/r.db", artifact_root=str(tmp_path / "a"))
    tracking.experiment_id(cfg)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Results\n\n{results.BEGIN}\nRun `make results` to fill this table.\n{results.END}\n\n## Next\n")
    return cfg, tmp_path, readme


def _results(cfg, tmp_path, readme, *args):
    return results.main(["--tracking-uri", cfg.uri, "--out", str(tmp_path / "docs" / "results"), "--readme", str(readme), *args])


def test_a_reported_sweep_becomes_a_results_file_with_its_header_and_the_readme_table(store, capsys):
    cfg, tmp_path, readme = store
    _sweep(cfg, "`python -m lpr_sweep -m +experiment=published_table`", [("a", 0.90, 2.10), ("b", 0.85, 3.0)])
    parent = _sweep(cfg, "`python -m lpr_sweep -m +experiment=published_table`", [("a", 0.89, 2.30), ("b", 0.85, 3.1)])
    assert _results(cfg, tmp_path, readme) == 1  # no report on the parent yet: says how to make one
    assert "has no report yet; run `python -m lpr_sweep.report --sweep" in capsys.readouterr().err

    assert report.main(["--tracking-uri", cfg.uri, "--no-final", "--no-register", "--out", str(tmp_path / "r")]) == 0
    assert _results(cfg, tmp_path, readme) == 0
    path = tmp_path / "docs" / "results" / "published_table-amd-epyc-7b13-avx2.md"
    text = path.read_text()
    assert text.startswith(f"# published_table on {CPU} (avx2,fma)")
    assert "- Command: `python -m lpr_sweep -m +experiment=published_table`, then `python -m lpr_sweep.report`" in text
    assert f"parent run {parent}" in text and "- Commit the trials ran: abc123" in text
    assert "ISA: avx2,fma; cores: 2" in text and "onnxruntime 1.23.2" in text
    assert "| a | 2 | 2.10-2.30x | 0.8900-0.9000 |" in text  # both sweeps' runs of the same config, as a range
    assert "### Sweep " in text and "Champion: " in text  # the report itself, its headings under the file's
    block = readme.read_text().split(results.BEGIN)[1].split(results.END)[0]
    assert "docs/results/published_table-amd-epyc-7b13-avx2.md" in block and "Run `make results`" not in block
    assert "| a **(chosen)** | 0.8900 | 0.8900 | 2.30x [2.25, 2.35] | 1.000 |" in block
    assert readme.read_text().endswith("## Next\n")

    first = text
    assert _results(cfg, tmp_path, readme) == 0  # a rerun replaces the file rather than appending
    assert path.read_text().count("## Repeats") == 1 and len(path.read_text()) == pytest.approx(len(first), abs=40)


def test_a_readme_without_the_block_is_named_and_the_file_still_written(store, capsys):
    cfg, tmp_path, readme = store
    _sweep(cfg, "`python -m lpr_sweep -m prune.ratio=0.1,0.5`", [("a", 0.90, 2.0)])
    assert report.main(["--tracking-uri", cfg.uri, "--no-final", "--no-register", "--out", str(tmp_path / "r")]) == 0
    readme.write_text("# no block\n")
    assert _results(cfg, tmp_path, readme) == 1
    assert f"has no {results.BEGIN}" in capsys.readouterr().err
    assert (tmp_path / "docs" / "results" / "sweep-amd-epyc-7b13-avx2.md").is_file()


def test_a_sweep_that_did_not_end_is_not_published(store, capsys):
    cfg, tmp_path, readme = store
    parent = _sweep(cfg, "`python -m lpr_sweep -m prune.ratio=0.1,0.5`", [("a", 0.90, 2.0)])
    MlflowClient().update_run(parent, status="RUNNING")  # its process was killed before the end
    assert _results(cfg, tmp_path, readme) == 1
    assert "stopped before its end" in capsys.readouterr().err and not (tmp_path / "docs").exists()


@pytest.mark.parametrize("cpu, isa, expected", [
    ("AMD EPYC 7B13 64-Core Processor", "avx2,fma", "amd-epyc-7b13-avx2"),
    ("AMD EPYC", "avx2,avx512f,avx512_vnni,avx512_bf16", "amd-epyc-avx512"),  # one model name, two kinds of VM
    ("Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz", "avx2,avx512f,avx512_vnni,amx_tile", "intel-xeon-platinum-8581c-amx"),
    ("", "", "unknown-cpu"),
])
def test_cpu_names_become_file_names(cpu, isa, expected):
    assert results.slug(cpu, isa) == expected
