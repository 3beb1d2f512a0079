"""``python -m lpr_sweep.download``: fetch the upstream weights and test plates, checksum by checksum.

Files land in a user cache (``$XDG_CACHE_HOME/lpr_sweep/lprnet`` by default) together with a
``SHA256SUMS``, which makes that folder a data root. Each file is written to ``.part``, hashed, and
renamed only when its hash matches ``lprnet.sha256`` (shipped with the package; the checksums of
upstream commit 7c97666), so an interrupted or tampered download never leaves a file that looks good.
``--check`` only verifies an existing data root.
"""
from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lpr_sweep import data

UPSTREAM = "https://github.com/sirius-ai/LPRNet_Pytorch/raw/7c97666"
MANIFEST = Path(__file__).with_name("lprnet.sha256")
TIMEOUT_S = 60


def upstream_path(name: str) -> str:
    """Where a data-root file lives in the upstream repository."""
    if name.startswith("images/"):
        return "data/test/" + name.removeprefix("images/")
    return name


def fetch(base_url: str, name: str, digest: str, dest: Path) -> bool:
    """Download one file unless it is already there and intact; True when it was downloaded."""
    target = dest / name
    if target.is_file() and data.sha256(target) == digest:
        return False
    url = f"{base_url.rstrip('/')}/{urllib.parse.quote(upstream_path(name))}"
    part = target.with_name(target.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            part.write_bytes(response.read())
    except OSError as e:
        part.unlink(missing_ok=True)
        raise data.DataError(f"cannot download {url}: {e}; check the network or --base-url") from e
    got = data.sha256(part)
    if got != digest:
        part.unlink()
        raise data.DataError(
            f"checksum mismatch for {url} (expected {digest[:12]}…, got {got[:12]}…); "
            "the source changed or is not upstream commit 7c97666"
        )
    part.replace(target)
    return True


def download(dest: Path, base_url: str = UPSTREAM, manifest: Path = MANIFEST, workers: int = 8) -> int:
    """Fetch every file in ``manifest`` into ``dest``; return how many were downloaded."""
    entries = data.read_manifest(manifest)
    dest.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(lambda kv: fetch(base_url, kv[0], kv[1], dest), entries.items()))
    # Written last: a folder with SHA256SUMS is a complete data root.
    (dest / data.MANIFEST).write_text("".join(f"{d}  {n}\n" for n, d in entries.items()), encoding="utf-8")
    return sum(done)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpr_sweep.download", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=None,
                        help=f"target folder (default: {data.cache_dir()}); with --check, the folder to verify")
    parser.add_argument("--base-url", default=UPSTREAM, help="mirror of the upstream repository at 7c97666")
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help="verify --dest, or else the configured data root, and exit")
    args = parser.parse_args(argv)
    try:
        if args.check:
            root = data.resolve_root(str(args.dest) if args.dest else os.environ.get(data.ENV_ROOT))
            print(f"data root {root}: {len(data.verify(root))} files match {data.MANIFEST}")
            return 0
        args.dest = args.dest or data.cache_dir()
        n = download(args.dest, args.base_url, args.manifest)
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{n} files downloaded, all {len(data.read_manifest(args.manifest))} verified in {args.dest}")
    print(f"use it with: export {data.ENV_ROOT}={args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
