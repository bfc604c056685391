"""download_release against a local HTTP server (127.0.0.1, port 0) serving tiny tarballs.

Nothing here contacts the real dataset host.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from petseg_bench.data import download as dl
from petseg_bench.data.download import MARKER, ReleaseFile, default_data_root, download_release
from petseg_bench.errors import DataError

pytestmark = pytest.mark.timeout(60)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _targz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _image(fmt: str, mode: str, value) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (8, 8), value).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def release() -> dict[str, bytes]:
    """The two archives, laid out like the official ones."""
    ids = ["Abyssinian_1", "beagle_2"]
    images = {f"images/{i}.jpg": _image("JPEG", "RGB", (i == ids[0]) * 200) for i in ids}
    listing = b"Abyssinian_1 1 1 1\nbeagle_2 2 2 1\n"
    annotations = {f"annotations/trimaps/{i}.png": _image("PNG", "L", 1) for i in ids}
    annotations |= {"annotations/list.txt": listing, "annotations/trainval.txt": listing[:19],
                    "annotations/test.txt": listing[19:]}
    return {"images.tar.gz": _targz(images), "annotations.tar.gz": _targz(annotations)}


def _files(release: dict[str, bytes]) -> list[ReleaseFile]:
    return [ReleaseFile(name, _md5(data)) for name, data in release.items()]


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with ``Range: bytes=N-`` support and scripted faults."""

    timeout = 5  # a stuck client never holds a handler thread for long

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        srv.requests.append((name, rng))
        body = srv.files.get(name)
        if body is None:
            self.send_error(404)
            return
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng and not srv.ignore_range else 0
        if start >= len(body) > 0 and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        cut = srv.truncate.get(name)
        if cut and cut[1] > 0:  # send `cut[0]` bytes, then drop the connection
            srv.truncate[name] = (cut[0], cut[1] - 1)
            payload = payload[: cut[0]]
        if name in srv.stall:  # headers then silence, longer than the client's timeout
            self.wfile.flush()
            time.sleep(srv.stall[name])
            return
        self.wfile.write(payload)
        self.close_connection = True


