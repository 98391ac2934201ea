"""Download, verify and extract a dataset archive, resumably and idempotently.

`download_dataset` is what ``fedprune data download NAME`` runs:

1. If the dataset's layout is already complete under the data root, it does nothing.
2. The archive is fetched into ``<root>/<archive>.part`` with HTTP ``Range`` requests, so an
   interrupted transfer (this call's retries, or a later call) continues where it stopped.
   An archive already at ``<root>/<archive>`` (for example copied there by hand) is used as is.
   Every connect and read waits at most ``timeout`` seconds, and a second timeout ends the
   download, so a stalled server fails in about twice ``timeout``.
3. The archive's MD5 is checked against the catalog's (or ``md5=``) checksum. On a mismatch the
   file is kept aside as ``<archive>.bad`` and `DataError` names it.
4. It is extracted into a staging directory with every member checked first (no path or link
   leaving the target, no special file, at most ``max_files`` members and ``max_extract_bytes``
   bytes), and the dataset folder is moved into place only when complete; a marker file records
   the URL and checksum.

Only the standard library is used (urllib, tarfile, zipfile). The URL can be overridden with
``url=`` or the ``FEDPRUNE_<NAME>_URL`` environment variable (a mirror, or a local test server).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import lzma
import os
import posixpath
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fedprune.data.catalog import DatasetInfo, get_info, layout_problem, resolve_root
from fedprune.errors import DataError

MARKER = ".fedprune-download.json"
CHUNK = 1 << 20
#: Seconds a connect or a read may wait; the second timeout ends a download.
TIMEOUT = 30.0
#: Extraction limits, far above the real datasets (CINIC-10: 270,000 files, about 1 GB) and far
#: below what an archive bomb would write.
MAX_EXTRACT_BYTES = 4 * 2**30
MAX_FILES = 500_000
URL_SCHEMES = ("http", "https", "file")

_FilterError = getattr(tarfile, "FilterError", ())  # Python >= 3.10.12

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
    try:
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    return h.hexdigest()


def check_url(url: str, origin: str | None = None) -> str:
    """``url`` if urllib can fetch it (http, https or file); else `DataError` saying why.

    ``origin`` names where the URL came from (an environment variable) in the message.
    """
    problem = _url_problem(url)
    if problem is None:
        return url
    given = f"{origin}={url!r}" if origin else repr(url)
    raise DataError(
        f"{given} is not a usable download URL ({problem}); give an http://, https:// or file:// "
        "URL"
    )


def _url_problem(url: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises for a port that is not a number in 0..65535
    except ValueError as exc:
        return str(exc)
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        return "the scheme must be http, https or file"
    if scheme != "file" and not parts.hostname:
        return "no host"
    if not url.isascii() or re.search(r"[\x00-\x20\x7f]", url):
        return "spaces, control and non-ASCII characters must be percent-encoded"
    try:
        (parts.hostname or "").encode("idna")  # what the resolver will do with it
    except UnicodeError:
        return f"bad host name {parts.hostname!r}"
    return None


def check_md5(md5: str) -> str:
    """``md5`` in lower case if it is 32 hexadecimal digits; else `DataError`."""
    if not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise DataError(f"{md5!r} is not an MD5 checksum: expected 32 hexadecimal digits")
    return md5.lower()


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


def _timed_out(exc: BaseException) -> bool:
    """A read timeout, or a connect timeout that urllib wrapped in a URLError."""
    return isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)


def fetch(
    url: str,
    dest: Path,
    *,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = TIMEOUT,
    progress: Progress | None = None,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming with HTTP Range requests.

    An interrupted transfer is retried ``retries`` times (waiting ``backoff`` seconds times the
    attempt number), each time asking only for the missing bytes; a server that ignores Range
    requests is read again from the start. ``timeout`` bounds the connect and every read; a
    stalled server gets one more chance, not ``retries``: the second timeout ends the download,
    so it fails within about ``2 * timeout``. When it gives up, the ``.part`` file is kept and
    `DataError` says that running the command again resumes it.
    """
    part = dest.with_name(dest.name + ".part")
    if part.exists() and not part.is_file():
        raise DataError(f"{part} is in the way of the download: it is not a file; move it away")
    failures = timeouts = 0
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
                    # read1: whatever has arrived, so a stall mid-body keeps what came before it
                    while block := response.read1(CHUNK):
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
            if isinstance(exc, OSError) and exc.filename is not None:  # the part file
                raise DataError(f"cannot write {exc.filename}: {exc.strerror}") from None
            failures += 1
            stalled = _timed_out(exc)
            timeouts += stalled
            if failures > retries or timeouts > 1:
                twice = ", twice" if timeouts > 1 else ""
                reason = (
                    f"the server sent nothing for {timeout:g} s{twice}; raise --timeout for a "
                    "slow server" if stalled else getattr(exc, "reason", None) or exc
                )
                raise _gave_up(url, part, reason, total, failures) from None
            if not stalled:  # a stall has already waited long enough
                time.sleep(backoff * failures)


def _gave_up(url: str, part: Path, reason: object, total: int | None, attempts: int) -> DataError:
    have = part.stat().st_size if part.exists() else 0
    if have == 0:
        return DataError(
            f"cannot download {url}: {reason}; check the network, run the same command again to "
            "retry, or pass --url (or set the URL variable) to a reachable mirror"
        )
    of = f" of {total}" if total else ""
    return DataError(
        f"download of {url} was interrupted at {have}{of} bytes after {attempts} attempts "
        f"({reason}); the partial file {part} is kept: run the same command again to resume"
    )


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


