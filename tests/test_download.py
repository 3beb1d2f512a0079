import functools
import http.server
import shutil
import threading

import pytest

from conftest import make_root
from lpr_sweep import data, download


@pytest.fixture
def upstream(tmp_path):
    """A local HTTP server laid out like the upstream repository, serving tiny fixtures."""
    root = make_root(tmp_path / "root")
    served = tmp_path / "served"
    for f in data.read_manifest(root / data.MANIFEST):
        target = served / download.upstream_path(f)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((root / f).read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root / data.MANIFEST, served
    server.shutdown()


def test_download_fetches_verifies_and_makes_a_data_root(upstream, tmp_path):
    url, manifest, _ = upstream
    dest = tmp_path / "cache"
    assert download.download(dest, url, manifest) == len(data.read_manifest(manifest))
    assert len(data.verify(dest)) == len(data.read_manifest(manifest))
    assert data.resolve_root(str(dest)) == dest
    assert download.download(dest, url, manifest) == 0  # intact files are not fetched again


def test_download_refuses_a_tampered_file(upstream, tmp_path):
    url, manifest, served = upstream
    (served / "weights" / "Final_LPRNet_model.pth").write_bytes(b"tampered")
    dest = tmp_path / "cache"
    with pytest.raises(data.DataError, match="checksum mismatch for .*Final_LPRNet_model.pth"):
        download.download(dest, url, manifest)
    assert not (dest / "weights" / "Final_LPRNet_model.pth").exists()
    assert not list(dest.rglob("*.part")) and not (dest / data.MANIFEST).exists()


def test_download_reports_a_missing_file(upstream, tmp_path):
    url, manifest, served = upstream
    (served / "LICENSE").unlink(missing_ok=True)
    next(served.glob("data/test/*.jpg")).unlink()
    with pytest.raises(data.DataError, match="cannot download http://127.0.0.1:.*404"):
        download.download(tmp_path / "cache", url, manifest)


def test_upstream_layout():
    assert download.upstream_path("images/京PL3N67.jpg") == "data/test/京PL3N67.jpg"
    assert download.upstream_path("weights/Final_LPRNet_model.pth") == "weights/Final_LPRNet_model.pth"
    assert len(data.read_manifest(download.MANIFEST)) == 1002


def test_check_cli_verifies_the_configured_root(tiny_root, monkeypatch, capsys):
    monkeypatch.setenv(data.ENV_ROOT, str(tiny_root))
    assert download.main(["--check"]) == 0
    assert f"data root {tiny_root}" in capsys.readouterr().out


def test_check_verifies_dest_when_given_not_the_configured_root(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(data.ENV_ROOT, str(tiny_root))  # a good root is configured ...
    bad = tmp_path / "copy"
    shutil.copytree(tiny_root, bad)
    (bad / "weights" / "Final_LPRNet_model.pth").write_bytes(b"truncated")  # ... and --dest names a damaged one
    assert download.main(["--check", "--dest", str(bad)]) == 1
    assert "Final_LPRNet_model.pth" in capsys.readouterr().err
