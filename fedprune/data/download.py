"""Download, verify and extract a dataset archive, resumably and idempotently.

`download_dataset` is what ``fedprune data download NAME`` runs:

1. If the dataset's layout is already complete under the data root, it does nothing.
2. The archive is fetched into ``<root>/<archive>.part`` with HTTP ``Range`` requests, so an
   interrupted transfer (this call's retries, or a later call) continues where it stopped.
   An archive already at ``<root>/<archive>`` (for example copied there by hand) is used as is.
3. The archive's MD5 is checked against the catalog's (or ``md5=``) checksum. On a mismatch the
   file is kept aside as ``<archive>.bad`` and `DataError` names it.
4. It is extracted into a staging directory with every member checked against path traversal,
   and the dataset folder is moved into place only when complete; a marker file records the URL
   and checksum.

Only the standard library is used (urllib, tarfile, zipfile). The URL can be overridden with
``url=`` or the ``FEDPRUNE_<NAME>_URL`` environment variable (a mirror, or a local test server).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from fedprune.data.catalog import DatasetInfo, get_info, layout_problem, resolve_root
from fedprune.errors import DataError

MARKER = ".fedprune-download.json"
CHUNK = 1 << 20

Progress = Callable[[int, "int | None"], None]


@dataclass
class DownloadResult:
    """What `download_dataset` did: ``present`` (nothing to do) or ``downloaded``."""

    name: str
    path: Path
    action: str
    message: str


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


class _Interrupted(Exception):
    """The server closed the connection before sending the whole body."""


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range: bytes a-b/total`` header."""
    match = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not match:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return first, total


def fetch(
    url: str,
    dest: Path,
    *,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming with HTTP Range requests.

    An interrupted transfer is retried ``retries`` times (waiting ``backoff`` seconds times the
    attempt number), each time asking only for the missing bytes; a server that ignores Range
    requests is read again from the start. If every attempt fails, the ``.part`` file is kept
    and `DataError` says that running the command again resumes it.
    """
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        total: int | None = None
        request = urllib.request.Request(url, headers={"User-Agent": "fedprune-data/1"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = getattr(response, "status", None) or 200
                length = response.headers.get("Content-Length")
                expected_body = int(length) if length and length.isdigit() else None
                if have and status == 206:
                    first, total = _content_range(response.headers.get("Content-Range"))
                    if first != have:
                        raise _Interrupted("the server answered with another byte range")
                    mode = "ab"
                else:  # a fresh start, or a server that ignores Range: read from the start
                    have, mode, total = 0, "wb", expected_body
                received = 0
                with open(part, mode) as out:
                    while block := response.read(CHUNK):
                        out.write(block)
                        received += len(block)
                        have += len(block)
                        if progress is not None:
                            progress(have, total)
                if (expected_body is not None and received < expected_body) or (
                    total is not None and have < total
                ):
                    raise _Interrupted("the connection closed early")
            part.replace(dest)
            return dest
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                # Nothing left to send: the part file is already whole, or it is not this file.
                _, total = _content_range(exc.headers.get("Content-Range") if exc.headers else None)
                if total == have:
                    part.replace(dest)
                    return dest
                part.unlink()
                failures += 1
                if failures > retries:
                    raise DataError(f"downloading {url} failed: HTTP 416 {exc.reason}") from None
                continue
            raise DataError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from None
        except (OSError, http.client.HTTPException, _Interrupted) as exc:
            failures += 1
            have = part.stat().st_size if part.exists() else 0
            if failures > retries:
                if have == 0:
                    reason = getattr(exc, "reason", None) or exc
                    raise DataError(
                        f"cannot download {url}: {reason}; check the network, or pass --url (or "
                        "set the URL variable) to a reachable mirror"
                    ) from None
                of = f" of {total}" if total else ""
                raise DataError(
                    f"download of {url} was interrupted at {have}{of} bytes after {failures} "
                    f"attempts; the partial file {part} is kept: run the same command again to "
                    "resume"
                ) from None
            time.sleep(backoff * failures)


def verify(path: Path, expected_md5: str, info: DatasetInfo, source: str) -> None:
    """Check ``path``'s MD5; on a mismatch keep it aside as ``<name>.bad`` and raise."""
    actual = file_md5(path)
    if actual == expected_md5.lower():
        return
    bad = path.with_name(path.name + ".bad")
    path.replace(bad)
    note = (
        ""
        if info.md5_published or expected_md5.lower() != info.md5
        else f" (note: this expected checksum is {info.md5_source}; if you have verified the "
        "file another way, pass --md5 with its checksum)"
    )
    raise DataError(
        f"checksum mismatch for {info.title} archive from {source}: md5 {actual}, expected "
        f"{expected_md5.lower()}; the file was kept aside as {bad} (delete it and run again)"
        f"{note}"
    )


def _check_member(name: str, dest: Path, archive: Path) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"{archive}: refusing unsafe path {name!r} in the archive")
    target = (dest / pure).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise DataError(f"{archive}: refusing unsafe path {name!r} in the archive")