def _member_path(name: str, archive: Path) -> str:
    """``name`` as a relative POSIX path; `DataError` if it is absolute or has a ``..`` part."""
    path = name.replace("\\", "/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path) or ".." in path.split("/"):
        raise DataError(f"{archive}: refusing unsafe path {name!r} in the archive")
    return posixpath.normpath(path)


def _check_link(member: tarfile.TarInfo, path: str, links: set[str], archive: Path) -> None:
    """Refuse a link whose target leaves the target directory or is (inside) another link.

    Checked on the names alone, before anything is written: a chain of links is how a link
    that looks harmless on its own can point outside once the others exist.
    """
    base = posixpath.dirname(path) if member.issym() else ""
    target = posixpath.normpath(posixpath.join(base, member.linkname))
    inside = not member.linkname.startswith("/") and target != ".." and not target.startswith("../")
    if not inside or _through_link(target, links):
        raise DataError(
            f"{archive}: refusing link {member.name!r} -> {member.linkname!r} in the archive: "
            "links that point outside the target directory or to other links are refused"
        )


def _through_link(path: str, links: set[str]) -> str | None:
    """The earlier link member that ``path`` is or lies under."""
    parts = path.split("/")
    for n in range(1, len(parts) + 1):
        if (prefix := "/".join(parts[:n])) in links:
            return prefix
    return None


def _check_limits(archive: Path, count: int, size: int, max_files: int, max_bytes: int) -> None:
    if count > max_files:
        raise DataError(
            f"{archive}: more than {max_files:,} members; refusing to extract it (if the archive "
            "is genuine, raise --max-files)"
        )
    if size > max_bytes:
        raise DataError(
            f"{archive}: more than {max_bytes:,} bytes uncompressed; refusing to extract it (if "
            "the archive is genuine, raise --max-extract-bytes)"
        )


def _tar_members(
    tf: tarfile.TarFile, archive: Path, max_files: int, max_bytes: int
) -> list[tarfile.TarInfo]:
    """The members of ``tf``, each checked; read lazily so that a bomb stops at the limit."""
    members: list[tarfile.TarInfo] = []
    links: set[str] = set()
    size = 0
    for m in tf:
        members.append(m)
        size += m.size
        _check_limits(archive, len(members), size, max_files, max_bytes)
        path = _member_path(m.name, archive)
        if link := _through_link(path, links):
            raise DataError(
                f"{archive}: refusing {m.name!r} in the archive: it would be written through the "
                f"link {link!r}, and writing through links is refused"
            )
        if m.issym() or m.islnk():
            _check_link(m, path, links, archive)
            links.add(path)
        elif not (m.isfile() or m.isdir()):
            raise DataError(f"{archive}: refusing special file {m.name!r} in the archive")
    return members


def extract(
    archive: Path, dest: Path, *, max_bytes: int = MAX_EXTRACT_BYTES, max_files: int = MAX_FILES
) -> None:
    """Extract a .tar(.gz, .bz2, .xz) or .zip archive into ``dest``.

    Every member is checked before anything is written: a path or link leaving ``dest``, a
    link to another link, a special file, or more than ``max_files`` members or ``max_bytes``
    bytes in all (an archive bomb) is refused with `DataError` naming it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                size = 0
                for n, info in enumerate(zf.infolist(), start=1):
                    size += info.file_size  # zipfile never writes more than this
                    _check_limits(archive, n, size, max_files, max_bytes)
                    _member_path(info.filename, archive)
                zf.extractall(dest)
            return
        try:
            tf = tarfile.open(archive)
        except tarfile.ReadError:
            raise DataError(
                f"{archive}: not a tar (.tar, .tar.gz, .tar.bz2, .tar.xz) or zip archive (or "
                "truncated)"
            ) from None
        with tf:
            members = _tar_members(tf, archive, max_files, max_bytes)
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            else:  # Python < 3.10.12: the members were checked above
                tf.extractall(dest, members=members)
    except DataError:
        raise
    except _FilterError as exc:  # what the checks above missed, the data filter refuses
        raise DataError(f"{archive}: refusing {exc.tarinfo.name!r} in the archive: {exc}") from None
    except OSError as exc:
        if exc.errno is not None:  # the disk, not the data (bad gzip or bz2 data has no errno)
            raise DataError(f"cannot extract {archive} into {dest}: {exc.strerror}") from None
        raise _corrupt(archive, exc) from None
    except (
        tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError,
        NotImplementedError, RuntimeError,  # zip: an unsupported compression method, encryption
    ) as exc:
        raise _corrupt(archive, exc) from None


def _corrupt(archive: Path, exc: BaseException) -> DataError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return DataError(f"{archive}: corrupt, truncated or unsupported archive ({reason})")


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
    timeout: float = TIMEOUT,
    max_extract_bytes: int = MAX_EXTRACT_BYTES,
    max_files: int = MAX_FILES,
    progress: Progress | None = None,
) -> DownloadResult:
    """Make dataset ``name`` present under the data root; see the module docstring for the steps.

    ``url`` (else ``$FEDPRUNE_<NAME>_URL``, else the official URL) is where the archive comes
    from; ``md5`` replaces the catalog's checksum (for a mirror that repacked the archive). Both
    are checked (`check_url`, `check_md5`) before anything is fetched.
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
    env = os.environ.get(info.url_env)
    source = check_url(url) if url else check_url(env, f"${info.url_env}") if env else info.url
    expected = check_md5(md5) if md5 else info.md5
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
        extract(archive, staging, max_bytes=max_extract_bytes, max_files=max_files)
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
    except OSError as exc:
        raise DataError(f"cannot put the extracted dataset at {folder}: {exc.strerror}") from None
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
    except (OSError, ValueError, KeyError, TypeError):
        detail = "layout complete; not downloaded by fedprune, so no checksum on record"
    return f"{info.title} is already present at {folder} ({detail}); nothing to do"
