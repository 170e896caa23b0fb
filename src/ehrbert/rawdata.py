"""Get the raw inputs into `data/`, verified file by file against the sha256 manifest.

`data/` holds the raw inputs only (corpora, vocabularies, abbreviation tables, notes) and is tracked
by DVC as one directory (`data.dvc`); every stage writes elsewhere. The manifest (`data.sha256`,
`sha256sum` format, paths relative to `data/`) is kept in git, so the checksums of research-only
files (CADEC) are versioned while the files themselves never enter git.

On this machine the files come from a read-only mirror laid out like `data/`; its location is the
environment variable EHRBERT_DATA_MIRROR (default: `../shared/data` beside the repository). Users
elsewhere download each source from its official location (README, "Data") into that layout.

    python -m ehrbert.rawdata fetch   [--mirror DIR] [--dest data] [--manifest data.sha256]
    python -m ehrbert.rawdata verify  [--dest data] [--manifest data.sha256]

`fetch` copies into a temporary folder beside the destination and renames it into place only once
every file has been verified, so a failed or interrupted fetch leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ehrbert.stage import setup_logging

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MIRROR = ROOT.parent / "shared" / "data"


class ChecksumError(RuntimeError):
    pass


def read_manifest(path: Path) -> dict[str, str]:
    """`sha256  relative/path` lines -> {relative path: sha256}."""
    entries: dict[str, str] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or name.startswith("/") or ".." in Path(name).parts:
            raise ChecksumError(f"{path}:{line_no}: expected '<sha256>  <relative path>', got {line!r}")
        entries[name] = digest
    return entries


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(folder: Path, manifest: dict[str, str]) -> list[str]:
    """Problems found (missing or changed files); empty when `folder` matches the manifest."""
    problems = []
    for name, digest in manifest.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256(path) != digest:
            problems.append(f"{path}: sha256 differs from the manifest")
    return problems


def fetch(mirror: Path, dest: Path, manifest: dict[str, str]) -> None:
    """Copy every manifest file from `mirror` to `dest`, verified; `dest` appears only when complete."""
    if dest.exists():
        problems = verify(dest, manifest)
        if not problems:
            log.info("%s already matches the manifest (%d files)", dest, len(manifest))
            return
        raise ChecksumError(f"{dest} exists but does not match the manifest:\n" + "\n".join(problems[:20]))
    if not mirror.is_dir():
        raise ChecksumError(
            f"data mirror {mirror} not found: set EHRBERT_DATA_MIRROR, or download the sources listed in README.md"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        for name in manifest:
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mirror / name, target)
        problems = verify(staging, manifest)
        if problems:
            raise ChecksumError("the mirror does not match the manifest:\n" + "\n".join(problems[:20]))
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("fetched %d files into %s (sha256 verified)", len(manifest), dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fetch", "verify"])
    parser.add_argument("--mirror", type=Path, default=Path(os.environ.get("EHRBERT_DATA_MIRROR", DEFAULT_MIRROR)))
    parser.add_argument("--dest", type=Path, default=ROOT / "data")
    parser.add_argument("--manifest", type=Path, default=ROOT / "data.sha256")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        manifest = read_manifest(args.manifest)
        if args.command == "fetch":
            fetch(args.mirror, args.dest, manifest)
        else:
            problems = verify(args.dest, manifest)
            if problems:
                raise ChecksumError("\n".join(problems))
            log.info("%s matches the manifest (%d files)", args.dest, len(manifest))
    except (ChecksumError, OSError) as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
