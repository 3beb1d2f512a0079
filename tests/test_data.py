import numpy as np
import pytest

from conftest import PLATES, make_root, write_manifest
from lpr_sweep import data
from lpr_sweep.data import DataConfig, DataError


def test_real_root_verifies_and_splits(real_root):
    root, calib, val, scored = data.load(DataConfig(root=str(real_root)))
    assert (len(calib), len(val), len(scored)) == (100, 200, 700)
    assert not set(calib.files) & set(scored.files) and not set(val.files) & (set(scored.files) | set(calib.files))
    assert scored.images.shape == (700, 3, 24, 94) and scored.images.dtype == np.float32
    assert scored.resized == val.resized == calib.resized == 0
    i = scored.files.index("images/京PL3N67.jpg") if "images/京PL3N67.jpg" in scored.files else 0
    assert scored.labels[i] == scored.files[i][len("images/") : -len(".jpg")]


def test_env_var_fills_the_default_root(tiny_root, monkeypatch):
    from conftest import compose_cfg

    monkeypatch.setenv(data.ENV_ROOT, str(tiny_root))
    assert compose_cfg().data.root == str(tiny_root)
    assert data.resolve_root(compose_cfg().data.root) == tiny_root


def test_missing_root_names_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"has no SHA256SUMS; set data.root=.*LPR_DATA_ROOT.*download"):
        data.resolve_root(str(tmp_path / "nowhere"))


def test_checksum_mismatch_names_the_file(tiny_root):
    victim = tiny_root / "images" / f"{PLATES[0]}.jpg"
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(DataError, match=f"checksum mismatch for .*{PLATES[0]}.jpg"):
        data.load(DataConfig(root=str(tiny_root), calib_size=1, val_size=1))


def test_corrupt_image_is_refused(tiny_root):
    (tiny_root / "images" / f"{PLATES[1]}.jpg").write_bytes(b"not a jpeg")
    write_manifest(tiny_root)
    with pytest.raises(DataError, match=f"cannot decode image .*{PLATES[1]}.jpg: unreadable or corrupt"):
        data.load(DataConfig(root=str(tiny_root), calib_size=1, val_size=1))


def test_wrong_size_is_resized_and_counted(tmp_path):
    root = make_root(tmp_path / "d", size=(120, 30))
    _, calib, val, scored = data.load(DataConfig(root=str(root), calib_size=2, val_size=2))
    assert scored.images.shape[1:] == (3, 24, 94)
    assert calib.resized + val.resized + scored.resized == len(PLATES)


def test_wrong_size_can_be_refused(tmp_path):
    root = make_root(tmp_path / "d", size=(120, 30))
    with pytest.raises(DataError, match=r"is 120x30, LPRNet takes 94x24; crop it or set data.on_wrong_size=resize"):
        data.load(DataConfig(root=str(root), calib_size=2, val_size=2, on_wrong_size="error"))


def test_label_outside_class_list_is_refused(tmp_path):
    root = make_root(tmp_path / "d", labels=["京PL3N67", "京PL3N6!"])
    with pytest.raises(DataError, match=r"label '京PL3N6!' .* outside the LPRNet class list: '!'"):
        data.load(DataConfig(root=str(root), calib_size=0, val_size=0))


def test_split_is_seeded_and_order_independent():
    files = [f"images/{i}.jpg" for i in range(50)]
    a = data.split(files, 10, seed=3, val_size=15)
    assert a == data.split(list(reversed(files)), 10, seed=3, val_size=15)
    assert a != data.split(files, 10, seed=4, val_size=15)
    assert sorted(a[0] + a[1] + a[2]) == sorted(files) and (len(a[0]), len(a[1]), len(a[2])) == (10, 15, 25)
    # the validation plates come out of the scored ones: calibration stays as it was without them
    assert data.split(files, 10, seed=3)[0] == a[0] and set(a[1]) < set(data.split(files, 10, seed=3)[2])


def test_calibration_and_validation_must_leave_plates_to_score():
    with pytest.raises(DataError, match=r"data.calib_size=3 \+ data.val_size=2 must leave plates to score of the 5"):
        data.split(["a", "b", "c", "d", "e"], 3, seed=0, val_size=2)


def test_encode_uses_the_class_list():
    assert data.encode("京A0") == [0, 41, 31]


def test_an_empty_image_file_is_named_not_a_decoder_assertion(tmp_path, capsys):
    from lpr_sweep import predict

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(data.DataError, match="the file is empty \\(0 bytes\\)"):
        data.read_bgr(empty)
    assert predict.main([str(empty)]) == 1  # no model is loaded for no readable image
    assert capsys.readouterr().err.strip() == f"error: cannot decode image {empty}: the file is empty (0 bytes); replace or remove it"