def extract(archive: Path, dest: Path) -> None:
    """Extract a .tar(.gz) or .zip archive into ``dest``, refusing any member outside it."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member(info.filename, dest, archive)
                zf.extractall(dest)
            return
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                _check_member(m.name, dest, archive)
                if m.issym() or m.islnk():
                    base = dest / PurePosixPath(m.name).parent if m.issym() else dest
                    link = PurePosixPath(m.linkname)
                    if link.is_absolute() or not (base / link).resolve().is_relative_to(
                        dest.resolve()
                    ):
                        raise DataError(
                            f"{archive}: refusing link {m.name!r} -> {m.linkname!r} in the archive"
                        )
                elif not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: refusing special file {m.name!r} in the archive")
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            else:  # Python < 3.10.12: the members were checked above
                tf.extractall(dest, members=members)
    except DataError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{archive}: corrupt or truncated archive ({exc})") from None


def _find_dataset(info: DatasetInfo, staging: Path) -> Path | None:
    """The extracted directory with the dataset's layout: the named folder, the top, or a child."""
    candidates = [staging / info.folder, staging]
    candidates += sorted(p for p in staging.iterdir() if p.is_dir())
    for folder in candidates:
        if folder.is_dir() and layout_problem(info, folder) is None:
            return folder
    return None


def download_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    md5: str | None = None,
    keep_archive: bool = False,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> DownloadResult:
    """Make dataset ``name`` present under the data root; see the module docstring for the steps.

    ``url`` (else ``$FEDPRUNE_<NAME>_URL``, else the official URL) is where the archive comes
    from; ``md5`` replaces the catalog's checksum (for a mirror that repacked the archive).
    """
    info = get_info(name)
    base = resolve_root(root)
    folder = base / info.folder
    problem = layout_problem(info, folder)
    if problem is None:
        return DownloadResult(name, folder, "present", _present_message(info, folder))
    if folder.exists():
        raise DataError(
            f"{folder} exists but is incomplete ({problem}); move it away or delete it, then run "
            "the download again"
        )
    source = url or os.environ.get(info.url_env) or info.url
    expected = (md5 or info.md5).lower()
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the data root {base}: {exc.strerror}") from None
    archive = base / info.archive
    if archive.exists():
        verify(archive, expected, info, str(archive))
        source = str(archive)
        fetched = f"used the archive already at {archive}"
    else:
        fetch(
            source, archive, retries=retries, backoff=backoff, timeout=timeout, progress=progress
        )
        verify(archive, expected, info, source)
        fetched = f"downloaded {source}"
    staging = base / f".fedprune-extract-{info.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        extract(archive, staging)
        found = _find_dataset(info, staging)
        if found is None:
            raise DataError(
                f"{archive}: the archive does not contain the expected layout {info.layout}"
            )
        marker = {
            "dataset": info.name,
            "url": source,
            "archive": info.archive,
            "md5": expected,
            "md5_source": info.md5_source if expected == info.md5 else "given with --md5",
            "downloaded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (found / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        os.replace(found, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archive:
        archive.unlink()
    how = (
        "published by the dataset's authors"
        if info.md5_published
        else "a third-party checksum; the publisher lists none"
    )
    if expected != info.md5:
        how = "checksum given with --md5"
    message = f"{info.title}: {fetched}, md5 {expected} verified ({how}), extracted to {folder}"
    return DownloadResult(name, folder, "downloaded", message)


def _present_message(info: DatasetInfo, folder: Path) -> str:
    marker = folder / MARKER
    try:
        record = json.loads(marker.read_text())
        detail = f"downloaded {record['downloaded']}, md5 {record['md5']} verified"
    except (OSError, ValueError, KeyError):
        detail = "layout complete; not downloaded by fedprune, so no checksum on record"
    return f"{info.title} is already present at {folder} ({detail}); nothing to do"
