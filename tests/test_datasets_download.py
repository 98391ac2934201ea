"""`fedprune data download` against a local HTTP server: success, checksum, resume, safety."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from dataset_fixtures import (
    make_archive,
    make_cifar10,
    make_cinic10,
    make_tinyimagenet,
    tar_with_member,
)

from fedprune.cli_data import data
from fedprune.data.cifar10 import load_cifar10
from fedprune.data.cinic10 import load_cinic10
from fedprune.data.download import MARKER, download_dataset, extract, fetch
from fedprune.data.tinyimagenet import load_tinyimagenet
from fedprune.errors import DataError


class FileServer:
    """Serves byte strings by path on 127.0.0.1, honouring ``Range: bytes=N-``.

    ``drops[path] = [n, ...]`` makes the next ``len(...)`` responses for that path send only
    ``n`` bytes of the body (after a full Content-Length) and close the connection.
    ``stalls[path] = [n, ...]`` makes them send ``n`` bytes of the body and then nothing more, or
    with ``None`` not even the headers, until ``release`` is set (at most 10 s).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drops: dict[str, list[int]] = {}
        self.stalls: dict[str, list[int | None]] = {}
        self.release = threading.Event()
        self.ranges = True
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                header = self.headers.get("Range")
                server.requests.append((self.path, header))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                stall = server.stalls.get(self.path)
                if stall and stall[0] is None:
                    stall.pop(0)
                    server.release.wait(10)  # accepted, never answered
                    self.close_connection = True
                    return
                start = 0
                if header and server.ranges:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Accept-Ranges", "bytes" if server.ranges else "none")
                self.end_headers()
                drops = server.drops.get(self.path)
                if drops:
                    self.wfile.write(payload[: drops.pop(0)])
                    self.close_connection = True
                    return
                if stall:
                    self.wfile.write(payload[: stall.pop(0)])
                    server.release.wait(10)  # stopped sending mid-body
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = FileServer()
    s.thread.start()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def cifar_archive(tmp_path):
    """The CIFAR-10 fixture packed like cifar-10-python.tar.gz, and its md5."""
    fx = make_cifar10(tmp_path / "src")
    body = make_archive(
        fx.folder, tmp_path / "archives" / "cifar-10-python.tar.gz", top="cifar-10-batches-py"
    )
    return body, _md5(body)


def test_download_verifies_extracts_and_then_does_nothing(tmp_path, server, cifar_archive):
    body, md5 = cifar_archive
    server.files["/cifar.tgz"] = body
    root = tmp_path / "data"
    result = download_dataset("cifar10", root, url=server.url("/cifar.tgz"), md5=md5, backoff=0)
    assert result.action == "downloaded" and f"md5 {md5} verified" in result.message
    assert (root / "cifar-10-batches-py" / MARKER).is_file()
    assert not (root / "cifar-10-python.tar.gz").exists()  # archive removed after extraction
    assert not list(root.glob(".fedprune-extract-*"))
    assert len(load_cifar10(root).train) == 30
    again = download_dataset("cifar10", root, url=server.url("/cifar.tgz"), md5=md5)
    assert again.action == "present" and "nothing to do" in again.message
    assert len(server.requests) == 1


def test_checksum_mismatch_keeps_the_file_aside_and_names_it(tmp_path, server, cifar_archive):
    body, _ = cifar_archive
    server.files["/cifar.tgz"] = body
    root = tmp_path / "data"
    with pytest.raises(DataError, match="checksum mismatch") as info:
        download_dataset("cifar10", root, url=server.url("/cifar.tgz"), md5="0" * 32)
    bad = root / "cifar-10-python.tar.gz.bad"
    assert str(bad) in str(info.value) and bad.read_bytes() == body
    assert not (root / "cifar-10-batches-py").exists()
    assert not (root / "cifar-10-python.tar.gz").exists()


def test_a_mismatch_against_a_third_party_checksum_says_so(tmp_path, server):
    server.files["/cinic.tgz"] = b"not the real archive"
    with pytest.raises(DataError, match="not published by the dataset's authors"):
        download_dataset("cinic10", tmp_path, url=server.url("/cinic.tgz"))


