"""Where data lives, and how it gets there for users who have a network.

Downloads are verified by md5 (of the archive, or of each file when there is no archive) and
land atomically: a file is written beside its target and ``os.replace``d, an archive is
extracted into a temporary folder beside the target and renamed into place. A crash or a
concurrent run therefore never leaves a half-written data folder that a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .errors import DataError

__all__ = [
    "ENV_VAR",
    "default_root",
    "resolve_root",
    "md5sum",
    "verify_md5",
    "download_url",
    "extract_archive",
    "download_and_extract",
]

ENV_VAR = "SHARPEST_DATA"
_CHUNK = 1 << 20


def default_root() -> Path:
    """The data root used when none is given.

    ``$SHARPEST_DATA`` if set, else ``~/.cache/sharpest/data``.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/sharpest/data").expanduser()


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """The given root (``~`` expanded), or :func:`default_root` when ``root`` is ``None``."""
    return default_root() if root is None else Path(root).expanduser()


def md5sum(path: str | os.PathLike[str]) -> str:
    """Hex md5 digest of a file, read in chunks so large archives do not fill memory."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return digest.hexdigest()


def verify_md5(path: str | os.PathLike[str], expected: str) -> None:
    """Raise :class:`DataError` naming ``path`` unless its md5 digest is ``expected``."""
    actual = md5sum(path)
    if actual != expected.lower():
        raise DataError(
            f"checksum mismatch for {path}: md5 {actual}, expected {expected}. The file is "
            "corrupt or truncated (an interrupted download?); delete it and try again."
        )


def _offline_message(url: str, target: Path, reason: object) -> str:
    return (
        f"could not download {url} ({reason}). If this machine has no network, fetch it on one "
        f"that has and put it at {target}, or point data_root (--set data_root=DIR, or "
        f"${ENV_VAR}) at a folder that "
        "already holds the data."
    )


def download_url(
    url: str, dest: str | os.PathLike[str], md5: str | None = None, timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying ``md5`` when given.

    The bytes go to a temporary file in ``dest``'s folder (same file system, so the final
    ``os.replace`` is atomic) and only a verified file is moved into place.

    Args:
        url: what to download.
        dest: the file to write.
        md5: the expected md5 digest (None: not checked).
        timeout: seconds the connection may stall.

    Returns:
        ``dest``.

    Raises:
        DataError: the download failed (offline, say) or its checksum does not match.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)  # the mode open() would give, not mkstemp's 0600
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out, _CHUNK)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataError(_offline_message(url, dest, reason)) from exc
        if md5 is not None:
            actual = md5sum(tmp)
            if actual != md5.lower():
                raise DataError(
                    f"checksum mismatch for {dest} downloaded from {url}: md5 {actual}, "
                    f"expected {md5}. The download was corrupted or truncated; try again."
                )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """The archive's members, refusing any that would land outside the extraction folder."""
    members = tar.getmembers()
    for m in members:
        name = Path(m.name)
        if name.is_absolute() or ".." in name.parts:
            raise DataError(f"refusing to extract {archive}: unsafe member path {m.name!r}")
        if m.issym() or m.islnk() or m.isdev():
            raise DataError(f"refusing to extract {archive}: link or device member {m.name!r}")
    return members


def extract_archive(
    archive: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    folder: str,
    md5: str | None = None,
) -> Path:
    """Verify ``archive`` (md5, when given) and extract its top folder ``folder`` into ``dest_dir``.

    The archive is unpacked into a temporary folder inside ``dest_dir`` and ``folder`` is then
    renamed into place, so ``dest_dir/folder`` either does not exist or is complete. If it
    appeared meanwhile (another process won the race) the existing one is kept.

    Args:
        archive: the tar archive.
        dest_dir: where the folder goes.
        folder: the archive's top folder.
        md5: the archive's expected md5 digest (None: not checked).

    Returns:
        ``dest_dir/folder``.

    Raises:
        DataError: a checksum mismatch, a corrupt archive, an unsafe member (a path outside the
            folder, a link or a device), or no ``folder`` in the archive.
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir)
    if md5 is not None:
        verify_md5(archive, md5)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".extract", dir=dest_dir))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = _safe_members(tar, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4; members were vetted above
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"cannot extract {archive}: {exc} (corrupt or truncated?)") from exc
        extracted = tmp / folder
        if not extracted.is_dir():
            found = sorted(p.name for p in tmp.iterdir())
            raise DataError(f"{archive} does not contain the folder {folder!r} (found {found})")
        try:
            os.rename(extracted, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def download_and_extract(
    url: str, md5: str, root: str | os.PathLike[str], folder: str, timeout: float = 60.0
) -> Path:
    """Download the archive at ``url`` into ``root``, verify it, extract ``folder``, delete it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # A private folder per call: concurrent downloads of the same archive cannot delete or
    # overwrite each other's copy between download and extraction.
    workdir = Path(tempfile.mkdtemp(prefix=".download.", dir=root))
    try:
        archive = download_url(
            url, workdir / url.rstrip("/").rsplit("/", 1)[-1], md5=md5, timeout=timeout
        )
        return extract_archive(archive, root, folder, md5=None)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
