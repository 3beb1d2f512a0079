"""The labelled plates: where they live, that they are intact, how they split.

A data root holds ``SHA256SUMS`` (sha256sum format), ``weights/*.pth`` and ``images/<plate>.jpg``.
``SHA256SUMS`` defines the data set: every file it lists must exist and match before any work, and
the images it lists are the plates.
"""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lpr_sweep import ConfigError, DataError, restore_hint  # noqa: F401  (DataError is imported from here too)
from lpr_sweep.model import CHARS, INPUT_HW

ENV_ROOT = "LPR_DATA_ROOT"
MANIFEST = "SHA256SUMS"
ON_WRONG_SIZE = ("resize", "error")
_CHAR_INDEX = {c: i for i, c in enumerate(CHARS[:-1])}  # the blank is never a label character
# Beside the repository, as the project is laid out on developer and CI machines.
_SHARED_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "lprnet"


@dataclass
class DataConfig:
    root: str = "auto"  # auto: ../shared/data/lprnet beside the repo if present, else the download cache
    calib_size: int = 100  # plates set aside for calibration; never scored
    val_size: int = 200  # labelled plates the decisions use (int8 guard, search, champion); never scored
    seed: int = 0  # seeds the calibration/validation/scored split
    on_wrong_size: str = "resize"  # resize (logged as protocol.images_resized) | error
    verify_checksums: bool = True

    def __post_init__(self):
        if self.on_wrong_size not in ON_WRONG_SIZE:
            raise ConfigError(f"data.on_wrong_size={self.on_wrong_size!r} is not one of {ON_WRONG_SIZE}")
        if self.calib_size < 0 or self.val_size < 0:
            raise ConfigError(f"data.calib_size={self.calib_size} and data.val_size={self.val_size} must be >= 0; use 0 to score every plate")


@dataclass
class Plates:
    files: list[str]  # paths relative to the data root, as in SHA256SUMS
    labels: list[str]
    images: np.ndarray  # (N, 3, 24, 94) float32, normalised as in training
    resized: int = 0  # how many images were not 94x24 on disk

    def __len__(self) -> int:
        return len(self.files)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lpr_sweep" / "lprnet"


def resolve_root(configured: str | None) -> Path:
    """``data.root`` if set (``LPR_DATA_ROOT`` fills it in config), else ../shared, else the cache."""
    if configured and configured != "auto":
        root = Path(configured).expanduser().resolve()
    else:
        root = next((p for p in (_SHARED_ROOT, cache_dir()) if p.is_dir()), cache_dir())
    if not (root / MANIFEST).is_file():
        raise DataError(
            f"data root {root} has no {MANIFEST}; set data.root=... or {ENV_ROOT}, "
            "or run `python -m lpr_sweep.download`"
        )
    return root


def identity(cfg: DataConfig) -> str:
    """What the data is, wherever it sits: the digest of its SHA256SUMS (which names every file's digest)."""
    return hashlib.sha256((resolve_root(cfg.root) / MANIFEST).read_bytes()).hexdigest()[:24]


def files_digest(plates: "Plates") -> str:
    """Which plates a split holds: the digest of its file list, in order."""
    return hashlib.sha256(("\n".join(plates.files) + "\n").encode()).hexdigest()[:12]


def read_manifest(path: Path) -> dict[str, str]:
    """{relative path: sha256} from a sha256sum-format file."""
    entries = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise DataError(f"{path}:{n} is not a sha256sum line; regenerate it with `sha256sum`")
        entries[name.removeprefix("./")] = digest
    return entries


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(root: Path) -> dict[str, str]:
    """Check every file listed in SHA256SUMS; return the manifest."""
    manifest = read_manifest(root / MANIFEST)
    for name, digest in manifest.items():
        path = root / name
        if not path.is_file():
            raise DataError(f"missing file {path} listed in {MANIFEST}; {restore_hint(root)}")
        got = sha256(path)
        if got != digest:
            raise DataError(f"checksum mismatch for {path} (expected {digest[:12]}…, got {got[:12]}…); {restore_hint(root)}")
    return manifest