def test_download_retries_and_resumes_after_a_dropped_connection(tmp_path, server, cifar_archive):
    body, md5 = cifar_archive
    server.files["/cifar.tgz"] = body
    server.drops["/cifar.tgz"] = [1000]
    download_dataset("cifar10", tmp_path, url=server.url("/cifar.tgz"), md5=md5, backoff=0)
    assert server.requests == [("/cifar.tgz", None), ("/cifar.tgz", "bytes=1000-")]
    assert len(load_cifar10(tmp_path).test) == 10


def test_an_interrupted_download_resumes_on_the_next_call(tmp_path, server, cifar_archive):
    body, md5 = cifar_archive
    server.files["/cifar.tgz"] = body
    server.drops["/cifar.tgz"] = [700, 300]
    url = server.url("/cifar.tgz")
    with pytest.raises(DataError, match="interrupted at 1000 of") as info:
        download_dataset("cifar10", tmp_path, url=url, md5=md5, retries=1, backoff=0)
    part = tmp_path / "cifar-10-python.tar.gz.part"
    assert "run the same command again to resume" in str(info.value)
    assert part.read_bytes() == body[:1000]
    download_dataset("cifar10", tmp_path, url=url, md5=md5, retries=0)
    assert server.requests[-1] == ("/cifar.tgz", "bytes=1000-")
    assert not part.exists()
    assert len(load_cifar10(tmp_path).train) == 30


def test_a_server_without_range_support_restarts_from_zero(tmp_path, server):
    server.files["/f"] = bytes(range(256)) * 40
    server.ranges = False
    server.drops["/f"] = [5000]
    dest = fetch(server.url("/f"), tmp_path / "f", backoff=0)
    assert dest.read_bytes() == server.files["/f"]
    assert server.requests[1] == ("/f", "bytes=5000-")  # asked; got the whole file again


def test_a_complete_part_file_is_finished_without_a_body(tmp_path, server):
    server.files["/f"] = b"abcdef"
    (tmp_path / "f.part").write_bytes(b"abcdef")
    assert fetch(server.url("/f"), tmp_path / "f").read_bytes() == b"abcdef"


def test_http_errors_and_unreachable_servers_are_data_errors(tmp_path, server):
    with pytest.raises(DataError, match="HTTP 404"):
        fetch(server.url("/missing"), tmp_path / "f")
    with pytest.raises(DataError, match="cannot download http://127.0.0.1:9/x"):
        fetch("http://127.0.0.1:9/x", tmp_path / "g", retries=1, backoff=0, timeout=5)


def test_url_comes_from_the_environment_variable(tmp_path, server, cifar_archive, monkeypatch):
    body, md5 = cifar_archive
    server.files["/mirror/cifar.tgz"] = body
    monkeypatch.setenv("FEDPRUNE_CIFAR10_URL", server.url("/mirror/cifar.tgz"))
    download_dataset("cifar10", tmp_path, md5=md5)
    assert server.requests == [("/mirror/cifar.tgz", None)]


def test_an_archive_placed_by_hand_is_verified_and_used(tmp_path, cifar_archive):
    body, md5 = cifar_archive
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(body)
    result = download_dataset("cifar10", root, url="http://127.0.0.1:9/unused", md5=md5,
                              keep_archive=True)
    assert "used the archive already at" in result.message
    assert (root / "cifar-10-python.tar.gz").exists()
    assert len(load_cifar10(root).train) == 30


def test_cinic10_archive_without_a_top_folder(tmp_path, server, monkeypatch):
    import dataclasses

    from fedprune.data import catalog

    fx = make_cinic10(tmp_path / "src")
    body = make_archive(fx.folder, tmp_path / "CINIC-10.tar.gz", top=None)
    server.files["/CINIC-10.tar.gz"] = body
    # Pretend the fixture is the real archive, to see how a third-party checksum is reported.
    fake = dataclasses.replace(catalog.CINIC10, md5=_md5(body))
    monkeypatch.setitem(catalog.DATASETS, "cinic10", fake)
    result = download_dataset("cinic10", tmp_path / "data", url=server.url("/CINIC-10.tar.gz"))
    assert "verified (a third-party checksum; the publisher lists none)" in result.message
    assert result.path == tmp_path / "data" / "CINIC-10"
    assert len(load_cinic10(tmp_path / "data").test) == 20


