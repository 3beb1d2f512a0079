from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg

from lpr_sweep import ConfigError, finetune, prune
from lpr_sweep.finetune import FinetuneConfig
from lpr_sweep.model import LPRNet
from lpr_sweep.prune import channels
from lpr_sweep.prune import PruneConfig


def _teacher(net):
    return lambda x: net(torch.from_numpy(x)).detach().numpy()


def _images(n=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 24, 94)).astype(np.float32)


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("loss", ["kl", "ctc"])
def test_pruned_zeros_stay_zero_and_the_rest_learns(structured, loss):
    torch.manual_seed(0)
    teacher = LPRNet().eval()
    student = LPRNet().eval()
    student.load_state_dict(teacher.state_dict())
    prune.run(student, PruneConfig(ratio=0.6))
    if structured:
        channels.remove_dead_channels(student)
    zeros = {name: ~mask for name, mask in finetune.zero_masks(student).items()}
    before = {name: m.weight.detach().clone() for name, m in prune.conv_layers(student)}
    log = finetune.run(student, _teacher(teacher), _images(), FinetuneConfig(method="kd", loss=loss, steps=3, lr=1e-2, batch_size=4),
                       progress=False)
    assert len(log.losses) == 3 and all(np.isfinite(log.losses))
    changed = 0
    for name, m in prune.conv_layers(student):
        assert not m.weight[zeros[name]].any(), f"{name}: a pruned weight came back"
        changed += int((m.weight != before[name]).sum())
    assert changed > 0.1 * sum(int((~z).sum()) for z in zeros.values())  # the unpruned weights do learn
    assert not student.training


def test_distillation_lowers_the_loss_and_is_repeatable():
    torch.manual_seed(0)
    teacher = LPRNet().eval()
    student = LPRNet().eval()
    student.load_state_dict(teacher.state_dict())
    prune.run(student, PruneConfig(ratio=0.5))
    start = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = FinetuneConfig(method="kd", steps=15, lr=1e-3, batch_size=4, augment=False)
    first = finetune.run(student, _teacher(teacher), _images(16), cfg, progress=False)
    assert np.mean(first.losses[-5:]) < 0.5 * np.mean(first.losses[:5])
    student.load_state_dict(start)
    assert finetune.run(student, _teacher(teacher), _images(16), cfg, progress=False).losses == first.losses


def test_augment_is_mild_and_seeded():
    x = torch.nn.functional.interpolate(torch.randn(4, 3, 3, 10), size=(24, 94), mode="bilinear")  # smooth, as plates are
    a = finetune.augment(x, torch.Generator().manual_seed(1))
    b = finetune.augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    assert float((a - x).abs().mean()) < 0.25 * float(x.abs().mean())


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    net = LPRNet().eval()
    finetune.save(net, finetune.Log([1.0, 0.5], 2.5, 2), tmp_path)
    other = LPRNet().eval()
    log = finetune.load(other, tmp_path)
    assert log.losses == [1.0, 0.5] and log.seconds == 2.5
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("overrides, message", [
    (["finetune=kd", "finetune.method=sgd"], "finetune.method='sgd'"),
    (["finetune=kd", "finetune.loss=mse"], "finetune.loss='mse'"),
    (["finetune=kd", "finetune.steps=0"], "finetune.steps=0"),
    (["finetune=kd", "finetune.lr=0"], "finetune.lr=0"),
    (["finetune=kd", "data.calib_size=0", "data.val_size=0"], "data.calib_size=0"),
])
def test_bad_finetune_settings_are_refused_before_any_work(overrides, message):
    from lpr_sweep import config

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config.validate(compose_cfg(overrides))


