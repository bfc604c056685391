"""The app reads only what was uploaded to it, and ``app --host`` says what the system said.

A direct API call (``POST /gradio_api/call/on_photo``, then the event stream) whose image
argument names a path on the server, rather than a file Gradio received as an upload, is
refused: no pixel comes back, and the answer is the same byte for byte whether the path
is an image, a text file, missing, a folder, a symlink out of the upload folder, a ``..``
path, a URL... (no answer tells which server paths exist). A real upload still works.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from app_support import pet_photo, save, train_checkpoints
from conftest import one_error_line
from petseg_bench.app.uploads import NOT_SENT, UploadError, load_upload, payload_source
from petseg_bench.cli import main
from petseg_bench.errors import PetsegError

gr = pytest.importorskip("gradio", reason="the app's page needs Gradio (pip install 'petseg-bench[app]')")
httpx = pytest.importorskip("httpx")
from petseg_bench.app.page import Page, check_bind, launch  # noqa: E402 - after the Gradio check

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.*")
META = {"_type": "gradio.FileData"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The page on 127.0.0.1 with the tiny checkpoints: its URL."""
    demo = launch(train_checkpoints(tmp_path_factory), "127.0.0.1", free_port(), block=False)
    try:
        yield demo.local_url.rstrip("/")
    finally:
        demo.close()


@pytest.fixture
def outside(tmp_path) -> dict[str, Path]:
    """Server files outside the upload folder: an image, a text file, a folder, a missing path."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("not for the page\n")
    return {"image": save(pet_photo(48, 56), tmp_path / "secret.png"), "text": tmp_path / "notes.txt",
            "folder": tmp_path / "folder", "missing": tmp_path / "missing.png"}


@pytest.fixture
def uploads_dir():
    """A folder of ours inside Gradio's upload folder (for links planted there)."""
    folder = Path(gr.utils.get_upload_folder()) / f"petseg-test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def call(url: str, payload, model: str | None = None, level: int = 0) -> str:
    """The raw event stream of one forged ``on_photo`` call."""
    with httpx.Client(base_url=url, trust_env=False, timeout=120) as client:
        started = client.post("/gradio_api/call/on_photo", json={"data": [payload, model, "gaussian_noise", level]})
        assert started.status_code == 200, started.text
        return client.get(f"/gradio_api/call/on_photo/{started.json()['event_id']}").text


def outputs(stream: str) -> list | None:
    """The outputs of a completed call (None when the call ended in an error event)."""
    lines = stream.splitlines()
    if "event: complete" not in lines:
        return None
    return json.loads(lines[lines.index("event: complete") + 1].removeprefix("data: "))


def assert_no_pixels(stream: str) -> None:
    assert "gradio_api/file=" not in stream and '"path"' not in stream, stream[:500]
    out = outputs(stream)
    if out is not None:  # (upload, click, click view, clean, perturbed, legend, status)
        assert out[2:5] == [None, None, None], stream[:500]


def forged_payloads(outside: dict[str, Path], planted: Path, uploads: Path, url: str) -> dict[str, object]:
    """Every way of naming a server file other than an upload (without Gradio's file mark:
    Gradio passes those to the app unchecked)."""
    return {
        "image outside": {"path": str(outside["image"])},
        "missing file": {"path": str(outside["missing"])},
        "folder": {"path": str(outside["folder"])},
        "text file": {"path": str(outside["text"]), "orig_name": "notes.txt"},
        "symlink in the upload folder": {"path": str(planted)},
        "dot-dot out of the upload folder": {"path": f"{uploads}/../../..{outside['image']}"},
        "relative path": {"path": os.path.relpath(outside["image"])},
        "url": {"path": f"{url}/gradio_api/info", "url": f"{url}/gradio_api/info"},
        "upload folder itself": {"path": str(uploads)},
    }


# --- the running app ----------------------------------------------------------------------------


def test_forged_paths_get_one_answer_and_no_pixels(server, outside, uploads_dir):
    """Before the fix: the image came back (downscaled) and the text file, the missing
    file and the folder each got their own message."""
    planted = uploads_dir / "link.png"
    planted.symlink_to(outside["image"])
    before = {k: p.read_bytes() for k, p in outside.items() if p.is_file()}
    answers = {}
    for name, payload in forged_payloads(outside, planted, uploads_dir, server).items():
        answers[name] = call(server, payload, model=None)
        assert_no_pixels(answers[name])
    first = answers["image outside"]
    assert outputs(first)[-1] == f"⚠ {NOT_SENT}", first
    different = [name for name, text in answers.items() if text != first]
    assert not different, f"answers differ from the existing image's: {different}"
    assert {k: p.read_bytes() for k, p in outside.items() if p.is_file()} == before


def test_paths_marked_as_gradio_files_are_refused_alike_by_gradio(server, outside, uploads_dir):
    """With Gradio's file mark, Gradio's own check refuses a path outside its upload
    folder before the app runs: one error event, the same for every such path."""
    planted = uploads_dir / "link.png"
    planted.symlink_to(outside["image"])
    marked = [{"path": str(outside[k]), "meta": META, "orig_name": "x.png"} for k in ("image", "missing", "folder")]
    marked += [{"path": str(planted), "meta": META}, {"path": f"{uploads_dir}/../../..{outside['image']}", "meta": META},
               {"path": os.path.relpath(outside["image"]), "meta": META}, str(outside["image"])]
    answers = [call(server, payload) for payload in marked]
    for text in answers:
        assert_no_pixels(text)
        assert outputs(text) is None, text
    assert len(set(answers)) == 1, answers


