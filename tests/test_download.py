"""The download path, run as a user runs it: the experiment script with no local files, against a local HTTP
server on 127.0.0.1 serving the official Fashion-MNIST files (checked against TFDS's registered checksums),
and offline (nothing listening).

The official ``.gz`` files are rebuilt byte for byte from Debian's ``dataset-fashion-mnist``: Debian's files
hold the same deflate streams; only the gzip header differs (upstream's names the file and carries the
original modification time, 2017-08-31, found by matching TFDS's registered SHA-256).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from cnn_jax.data import DataSourceError, load
from cnn_jax.data.network import MIRROR_ENV
from cnn_jax.data.sources import DATASETS

ROOT = Path(__file__).parents[1]
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION = DATASETS["fashion_mnist"]
_UPSTREAM_MTIME = {"train": 1504176606, "t10k": 1504176627}
# The user's script, with Debian's folder hidden from it (so the data must come from the server).
_NO_LOCAL_FILES = ("import dataclasses, runpy, sys; from cnn_jax.data import sources as s; "
                   "s.DATASETS['fashion_mnist'] = dataclasses.replace(s.DATASETS['fashion_mnist'], default_dirs=()); "
                   "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
ARGS = ["--epochs", "1", "--limit", "1000", "--val-size", "200", "--no-progress"]


def _registered() -> dict[str, tuple[int, str]]:
    path = tfds.core.utils.tfds_path() / "url_checksums" / "fashion_mnist.txt"
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return {url.rsplit("/", 1)[1]: (int(size), sha) for url, size, sha, *_ in rows}


@pytest.fixture(scope="module")
def official_files(tmp_path_factory) -> Path:
    """The four official ``.gz`` files (as served upstream), rebuilt from Debian's and checked."""
    if not all((DEBIAN / f).is_file() for f in FASHION.files.values()):
        pytest.skip(f"real Fashion-MNIST not in {DEBIAN} (apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("official")
    registered = _registered()
    for fname in FASHION.files.values():
        debian = (DEBIAN / fname).read_bytes()
        assert debian[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no name
        header = b"\x1f\x8b\x08\x08" + struct.pack("<I", _UPSTREAM_MTIME[fname.split("-")[0]]) + \
            b"\x00\x03" + fname[:-3].encode() + b"\x00"
        data = header + debian[10:]
        assert (len(data), hashlib.sha256(data).hexdigest()) == registered[fname], fname
        (out / fname).write_bytes(data)
    return out


class _Server:
    """A static file server on 127.0.0.1 in a thread; ``requests`` lists the paths asked for."""

    def __init__(self, directory: Path):
        self.requests: list[str] = []
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, fmt, *args):  # quiet; record the path instead
                log.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(official_files):
    s = _Server(official_files)
    yield s
    s.close()


def _script(tmp_path: Path, mirror: str, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, MIRROR_ENV: mirror}
    cmd = [sys.executable, "-c", _NO_LOCAL_FILES, "experiments/fashion_mnist.py", *ARGS,
           "--data-dir", str(tmp_path / "tfds"), "--workdir", str(tmp_path / "runs"), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _prepared(data_dir: Path) -> bool:
    return tfds.builder("fashion_mnist", data_dir=str(data_dir)).is_prepared()


def test_script_downloads_by_default(tmp_path, server):
    """No flag: the script downloads the four files once (registered checksums), prepares and trains."""
    proc = _script(tmp_path, server.url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fashion_mnist: downloading " + server.url in proc.stdout
    assert sorted(server.requests) == sorted("/" + f for f in FASHION.files.values())
    assert _prepared(tmp_path / "tfds")
    assert (tmp_path / "runs" / "lab" / "results.json").is_file()
    splits = load("fashion_mnist", data_dir=str(tmp_path / "tfds"), download=False, val_size=0)
    assert (len(splits.train), len(splits.test)) == (60000, 10000)


def test_script_offline_fails_within_seconds(tmp_path, official_files):
    """Nothing listening: one clear message naming the host and every other way to get the data; nothing written."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t0 = time.perf_counter()
    proc = _script(tmp_path, f"http://127.0.0.1:{port}/", timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = proc.stderr
    for needle in (f"download: cannot reach 127.0.0.1:{port}", "apt-get install dataset-fashion-mnist", "--from DIR",
                   FASHION.urls[0]):
        assert needle in err, needle
    assert "Traceback" not in err
    assert elapsed < 60, elapsed  # interpreter + JAX start; the reachability check itself is immediate
    assert not _prepared(tmp_path / "tfds") and not (tmp_path / "runs" / "lab" / "ckpt").exists()


def test_script_no_download_flag(tmp_path, server):
    proc = _script(tmp_path, server.url, "--no-download", timeout=120)
    assert proc.returncode == 1 and "download: not allowed (--no-download" in proc.stderr, proc.stderr[-2000:]
    assert server.requests == []


def test_download_checksum_mismatch_prepares_nothing(tmp_path, monkeypatch, official_files):
    """A file changed on the way (one byte) fails TFDS's registered checksum: a one-line error, nothing prepared."""
    bad = tmp_path / "served"
    bad.mkdir()
    for f in official_files.iterdir():
        data = bytearray(f.read_bytes())
        if f.name.startswith("t10k-labels"):
            data[-20] ^= 0xFF
        (bad / f.name).write_bytes(bytes(data))
    s = _Server(bad)
    try:
        monkeypatch.setenv(MIRROR_ENV, s.url)
        monkeypatch.setitem(DATASETS, "fashion_mnist", dataclasses.replace(FASHION, default_dirs=()))
        with pytest.raises(DataSourceError, match="failed its registered checksum") as info:
            load("fashion_mnist", data_dir=str(tmp_path / "tfds"))
    finally:
        s.close()
    assert "\n" not in str(info.value)
    assert not _prepared(tmp_path / "tfds")
