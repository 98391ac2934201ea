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

    ``drop_after[path] = n`` makes the next ``len(...)`` responses for that path send only ``n``
    bytes of the body (after a full Content-Length) and close the connection.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drops: dict[str, list[int]] = {}
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
    with pytest.raises(DataError, match="corrupt or truncated archive") as info:
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