def test_tinyimagenet_zip(tmp_path, server):
    fx = make_tinyimagenet(tmp_path / "src")
    body = make_archive(fx.folder, tmp_path / "t.zip", top="tiny-imagenet-200")
    server.files["/tiny-imagenet-200.zip"] = body
    download_dataset(
        "tinyimagenet", tmp_path / "data", url=server.url("/tiny-imagenet-200.zip"),
        md5=_md5(body),
    )
    assert len(load_tinyimagenet(tmp_path / "data").train) == 9


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt"])
def test_path_traversal_in_a_tar_is_refused(tmp_path, name):
    archive = tmp_path / "a.tar.gz"
    tar_with_member(archive, name)
    with pytest.raises(DataError, match="refusing unsafe path"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_links_out_of_a_tar_are_refused(tmp_path):
    import tarfile

    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        link = tarfile.TarInfo("data/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../etc/passwd"
        tf.addfile(link)
    with pytest.raises(DataError, match="refusing link"):
        extract(archive, tmp_path / "out")


def test_path_traversal_in_a_zip_is_refused(tmp_path):
    import zipfile

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(DataError, match="refusing unsafe path"):
        extract(archive, tmp_path / "out")


def test_a_corrupt_archive_is_named(tmp_path, server, cifar_archive):
    body, _ = cifar_archive
    truncated = body[: len(body) // 2]
    server.files["/cifar.tgz"] = truncated
    with pytest.raises(DataError, match="corrupt, truncated or unsupported archive") as info:
        download_dataset("cifar10", tmp_path, url=server.url("/cifar.tgz"), md5=_md5(truncated))
    assert "cifar-10-python.tar.gz" in str(info.value)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_an_archive_without_the_layout_is_refused(tmp_path, server):
    fx = make_cinic10(tmp_path / "src")
    body = make_archive(fx.folder / "train", tmp_path / "x.tar.gz", top=None)
    server.files["/x"] = body
    with pytest.raises(DataError, match="does not contain the expected layout"):
        download_dataset("cinic10", tmp_path / "data", url=server.url("/x"), md5=_md5(body))
    assert not (tmp_path / "data" / "CINIC-10").exists()


def test_an_incomplete_existing_folder_is_left_alone(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="exists but is incomplete"):
        download_dataset("cifar10", tmp_path)


def test_cli_download_then_info(tmp_path, server, cifar_archive, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    body, md5 = cifar_archive
    server.files["/c.tgz"] = body
    root = str(tmp_path / "data")
    args = ["download", "cifar10", "--root", root, "--url", server.url("/c.tgz"), "--md5", md5]
    result = CliRunner().invoke(data, args)
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    result = CliRunner().invoke(data, args)
    assert result.exit_code == 0 and "already present" in result.output
    result = CliRunner().invoke(data, ["info", "--root", root])
    assert result.exit_code == 0, result.output
    assert "train 30, test 10" in result.output
    assert "fedprune data download cinic10 --root" in result.output


def test_cli_download_reports_a_mismatch_on_one_line(tmp_path, server):
    server.files["/c.tgz"] = b"whatever"
    result = CliRunner().invoke(
        data, ["download", "cifar10", "--root", str(tmp_path), "--url", server.url("/c.tgz")]
    )
    assert result.exit_code == 1
    assert "checksum mismatch" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------ hostile options and servers


def _one_line_error(result, exit_code: int) -> str:
    """The CLI failed with ``exit_code`` and said why on one ``Error:`` line, no traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("notaurl", "the scheme must be http, https or file"),
        ("ftp://example.org/c.tgz", "the scheme must be http, https or file"),
        ("http:///c.tgz", "no host"),
        ("http://127.0.0.1:99999/c.tgz", "Port out of range"),
        ("http://[::1/c.tgz", "Invalid IPv6 URL"),
        ("http://a..b/c.tgz", "bad host name"),
        ("http://example.org/my archive.tgz", "must be percent-encoded"),
        ("", "the scheme must be"),
    ],
)
def test_a_bad_url_is_a_usage_error_before_any_download(tmp_path, url, problem):
    args = ["download", "cifar10", "--root", str(tmp_path), "--url", url]
    line = _one_line_error(CliRunner().invoke(data, args), 2)
    assert "--url" in line and problem in line and "http://, https:// or file://" in line
    assert list(tmp_path.iterdir()) == []


def test_a_bad_url_in_the_environment_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPRUNE_CIFAR10_URL", "notaurl")
    with pytest.raises(DataError, match=r"\$FEDPRUNE_CIFAR10_URL='notaurl' is not a usable"):
        download_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("md5", ["zzz", "0" * 31, "g" * 32, "0" * 33])
def test_a_bad_md5_is_a_usage_error_before_any_download(tmp_path, server, cifar_archive, md5):
    server.files["/c.tgz"], _ = cifar_archive
    root = tmp_path / "data"
    args = ["download", "cifar10", "--root", str(root), "--url", server.url("/c.tgz")]
    line = _one_line_error(CliRunner().invoke(data, [*args, "--md5", md5]), 2)
    assert "--md5" in line and "32 hexadecimal digits" in line
    assert server.requests == [] and not root.exists()


def test_an_upper_case_md5_is_accepted(tmp_path, server, cifar_archive):
    body, md5 = cifar_archive
    server.files["/c.tgz"] = body
    args = ["download", "cifar10", "--root", str(tmp_path), "--url", server.url("/c.tgz")]
    result = CliRunner().invoke(data, [*args, "--md5", md5.upper()])
    assert result.exit_code == 0, result.output


def test_a_server_that_never_answers_times_out_twice_then_stops(tmp_path, server):
    import time

    server.files["/f"] = b"x" * 100
    server.stalls["/f"] = [None] * 5
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        fetch(server.url("/f"), tmp_path / "f", retries=3, backoff=0, timeout=0.3)
    assert time.monotonic() - started < 5  # two timeouts of 0.3 s, not four
    message = str(info.value)
    assert server.url("/f") in message and "nothing for 0.3 s, twice" in message
    assert "--timeout" in message and "run the same command again" in message
    assert len(server.requests) == 2
    with pytest.raises(DataError, match=r"nothing for 0\.3 s; raise --timeout"):  # no retry
        fetch(server.url("/f"), tmp_path / "f", retries=0, timeout=0.3)


def test_a_stall_mid_body_keeps_what_came_and_the_next_call_resumes(
    tmp_path, server, cifar_archive
):
    body, md5 = cifar_archive
    server.files["/c.tgz"] = body
    server.stalls["/c.tgz"] = [1000, None]
    url = server.url("/c.tgz")
    with pytest.raises(DataError, match=r"interrupted at 1000 bytes .*nothing for 0\.3 s") as info:
        download_dataset("cifar10", tmp_path, url=url, md5=md5, timeout=0.3, backoff=0)
    assert "run the same command again to resume" in str(info.value)
    assert (tmp_path / "cifar-10-python.tar.gz.part").read_bytes() == body[:1000]
    download_dataset("cifar10", tmp_path, url=url, md5=md5)
    assert server.requests[-1] == ("/c.tgz", "bytes=1000-")
    assert len(load_cifar10(tmp_path).train) == 30


def test_cli_timeout_option_bounds_a_stalled_download(tmp_path, server):
    import time

    server.files["/c.tgz"] = b"x" * 100
    server.stalls["/c.tgz"] = [None] * 5
    args = ["download", "cifar10", "--root", str(tmp_path), "--url", server.url("/c.tgz")]
    started = time.monotonic()
    line = _one_line_error(CliRunner().invoke(data, [*args, "--timeout", "0.3"]), 1)
    assert time.monotonic() - started < 5
    assert server.url("/c.tgz") in line and "0.3 s" in line
    assert _one_line_error(CliRunner().invoke(data, [*args, "--timeout", "0"]), 2)


def test_the_default_timeout_fails_a_stalled_server_within_about_a_minute():
    from fedprune.data.download import TIMEOUT

    assert 2 * TIMEOUT <= 60


def test_an_unwritable_part_file_is_named_not_retried(tmp_path, server):
    server.files["/f"] = b"abc"
    with pytest.raises(DataError, match=r"cannot write .*gone/f\.part: No such file"):
        fetch(server.url("/f"), tmp_path / "gone" / "f", backoff=10)  # no retry, so no wait
    (tmp_path / "f.part").mkdir()  # a directory where the partial file goes
    with pytest.raises(DataError, match=r"f\.part is in the way of the download"):
        fetch(server.url("/f"), tmp_path / "f")


# ------------------------------------------------------------------------- hostile archives


def _tar(path, *members):
    """A .tar.gz of ``(name, kind, target_or_data)`` members; kind: file, dir, sym, hard, fifo."""
    import io
    import tarfile

    types = {
        "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    with tarfile.open(path, "w:gz") as tf:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tf.addfile(info, io.BytesIO(value))
            else:
                info.type = types[kind]
                info.linkname = value or ""
                tf.addfile(info)
    return path


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        # Each link alone points inside; through the first, the second points above the target.
        ([("sub/up", "sym", ".."), ("sub/up/up2", "sym", ".."), ("sub/up/up2/evil", "file", b"x")],
         r"'sub/up/up2' in the archive: it would be written through the link 'sub/up'"),
        ([("a", "sym", "b"), ("c", "sym", "a")], r"link 'c' -> 'a' .* or to other links"),
        ([("h", "hard", "../evil")], r"link 'h' -> '../evil' .* point outside the target"),
        ([("s", "sym", "/etc/passwd")], r"link 's' -> '/etc/passwd'"),
        ([("d", "sym", "."), ("d/evil", "file", b"x")], r"'d/evil' .* written through the link"),
        ([("fifo", "fifo", None)], r"refusing special file 'fifo'"),
    ],
)
def test_tampered_tar_members_are_refused_by_name_and_nothing_is_written(
    tmp_path, members, expected
):
    archive = _tar(tmp_path / "a.tar.gz", *members)
    out = tmp_path / "stage" / "out"
    with pytest.raises(DataError, match=expected) as info:
        extract(archive, out)
    assert "corrupt" not in str(info.value)
    assert list(out.iterdir()) == []  # every member is checked before anything is written
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.tar.gz", "out", "stage"]


def test_links_inside_the_target_are_kept(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", ("data/x", "file", b"x"), ("data/l", "sym", "x"),
                   ("data/h", "hard", "data/x"))
    extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "data" / "l").read_bytes() == b"x"
    assert (tmp_path / "out" / "data" / "h").read_bytes() == b"x"


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_extraction_limits_refuse_an_archive_bomb(tmp_path, suffix):
    fx = make_cifar10(tmp_path / "src")
    archive = tmp_path / f"a{suffix}"
    make_archive(fx.folder, archive, top="cifar-10-batches-py")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"more than 3 members; .* raise --max-files"):
        extract(archive, out, max_files=3)
    with pytest.raises(DataError, match=r"more than 1,000 bytes uncompressed; .*--max-extract-"):
        extract(archive, out, max_bytes=1000)
    assert list(out.iterdir()) == []
    extract(archive, out, max_files=8, max_bytes=10**6)  # the archive's own size passes


def test_cli_extraction_limits(tmp_path, server, cifar_archive):
    body, md5 = cifar_archive
    server.files["/c.tgz"] = body
    root = tmp_path / "data"
    args = ["download", "cifar10", "--root", str(root), "--url", server.url("/c.tgz"), "--md5", md5]
    line = _one_line_error(CliRunner().invoke(data, [*args, "--max-files", "2"]), 1)
    assert "more than 2 members" in line
    line = _one_line_error(CliRunner().invoke(data, [*args, "--max-extract-bytes", "100"]), 1)
    assert "more than 100 bytes" in line
    # No dataset and no staging directory; the verified archive is kept for the next call.
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]
    assert CliRunner().invoke(data, args).exit_code == 0
    assert len(server.requests) == 1


def test_an_archive_of_another_format_is_named(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"Rar!\x1a\x07\x00" + bytes(500))
    with pytest.raises(DataError, match=r"a\.tar\.gz: not a tar .* or zip archive \(or trunc"):
        extract(archive, tmp_path / "out")


def test_a_zip_with_an_unsupported_method_is_named(tmp_path):
    import zipfile

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("x", "data")
    raw = bytearray(archive.read_bytes())
    raw[8] = raw[raw.index(b"PK\x01\x02") + 10] = 99  # compression method 99 (AES) in both headers
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"corrupt, truncated or unsupported archive"):
        extract(archive, tmp_path / "out")


def test_a_directory_where_the_archive_goes_is_named(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").mkdir()
    with pytest.raises(DataError, match=r"cannot read .*cifar-10-python\.tar\.gz: Is a directory"):
        download_dataset("cifar10", tmp_path, md5="0" * 32)


def test_a_root_that_is_a_file_is_refused(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for command in ("download", "prepare", "info"):
        _one_line_error(CliRunner().invoke(data, [command, "cifar10", "--root", str(blocker)]), 2)
    monkeypatch.setenv("FEDPRUNE_DATA", str(blocker))
    line = _one_line_error(CliRunner().invoke(data, ["download", "cifar10"]), 1)
    assert f"cannot create the data root {blocker}" in line