def test_the_finetune_sees_calibration_plates_only_and_is_cached(tmp_path, tiny_root, store, monkeypatch):
    from lpr_sweep import data, pipeline

    fed = []
    real = finetune.run

    def spy(student, teacher, images, cfg, progress=True):
        fed.append(images.copy())
        return real(student, teacher, images, cfg, progress)

    monkeypatch.setattr(finetune, "run", spy)
    overrides = [f"data.root={tiny_root}", f"cache.dir={tmp_path}/cache", "finetune=kd", "finetune.steps=2",
                 "finetune.batch_size=2", "prune.ratio=0.5", *TINY, *store]
    metrics = pipeline.run(compose_cfg(overrides), workdir=tmp_path / "w")
    _, calib, val, scored = data.load(data.DataConfig(root=str(tiny_root), calib_size=2, val_size=2))
    [images] = fed
    assert np.array_equal(images, calib.images)
    for plate in [*val.images, *scored.images]:
        assert not any(np.array_equal(plate, seen) for seen in images)
    assert metrics["cache_hit_finetune"] == 0 and metrics["finetune_seconds"] > 0
    again = pipeline.run(compose_cfg(overrides), workdir=tmp_path / "w2")
    assert len(fed) == 1 and again["cache_hit_finetune"] == 1 and again["cache_hit_export"] == 1
    assert again["accuracy"] == metrics["accuracy"] and again["finetune_seconds"] == metrics["finetune_seconds"]
    # another finetune setting is another model: the cache must not hand back the first one
    third = pipeline.run(compose_cfg([*overrides, "finetune.seed=1"]), workdir=tmp_path / "w3")
    assert len(fed) == 2 and third["cache_hit_finetune"] == 0 and third["cache_hit_export"] == 0


def test_the_run_records_the_loss_curve_and_the_plates(tmp_path, tiny_root, store):
    from conftest import store_config
    from mlflow import MlflowClient

    from lpr_sweep import data, pipeline, tracking

    overrides = [f"data.root={tiny_root}", f"cache.dir={tmp_path}/cache", "finetune=kd", "finetune.steps=3",
                 "finetune.batch_size=2", "prune.ratio=0.5", *TINY, *store]
    pipeline.run(compose_cfg(overrides), workdir=tmp_path / "w")
    cfg = store_config(store)
    client = MlflowClient()
    [run] = client.search_runs([tracking.experiment_id(cfg)])
    curve = client.get_metric_history(run.info.run_id, "finetune_loss")
    assert [m.step for m in curve] == [0, 1, 2]
    _, calib, _, _ = data.load(data.DataConfig(root=str(tiny_root), calib_size=2, val_size=2))
    listed = client.download_artifacts(run.info.run_id, "finetune_files.txt", str(tmp_path))
    assert open(listed, encoding="utf-8").read().split() == calib.files
    assert run.data.params["finetune.method"] == "kd"


def test_channel_padding_reuses_the_distilled_weights_and_is_logged(tmp_path, real_root, store):
    from conftest import store_config
    from mlflow import MlflowClient

    from lpr_sweep import pipeline, tracking

    overrides = [f"data.root={real_root}", f"cache.dir={tmp_path}/cache", "finetune=kd", "finetune.steps=2",
                 "finetune.batch_size=2", "prune.ratio=0.9", "prune.structured=true", *TINY, *store]
    plain = pipeline.run(compose_cfg(overrides), workdir=tmp_path / "w1")
    padded = pipeline.run(compose_cfg([*overrides, "prune.round_to=8"]), workdir=tmp_path / "w8")
    # padding comes after the finetune: the same distilled weights, another exported file
    assert padded["cache_hit_finetune"] == 1 and padded["cache_hit_export"] == 0
    assert padded["accuracy"] == plain["accuracy"] and padded["macs"] > plain["macs"]
    client = MlflowClient()
    runs = {r.data.params["prune.round_to"]: r for r in client.search_runs([tracking.experiment_id(store_config(store))])}
    table = client.download_artifacts(runs["8"].info.run_id, "structured_channels.csv", str(tmp_path))
    rows = [line.split(",") for line in Path(table).read_text(encoding="utf-8").split()[1:]]
    assert all((int(after) + int(added)) % 8 == 0 for _, _, after, added in rows)
    assert any(int(added) > 0 for *_, added in rows)