def label_of(name: str) -> str:
    """The plate text is the file stem; every character must be in the 68-class list."""
    label = Path(name).stem
    bad = [c for c in label if c not in _CHAR_INDEX]
    if bad or not label:
        raise DataError(
            f"label {label!r} of {name} has characters outside the LPRNet class list: {''.join(bad)!r}; "
            "rename the file to its plate text"
        )
    return label


def encode(label: str) -> list[int]:
    return [_CHAR_INDEX[c] for c in label]


def read_bgr(path: Path) -> np.ndarray:
    """The image as OpenCV decodes it: uint8 (H, W, 3), BGR."""
    # imdecode(fromfile) rather than imread: plate names are not ASCII.
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:  # OpenCV asserts on an empty buffer instead of returning None
        raise DataError(f"cannot decode image {path}: the file is empty (0 bytes); replace or remove it")
    img = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot decode image {path}: unreadable or corrupt; replace or remove it")
    return img


def preprocess(img: np.ndarray) -> np.ndarray:
    """A BGR uint8 image as LPRNet's input: resized to 94x24 if needed (as upstream's test loader
    does), normalised, CHW float32. The deployed model runs the same function."""
    h, w = INPUT_HW
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    return ((img.astype(np.float32) - 127.5) * 0.0078125).transpose(2, 0, 1)


def read_image(path: Path, on_wrong_size: str) -> tuple[np.ndarray, bool]:
    """BGR image as normalised CHW float32, and whether it had to be resized to 94x24."""
    img = read_bgr(path)
    h, w = INPUT_HW
    resized = img.shape[:2] != (h, w)
    if resized and on_wrong_size == "error":
        raise DataError(f"image {path} is {img.shape[1]}x{img.shape[0]}, LPRNet takes {w}x{h}; crop it or set data.on_wrong_size=resize")
    return preprocess(img), resized


def load_plates(root: Path, files: list[str], on_wrong_size: str = "resize") -> Plates:
    labels = [label_of(f) for f in files]
    images, resized = [], 0
    for f in files:
        img, was_resized = read_image(root / f, on_wrong_size)
        images.append(img)
        resized += was_resized
    array = np.stack(images) if images else np.zeros((0, 3, *INPUT_HW), np.float32)
    return Plates(files=list(files), labels=labels, images=array, resized=resized)


def split(files: list[str], calib_size: int, seed: int, val_size: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Seeded calibration/validation/scored split, independent of directory order; each part sorted.

    The calibration plates are the first ``calib_size`` of one seeded shuffle whatever ``val_size``
    is, so adding a validation split takes its plates from the scored ones only.
    """
    if calib_size < 0 or val_size < 0 or calib_size + val_size >= len(files):
        raise DataError(
            f"data.calib_size={calib_size} + data.val_size={val_size} must leave plates to score of the {len(files)}; lower them"
        )
    shuffled = sorted(files)
    random.Random(seed).shuffle(shuffled)
    cut = calib_size + val_size
    return sorted(shuffled[:calib_size]), sorted(shuffled[calib_size:cut]), sorted(shuffled[cut:])


def load(cfg: DataConfig) -> tuple[Path, Plates, Plates, Plates]:
    """Resolve and verify the root, then return (root, calibration, validation and scored plates)."""
    root = resolve_root(cfg.root)
    manifest = verify(root) if cfg.verify_checksums else read_manifest(root / MANIFEST)
    files = [f for f in manifest if f.startswith("images/")]
    if not files:
        raise DataError(f"{root / MANIFEST} lists no images/ files; point data.root at an LPRNet data root")
    parts = split(files, cfg.calib_size, cfg.seed, cfg.val_size)
    return root, *(load_plates(root, part, cfg.on_wrong_size) for part in parts)
