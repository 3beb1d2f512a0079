import threading

import pytest

from conftest import TINY, compose_cfg
from lpr_sweep import cache, pipeline
from lpr_sweep.cache import CacheConfig


def _builder(calls, text="x"):
    def build(out):
        calls.append(out)
        (out / "f.txt").write_text(text)
    return build


def test_miss_then_hit(tmp_path):
    cfg, calls = CacheConfig(dir=str(tmp_path / "c")), []
    first, hit1 = cache.fetch(cfg, "s", "k1", _builder(calls), tmp_path / "w")
    second, hit2 = cache.fetch(cfg, "s", "k1", _builder(calls), tmp_path / "w")
    assert (hit1, hit2) == (False, True) and first == second and len(calls) == 1
    assert (second / "f.txt").read_text() == "x"
    assert [p.name for p in (tmp_path / "c" / "s").iterdir()] == ["k1"]  # no temporary folder left


def test_disabled_builds_in_the_workdir_every_time(tmp_path):
    cfg, calls = CacheConfig(enabled=False, dir=str(tmp_path / "c")), []
    for _ in range(2):
        folder, hit = cache.fetch(cfg, "s", "k", _builder(calls), tmp_path / "w")
        assert not hit and folder == tmp_path / "w" / "s"
    assert len(calls) == 2 and not (tmp_path / "c").exists()


def test_parallel_builders_of_one_key_agree(tmp_path):
    cfg, results = CacheConfig(dir=str(tmp_path / "c")), []
    barrier = threading.Barrier(4)

    def worker(i):
        def build(out):
            barrier.wait()  # all four build at once
            (out / "f.txt").write_text(str(i))
        results.append(cache.fetch(cfg, "s", "k", build, tmp_path / f"w{i}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    folders = {f for f, _ in results}
    assert folders == {tmp_path / "c" / "s" / "k"}
    assert (tmp_path / "c" / "s" / "k" / "f.txt").read_text() in "0123"
    assert [p.name for p in (tmp_path / "c" / "s").iterdir()] == ["k"]


def test_a_failed_build_leaves_nothing(tmp_path):
    cfg = CacheConfig(dir=str(tmp_path / "c"))

    def build(out):
        (out / "half.txt").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.fetch(cfg, "s", "k", build, tmp_path / "w")
    assert list((tmp_path / "c" / "s").iterdir()) == []


def test_keys_change_with_every_input():
    assert cache.key("a", {"r": 0.5}) == cache.key("a", {"r": 0.5})
    assert cache.key("a", {"r": 0.5}) != cache.key("a", {"r": 0.6})


def test_trials_sharing_stages_reuse_them(tmp_path, tiny_root, store):
    """Same pruned export quantized two ways, then again: the repeats come from the cache."""
    base = [f"data.root={tiny_root}", f"cache.dir={tmp_path}/cache", "prune.ratio=0.5", "quant.max_drop=100", *TINY, *store]
    minmax = pipeline.run(compose_cfg([*base, "quant=ort_static", "quant.method=minmax"]), workdir=tmp_path / "a")
    entropy = pipeline.run(compose_cfg([*base, "quant=ort_static", "quant.method=entropy"]), workdir=tmp_path / "b")
    again = pipeline.run(compose_cfg([*base, "quant=ort_static", "quant.method=minmax"]), workdir=tmp_path / "c")
    assert (minmax["cache_hit_export"], minmax["cache_hit_quant"]) == (0, 0)
    assert (entropy["cache_hit_export"], entropy["cache_hit_quant"]) == (1, 0)
    assert (again["cache_hit_export"], again["cache_hit_quant"], again["cache_hits"]) == (1, 1, 2)
    assert again["accuracy"] == minmax["accuracy"] and again["size_file_bytes"] == minmax["size_file_bytes"]
    assert again["stage_quant_seconds"] < minmax["stage_quant_seconds"]
    for key in ("stage_data_seconds", "stage_prune_seconds", "stage_export_seconds", "stage_evaluate_seconds", "stage_benchmark_seconds"):
        assert again[key] > 0
