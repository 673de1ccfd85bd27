"""Fetching pinned npm tarballs, checking their checksums and extracting them safely.

The demo dataset is built only from immutable, pinned npm package versions. Each tarball is
downloaded with ``npm pack`` (the ordinary npm client), its sha1 is compared with the registry's
``dist.shasum`` recorded in ``shared/spec/demo-data.md``, and the members we need are extracted
with :mod:`tarfile`, refusing any member that could write outside the destination folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

__all__ = [
    "ChecksumError",
    "NpmTarball",
    "UnsafeArchiveError",
    "fetch_npm_tarball",
    "file_sha1",
    "safe_extract",
]

_COMPLETE_MARKER = ".extracted-sha1"


class ChecksumError(RuntimeError):
    """A downloaded file does not have the pinned checksum."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the destination, or is not a plain file."""


@dataclass(frozen=True)
class NpmTarball:
    """One pinned npm package tarball.

    Attributes:
        spec: The npm package spec with an exact version, e.g. ``"emoji-datasource-google@16.0.0"``.
        filename: The file name that ``npm pack`` writes for that spec.
        sha1: The registry's ``dist.shasum`` (hex sha1 of the tarball).
    """

    spec: str
    filename: str
    sha1: str

    def __post_init__(self) -> None:
        if len(self.sha1) != 40 or any(c not in "0123456789abcdef" for c in self.sha1):
            raise ValueError(f"sha1 of {self.spec} must be 40 lowercase hex digits: {self.sha1!r}")


def file_sha1(path: Path) -> str:
    """Hex sha1 of a file, read in 1 MiB chunks.

    Args:
        path: The file to hash.

    Returns:
        The 40-character lowercase hex digest.
    """
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha1(path: Path, tarball: NpmTarball) -> None:
    actual = file_sha1(path)
    if actual != tarball.sha1:
        raise ChecksumError(
            f"checksum mismatch for {path} ({tarball.spec}): expected sha1 {tarball.sha1}, "
            f"got {actual}. The file is not the pinned registry tarball; delete it and run again, "
            "or check the npm registry/proxy in use."
        )


def fetch_npm_tarball(tarball: NpmTarball, raw_dir: Path) -> Path:
    """Download a pinned tarball with ``npm pack`` (unless cached) and verify its sha1.

    A tarball already present in ``raw_dir`` is reused after its checksum is verified, so a
    build works offline once the tarballs are there.

    Args:
        tarball: The pinned package.
        raw_dir: Folder that holds the downloaded tarballs.

    Returns:
        Path of the verified tarball.

    Raises:
        ChecksumError: The cached or downloaded file has another sha1.
        RuntimeError: ``npm`` is missing or ``npm pack`` failed.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / tarball.filename
    if path.is_file():
        logger.info("using cached %s", path)
        _check_sha1(path, tarball)
        return path
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"npm is not installed; cannot fetch {tarball.spec}. Install node/npm, or place "
            f"{tarball.filename} (sha1 {tarball.sha1}) in {raw_dir}."
        )
    logger.info("npm pack %s", tarball.spec)
    command = [npm, "pack", "--silent", "--pack-destination", str(raw_dir), tarball.spec]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(command)}` failed with exit code {result.returncode}:\n{result.stderr}"
        )
    if not path.is_file():
        raise RuntimeError(
            f"npm pack {tarball.spec} did not write {path} (stdout: {result.stdout.strip()!r})"
        )
    _check_sha1(path, tarball)
    return path


def _member_target(member: tarfile.TarInfo, dest: Path, prefix: str) -> Path | None:
    """Destination of a member, or None when it is not under ``prefix``; raises if unsafe.

    The folder part of ``prefix`` (up to its last ``/``) is stripped from the member path.
    """
    name = member.name
    posix = PurePosixPath(name)
    if posix.is_absolute() or name.startswith(("/", "\\")) or ".." in posix.parts:
        raise UnsafeArchiveError(f"refusing archive member with an unsafe path: {name!r}")
    if "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"refusing archive member with a Windows path: {name!r}")
    if not name.startswith(prefix):
        return None
    relative = name[prefix.rfind("/") + 1 :]
    if not relative:
        return None
    target = (dest / relative).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise UnsafeArchiveError(f"archive member {name!r} would be written outside {dest}")
    return target


def safe_extract(
    archive: Path, dest: Path, prefixes: Sequence[str], expected_sha1: str | None = None
) -> int:
    """Extract the regular files under some prefixes of a tar archive, refusing unsafe members.

    A member is refused (the whole extraction fails, nothing outside ``dest`` is written) when
    its path is absolute, contains ``..``, or would resolve outside ``dest``; links, devices and
    other non-regular members under a wanted prefix are refused too. The folder part of each
    prefix is stripped from the member path, so ``"package/img/google/64/"`` puts the images
    directly in ``dest`` and ``"package/emoji.json"`` writes ``dest/emoji.json``.
    Extraction goes to a temporary sibling folder that is renamed at the end; when
    ``expected_sha1`` is given and ``dest`` already holds a complete extraction of an archive with
    that sha1 and the same prefixes, nothing is done.

    Args:
        archive: The ``.tgz``/``.tar`` file.
        dest: Destination folder (created).
        prefixes: Member path prefixes to extract, e.g. ``"package/assets/"``.
        expected_sha1: sha1 of ``archive`` recorded in ``dest`` to skip repeated extraction.

    Returns:
        Number of files extracted (or found in a previous complete extraction).

    Raises:
        UnsafeArchiveError: A member has an unsafe path or type.
    """
    marker = dest / _COMPLETE_MARKER
    wanted = ",".join(prefixes)
    if expected_sha1 is not None and marker.is_file():
        recorded = marker.read_text().split()
        if len(recorded) == 3 and recorded[0] == expected_sha1 and recorded[2] == wanted:
            logger.info("using extracted %s (%s files)", dest, recorded[1])
            return int(recorded[1])
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    count = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                for prefix in prefixes:
                    target = _member_target(member, tmp, prefix)
                    if target is None:
                        continue
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    if not member.isreg():
                        raise UnsafeArchiveError(
                            f"refusing non-regular archive member {member.name!r} "
                            f"(type {member.type!r})"
                        )
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    if source is None:
                        raise UnsafeArchiveError(f"cannot read archive member {member.name!r}")
                    with source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out)
                    os.chmod(target, 0o644)
                    count += 1
                    break
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if expected_sha1 is not None:
        (tmp / _COMPLETE_MARKER).write_text(f"{expected_sha1} {count} {wanted}\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    logger.info("extracted %d files from %s to %s", count, archive.name, dest)
    return count