def test_a_real_upload_is_read_and_segmented(server, tmp_path, tmp_path_factory):
    photo = save(pet_photo(), tmp_path / "pet.png")
    original = photo.read_bytes()
    with httpx.Client(base_url=server, trust_env=False, timeout=120) as client:
        sent = client.post("/gradio_api/upload", files={"files": ("pet.png", original, "image/png")})
    assert sent.status_code == 200, sent.text
    (path,) = sent.json()
    unet = str(train_checkpoints(tmp_path_factory) / "unet" / "best.pt")
    stream = call(server, {"path": path, "meta": META, "orig_name": "pet.png"}, model=unet, level=3)
    out = outputs(stream)
    assert out is not None, stream[:500]
    assert all(isinstance(o, dict) and "url" in o for o in out[2:5]), stream[:800]  # view, clean, perturbed
    assert "U-Net" in out[-1] and "80x64 px" in out[-1], out[-1]
    assert photo.read_bytes() == original


# --- the check itself (no server) ---------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    "PATH", {"path": "PATH"}, {"path": "PATH", "meta": {"_type": "something.else"}},
    {"path": "PATH", "meta": "gradio.FileData"}, {"path": None, "meta": META}, {"path": 7, "meta": META},
    {"path": "", "meta": META}, {"path": "nul\0byte", "meta": META}, ["PATH"], b"bytes",
    {"url": "https://example.org/pet.png", "meta": META},
])
def test_payloads_without_an_upload_are_refused_alike(payload, outside, tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    with pytest.raises(UploadError) as info:
        payload_source(fill(payload, str(outside["image"])), uploads)
    assert str(info.value) == NOT_SENT


def fill(payload, path: str):
    """``payload`` with every "PATH" string replaced by ``path``."""
    if isinstance(payload, dict):
        return {k: fill(v, path) for k, v in payload.items()}
    if isinstance(payload, list):
        return [fill(v, path) for v in payload]
    return path if payload == "PATH" else payload


def test_only_regular_files_inside_the_upload_folder_are_read(outside, tmp_path):
    uploads = tmp_path / "uploads"
    (uploads / "sub").mkdir(parents=True)
    inside = save(pet_photo(), uploads / "sub" / "pet.png")
    (uploads / "sub" / "out.png").symlink_to(outside["image"])
    (uploads / "sub" / "in.png").symlink_to(inside)
    assert payload_source({"path": str(inside), "meta": META}, uploads) == str(inside.resolve())
    assert payload_source({"path": str(uploads / "sub" / "in.png"), "meta": META}, uploads) == str(inside.resolve())
    assert np.array_equal(load_upload(payload_source({"path": str(inside), "meta": META}, uploads)).image, pet_photo())
    for path in (uploads / "sub" / "out.png", uploads / "sub", uploads, uploads / "gone.png",
                 f"{uploads}/sub/../../uploads/../{outside['image'].name}", f"{uploads}-sibling/pet.png"):
        with pytest.raises(UploadError, match=NOT_SENT):
            payload_source({"path": str(path), "meta": META}, uploads)


def test_the_page_refuses_forged_paths_in_one_status_line(tmp_path, outside):
    page = Page(tmp_path / "no-checkpoints", uploads=tmp_path / "uploads")
    (tmp_path / "uploads").mkdir()
    lines = set()
    for path in (outside["image"], outside["text"], outside["missing"], outside["folder"]):
        with pytest.warns(UserWarning):
            out = page.on_photo({"path": str(path), "meta": META}, None, "none", 0)
        assert out[0] is None and out[2:5] == (None, None, None)
        lines.add(out[-1])
    assert lines == {f"⚠ {NOT_SENT}"}


# --- app --host: what the operating system said -------------------------------------------------


@pytest.mark.parametrize("host, expected", [
    ("192.0.2.1", "cannot assign requested address (--host must be an address of this machine"),
    ("198.51.100.7", "cannot assign requested address"),
    ("no-such-host.invalid", "--host 'no-such-host.invalid' is not an address: "),
    ("999.1.1.1", "--host '999.1.1.1' is not an address: "),
    ("BUSY", "the port is in use (choose another --port or --host)"),
])
def test_app_host_errors_say_what_the_system_said(host, expected, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1] if host == "BUSY" else free_port()
        host = "127.0.0.1" if host == "BUSY" else host
        result = CliRunner().invoke(main, ["app", "--checkpoints", str(tmp_path), "--host", host, "--port", str(port)])
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert line.startswith(f"Error: cannot serve on {host}:{port}: ") and expected in line, line
    assert "empty port" not in line
    assert list(tmp_path.iterdir()) == []


def test_check_bind_accepts_what_can_be_served():
    check_bind("127.0.0.1", free_port())
    with pytest.raises(PetsegError, match="cannot assign requested address"):
        check_bind("192.0.2.1", free_port())