@pytest.fixture
def server(release, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(dl, "_RETRY_DELAY", 0.0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.files = dict(release)
    httpd.requests = []  # (name, Range header or None) per request
    httpd.truncate = {}  # name -> (bytes to send, how many more requests to cut)
    httpd.stall = {}  # name -> seconds to sleep after the headers
    httpd.ignore_range = False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _get(server, dest: Path, files, **kw) -> Path:
    kw = {"progress": False, "timeout": 2.0, "retries": 2} | kw
    return download_release(dest, base_url=server.url, files=files, **kw)


def _assert_complete(dest: Path, release: dict[str, bytes]) -> None:
    assert sorted(p.name for p in (dest / "images").glob("*.jpg")) == ["Abyssinian_1.jpg", "beagle_2.jpg"]
    assert len(list((dest / "annotations" / "trimaps").glob("*.png"))) == 2
    for txt in ("list.txt", "trainval.txt", "test.txt"):
        assert (dest / "annotations" / txt).is_file()
    Image.open(dest / "images" / "beagle_2.jpg").verify()
    for name, data in release.items():
        assert (dest / name).read_bytes() == data
    assert not list(dest.glob("*.part"))
    assert (dest / MARKER).is_file()


def test_clean_download_and_extract(server, release, tmp_path):
    dest = tmp_path / "new" / "pets"
    assert _get(server, dest, _files(release), progress=True) == dest
    _assert_complete(dest, release)
    assert [n for n, _ in server.requests] == ["images.tar.gz", "annotations.tar.gz"]
    assert all(r is None for _, r in server.requests)


def test_interrupted_transfer_resumes_with_range(server, release, tmp_path):
    cut = len(release["images.tar.gz"]) // 2
    server.truncate["images.tar.gz"] = (cut, 1)
    _get(server, tmp_path, _files(release))
    _assert_complete(tmp_path, release)
    assert [r for n, r in server.requests if n == "images.tar.gz"] == [None, f"bytes={cut}-"]


def test_existing_part_is_resumed(server, release, tmp_path):
    data = release["annotations.tar.gz"]
    (tmp_path / "annotations.tar.gz.part").write_bytes(data[:100])
    _get(server, tmp_path, _files(release))
    _assert_complete(tmp_path, release)
    assert ("annotations.tar.gz", "bytes=100-") in server.requests
    assert sum(n == "annotations.tar.gz" for n, _ in server.requests) == 1


def test_complete_part_answered_416_is_accepted(server, release, tmp_path):
    data = release["images.tar.gz"]
    (tmp_path / "images.tar.gz.part").write_bytes(data)
    _get(server, tmp_path, _files(release))
    _assert_complete(tmp_path, release)
    assert ("images.tar.gz", f"bytes={len(data)}-") in server.requests


def test_server_ignoring_range_restarts_from_zero(server, release, tmp_path):
    server.ignore_range = True
    (tmp_path / "images.tar.gz.part").write_bytes(b"garbage" * 10)  # must be overwritten, not appended to
    _get(server, tmp_path, _files(release))
    _assert_complete(tmp_path, release)
    assert ("images.tar.gz", "bytes=70-") in server.requests


def test_corrupted_file_raises_and_leaves_nothing(server, release, tmp_path):
    good = release["images.tar.gz"]
    bad = good[:-5] + b"XXXXX"
    server.files["images.tar.gz"] = bad
    with pytest.raises(DataError) as exc:
        _get(server, tmp_path, _files(release))
    msg = str(exc.value)
    assert "images.tar.gz" in msg and _md5(good) in msg and _md5(bad) in msg and "\n" not in msg
    assert not (tmp_path / "images.tar.gz").exists()
    assert not (tmp_path / "images.tar.gz.part").exists()
    assert not (tmp_path / MARKER).exists()


def test_second_call_does_not_download(server, release, tmp_path):
    files = _files(release)
    _get(server, tmp_path, files)
    n = len(server.requests)
    _get(server, tmp_path, files)
    assert len(server.requests) == n
    # Archives already present with the right MD5 are re-extracted, never re-fetched.
    (tmp_path / MARKER).unlink()
    (tmp_path / "images" / "beagle_2.jpg").unlink()
    _get(server, tmp_path, files)
    assert len(server.requests) == n
    _assert_complete(tmp_path, release)


@pytest.mark.parametrize("member", ["../evil", "/tmp/petseg-evil-abs", "images/../../evil"])
def test_unsafe_tar_member_is_refused(server, release, tmp_path, member):
    server.files["images.tar.gz"] = evil = _targz({"images/ok.jpg": b"x", member: b"pwned"})
    files = [ReleaseFile("images.tar.gz", _md5(evil))]
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="unsafe member"):
        _get(server, dest, files)
    assert not (tmp_path / "evil").exists()
    assert not Path("/tmp/petseg-evil-abs").exists()
    assert not (dest / MARKER).exists()


def test_network_failure_gives_up_after_retries(server, release, tmp_path):
    server.truncate["images.tar.gz"] = (10, 99)  # every attempt is cut short
    with pytest.raises(DataError) as exc:
        _get(server, tmp_path, _files(release), retries=2)
    assert f"{server.url}images.tar.gz" in str(exc.value) and "connection closed" in str(exc.value)
    assert [r for n, r in server.requests if n == "images.tar.gz"] == [None, "bytes=10-", "bytes=20-"]
    assert not (tmp_path / "images.tar.gz").exists()


def test_stalled_server_times_out(server, release, tmp_path):
    server.stall["images.tar.gz"] = 1.0
    with pytest.raises(DataError, match="could not download .*images.tar.gz: .*timed out"):
        _get(server, tmp_path, _files(release), timeout=0.2, retries=1)
    assert sum(n == "images.tar.gz" for n, _ in server.requests) == 2


def test_missing_file_is_not_retried(server, release, tmp_path):
    with pytest.raises(DataError, match=r"could not download .*nope\.tar\.gz: HTTP 404"):
        _get(server, tmp_path, [ReleaseFile("nope.tar.gz", "0" * 32)])
    assert len(server.requests) == 1


def test_connection_refused(server, release, tmp_path):
    url = server.url
    server.shutdown()
    server.server_close()
    with pytest.raises(DataError, match="could not download"):
        download_release(tmp_path, base_url=url, files=_files(release), progress=False, timeout=1, retries=1)


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PETSEG_CACHE", str(tmp_path))
    assert default_data_root() == tmp_path / "oxford-iiit-pet"
    monkeypatch.delenv("PETSEG_CACHE")
    root = default_data_root()
    assert root.name == "oxford-iiit-pet" and "petseg-bench" in str(root)
