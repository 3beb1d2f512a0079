"""Content-addressed stage cache: a trial reuses what an earlier trial built from the same inputs.

Keys hash every input of a stage: the weights file's bytes, the prune config, the model norm, the
code and package versions, and for the quant stage the export key, the quant config, the runtime
and the plate lists (the guard scores on the validation plates). An entry is a folder built under a
temporary name and renamed into place, so parallel trials never see a half-written entry; when two
build the same key at once, the first rename wins and the other's copy is dropped. Each entry
carries its files' checksums, verified on every hit: a damaged entry is removed and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from lpr_sweep import ConfigError

log = logging.getLogger(__name__)
SEAL = "SHA256SUMS"  # inside each entry: its files' digests
_PACKAGES = ("torch", "onnx", "onnxscript")  # export; a stage adds the packages of its runtime and backend


@dataclass
class CacheConfig:
    enabled: bool = True
    dir: str = "auto"  # auto = $XDG_CACHE_HOME/lpr_sweep/stages (~/.cache/lpr_sweep/stages)


def root(cfg: CacheConfig) -> Path:
    if cfg.dir != "auto":
        return Path(cfg.dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lpr_sweep" / "stages"


def _code_version(packages: tuple[str, ...]) -> str:
    """Any change to this package's code or to the packages that build artifacts changes every key."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    for package in sorted({*_PACKAGES, *packages}):
        try:
            digest.update(f"{package}={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(package.encode())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def key(*parts: Any, packages: tuple[str, ...] = ()) -> str:
    """A stage's key: its inputs, this code, and the versions of ``packages`` (the stage's backends)."""
    text = json.dumps([_code_version(packages), *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def seal(folder: Path) -> None:
    """Record every file's digest in the folder, so a later reader can tell it is intact."""
    lines = [f"{file_digest(p)}  {p.relative_to(folder).as_posix()}" for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != SEAL]
    (folder / SEAL).write_text("\n".join(lines) + "\n", encoding="utf-8")


def damage(folder: Path) -> str | None:
    """None when the folder matches its seal; else what is wrong, in a few words."""
    seal_file = folder / SEAL
    if not seal_file.is_file():
        return f"no {SEAL} (written by an older version, or cut short)"
    for line in seal_file.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_digest(path) != digest:
            return f"{name} does not match its checksum ({path.stat().st_size} bytes)"
    return None


def fetch(cfg: CacheConfig, stage: str, key_: str, build: Callable[[Path], None], workdir: Path) -> tuple[Path, bool]:
    """(folder with the stage's outputs, whether it came from the cache). ``build`` fills a folder.

    Every entry carries its files' checksums and is verified on every hit; a damaged entry is
    reported in one line, removed and rebuilt.
    """
    if not cfg.enabled:
        folder = workdir / stage
        folder.mkdir(parents=True, exist_ok=True)
        build(folder)
        return folder, False
    final = root(cfg) / stage / key_
    if final.is_dir():
        problem = damage(final)
        if problem is None:
            log.info("cache: %s hit (%s)", stage, final)
            return final, True
        log.error("cache: entry %s is damaged (%s); removed and rebuilt", final, problem)
        shutil.rmtree(final, ignore_errors=True)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key_}.", dir=final.parent))
    except OSError as e:
        raise ConfigError(f"stage cache folder {final.parent} cannot be created ({e.strerror or e}); set cache.dir to a writable "
                          "folder (or XDG_CACHE_HOME), or cache.enabled=false") from None
    try:
        build(work)
        seal(work)
        try:
            work.rename(final)
        except OSError:  # a parallel trial stored the same key first: use its entry
            log.info("cache: %s was stored by another trial meanwhile", stage)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final, False
