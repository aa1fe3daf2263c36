"""Datasets: TF-free preparation, load(), decode cache, validation split, bad files, missing data."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from synthetic import idx_gz_bytes, write_idx_gz

from cnn_jax.data import (
    NORM_STATS,
    DatasetNotFoundError,
    DataSourceError,
    IdxError,
    Splits,
    canonical_name,
    flips_allowed,
    load,
    prepare,
    read_idx,
    split_validation,
)
from cnn_jax.data import builders as builders_mod
from cnn_jax.data import network as network_mod
from cnn_jax.data.__main__ import main as cli_main
from cnn_jax.data.augment import channel_stats
from cnn_jax.data.loading import CACHE_NAME
from cnn_jax.data.sources import DATASETS

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION = DATASETS["fashion_mnist"]
EMNIST = DATASETS["emnist/digits"]


# ------------------------------------------------------------------------------------------ helpers
def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def make_fashion_dir(path: Path, n_train: int = 30, n_test: int = 10) -> Path:
    """Four synthetic Fashion-MNIST IDX gzip files (valid structure, wrong checksums)."""
    path.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = _synthetic(n, seed=n)
        write_idx_gz(path / FASHION.files[f"{split}_images"], images)
        write_idx_gz(path / FASHION.files[f"{split}_labels"], labels)
    return path


def emnist_raw(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images with one bright pixel at a unique asymmetric raw position (r, c), r != c."""
    images = np.zeros((n, 28, 28), np.uint8)
    coords = [(r, c) for r in range(28) for c in range(28) if r != c][:: 7][:n]
    for i, (r, c) in enumerate(coords):
        images[i, r, c] = 200 + i % 50
    return images, (np.arange(n) % 10).astype(np.uint8)


def make_emnist_zip(path: Path, n_train: int = 24, n_test: int = 12, members: dict | None = None) -> Path:
    """A tiny ``gzip.zip`` in NIST's layout (``gzip/emnist-digits-*-idx?-ubyte.gz``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if members is None:
        members = {}
        for split, n in (("train", n_train), ("test", n_test)):
            images, labels = emnist_raw(n)
            members["gzip/" + EMNIST.files[f"{split}_images"]] = idx_gz_bytes(images)
            members["gzip/" + EMNIST.files[f"{split}_labels"]] = idx_gz_bytes(labels)
        members["gzip/emnist-letters-train-labels-idx1-ubyte.gz"] = idx_gz_bytes(np.zeros(3, np.uint8))
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _rows(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(image, label) pairs as sortable byte rows, to compare datasets as multisets."""
    flat = np.concatenate([images.reshape(len(images), -1), labels.reshape(-1, 1).astype(np.uint8)], axis=1)
    return np.sort(np.ascontiguousarray(flat).view(np.dtype((np.void, flat.shape[1]))).ravel())


def _not_prepared(data_dir: Path, name: str = "fashion_mnist") -> bool:
    return not tfds.builder(name, data_dir=str(data_dir)).is_prepared()


# -------------------------------------------------------------------------------- real Fashion-MNIST
@pytest.fixture(scope="session")
def real_fashion(fashion_tfds_dir):
    """Real Fashion-MNIST as the session prepared it offline (no TensorFlow, conftest.py), prepared again (found
    prepared) and loaded."""
    path = prepare("fashion_mnist", data_dir=fashion_tfds_dir)  # found automatically in FASHION_DIR
    return dict(data_dir=fashion_tfds_dir, path=path, first=load("fashion_mnist", data_dir=str(fashion_tfds_dir),
                                                                 val_size=0))


def test_real_fashion_prepared_without_tensorflow(real_fashion):
    assert "tensorflow" not in sys.modules
    assert importlib.util.find_spec("tensorflow") is None
    assert (real_fashion["path"] / "dataset_info.json").is_file()
    assert list(real_fashion["path"].glob("fashion_mnist-train.array_record-*"))
    sources = tfds.data_source("fashion_mnist", data_dir=str(real_fashion["data_dir"]), download=False)
    assert len(sources["train"]) == 60000 and len(sources["test"]) == 10000
    example = sources["test"][0]
    assert example["image"].shape == (28, 28, 1) and example["image"].dtype == np.uint8


def test_real_fashion_content_matches_raw_idx(real_fashion):
    splits: Splits = real_fashion["first"]
    assert splits.name == "fashion_mnist" and splits.num_classes == 10
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    assert splits.train.images.shape == (60000, 28, 28, 1) and splits.train.images.dtype == np.uint8
    assert splits.test.images.shape == (10000, 28, 28, 1) and splits.test.labels.dtype == np.int32
    assert len(splits.val) == 0
    np.testing.assert_array_equal(np.bincount(splits.train.labels), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(splits.test.labels), np.full(10, 1000))
    for split, arr in (("train", splits.train), ("test", splits.test)):  # TFDS shuffles: compare as multisets
        raw_images = read_idx(FASHION_DIR / FASHION.files[f"{split}_images"])
        raw_labels = read_idx(FASHION_DIR / FASHION.files[f"{split}_labels"])
        assert np.array_equal(_rows(arr.images[..., 0], arr.labels), _rows(raw_images, raw_labels))


def test_real_fashion_loads_from_its_decoded_cache(real_fashion, monkeypatch):
    """Once decoded, a load reads the cache alone: the same arrays, without decoding the prepared records."""
    from cnn_jax.data import loading

    assert (real_fashion["path"] / CACHE_NAME).is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(loading, "_decode", no_decoding)
    a, b = real_fashion["first"], load("fashion_mnist", data_dir=str(real_fashion["data_dir"]), val_size=0)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)


def test_real_fashion_norm_stats(real_fashion):
    mean, std = channel_stats(real_fashion["first"].train.images)
    assert NORM_STATS["fashion_mnist"] == pytest.approx((mean, std), abs=1e-3)


def test_real_fashion_validation_split(real_fashion):
    s1 = load("fashion_mnist", data_dir=str(real_fashion["data_dir"]), val_size=5000, seed=3)
    assert len(s1.train) == 55000 and len(s1.val) == 5000 and len(s1.test) == 10000
    full = real_fashion["first"].train
    both = _rows(np.concatenate([s1.train.images, s1.val.images])[..., 0],
                 np.concatenate([s1.train.labels, s1.val.labels]))
    assert np.array_equal(both, _rows(full.images[..., 0], full.labels))  # a partition of train


# --------------------------------------------------------------------------------- validation split
def test_split_validation_sizes_disjoint_seeded():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1) * np.ones((1, 28, 28, 1), np.uint8)
    labels = np.arange(100, dtype=np.int32)
    train, val, idx = split_validation(images, labels, 20, seed=0)
    assert len(train) == 80 and len(val) == 20
    assert set(train.labels).isdisjoint(val.labels) and set(train.labels) | set(val.labels) == set(range(100))
    np.testing.assert_array_equal(val.images[:, 0, 0, 0], val.labels)
    again = split_validation(images, labels, 20, seed=0)[1]
    other = split_validation(images, labels, 20, seed=1)[1]
    np.testing.assert_array_equal(val.labels, again.labels)
    assert not np.array_equal(val.labels, other.labels)
    train0, val0, _ = split_validation(images, labels, 0, seed=0)
    assert len(train0) == 100 and len(val0) == 0 and val0.images.shape == (0, 28, 28, 1)
    with pytest.raises(ValueError, match="--val-size 100 must be in"):
        split_validation(images, labels, 100, seed=0)


# ------------------------------------------------------------------------------------------ mocking
@pytest.mark.parametrize("name", ["fashion_mnist", "emnist/digits"])
def test_mock_data_through_load(tmp_path, name):
    """tfds.testing.mock_data (policy USE_FILES: real metadata of a tiny preparation, mocked records)."""
    real = tmp_path / "real"
    if name == "fashion_mnist":
        prepare(name, source_dir=make_fashion_dir(tmp_path / "raw"), data_dir=real, verify=False)
    else:
        prepare(name, source_dir=make_emnist_zip(tmp_path / "raw" / "gzip.zip"), data_dir=real, verify=False)
    meta = tmp_path / "meta"
    shutil.copytree(real, meta, ignore=shutil.ignore_patterns("*.array_record-*", "*.npz", "downloads"))
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(meta)):
        splits = load(name.replace("/", "_"), data_dir=str(tmp_path / "elsewhere"), val_size=4)
    assert splits.name == name and splits.num_classes == 10
    assert splits.train.images.shape == (8, 28, 28, 1) and splits.val.images.shape == (4, 28, 28, 1)
    assert splits.test.images.shape == (12, 28, 28, 1)
    assert splits.train.images.dtype == np.uint8 and splits.train.labels.dtype == np.int32
    assert splits.train.labels.min() >= 0 and splits.train.labels.max() < 10
    assert not list(meta.rglob(CACHE_NAME))  # mocked data is never cached


def test_preparing_without_progress_prints_our_line_only(tmp_path, capsys, caplog):
    """``--no-progress`` (``progress=False``): no TFDS bars, none of its messages ("Downloading and preparing
    dataset Unknown size"), no OpenCV note while decoding; one line of ours says what is prepared from where."""
    raw = make_fashion_dir(tmp_path / "raw")
    splits = load("fashion_mnist", data_dir=str(tmp_path / "d"), source_dir=str(raw), val_size=0, verify=False,
                  progress=False)
    assert len(splits.train) == 30
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"fashion_mnist: preparing it from {raw} (once: later runs read the prepared "
                                    "copy)"], out.out
    assert out.err == "" and "OpenCV" not in caplog.text


# ---------------------------------------------------------------------------------------- EMNIST
def test_emnist_zip_prepared_offline_upright(tmp_path):
    zip_path = make_emnist_zip(tmp_path / "nist" / "gzip.zip")
    path = prepare("emnist/digits", source_dir=tmp_path / "nist", data_dir=tmp_path / "d", verify=False)
    assert path == tmp_path / "d" / "emnist" / "digits" / "3.1.0"
    assert "tensorflow" not in sys.modules
    info = tfds.builder("emnist/digits", data_dir=str(tmp_path / "d")).info
    assert str(info.version) == "3.1.0" and info.features["label"].num_classes == 10
    assert info.splits["train"].num_examples == 24 and info.splits["test"].num_examples == 12
    splits = load("emnist_digits", data_dir=str(tmp_path / "d"), val_size=0)
    assert zip_path.is_file()
    for split, arr, n in (("train", splits.train, 24), ("test", splits.test, 12)):
        raw_images, raw_labels = emnist_raw(n)
        # raw (r, c) -> (c, r): the transposed storage is fixed at preparation
        expected = {(int(np.argwhere(im)[0][1]), int(np.argwhere(im)[0][0]), int(lb))
                    for im, lb in zip(raw_images, raw_labels, strict=True)}
        got = {(int(np.argwhere(im[..., 0])[0][0]), int(np.argwhere(im[..., 0])[0][1]), int(lb))
               for im, lb in zip(arr.images, arr.labels, strict=True)}
        assert got == expected, split
        assert _rows(arr.images[..., 0], arr.labels).tolist() == _rows(raw_images.transpose(0, 2, 1),
                                                                       raw_labels).tolist()


def test_emnist_from_extracted_idx_files(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, n in (("train", 10), ("test", 10)):
        images, labels = emnist_raw(n)
        write_idx_gz(raw / EMNIST.files[f"{split}_images"], images)
        (raw / EMNIST.files[f"{split}_labels"][:-3]).write_bytes(gzip.decompress(idx_gz_bytes(labels)))
    splits = load("emnist/digits", data_dir=str(tmp_path / "d"), source_dir=str(raw), val_size=2,
                  verify=False)
    assert len(splits.train) == 8 and len(splits.val) == 2 and len(splits.test) == 10


def test_cli_prepare(tmp_path, capsys):
    zip_path = make_emnist_zip(tmp_path / "gzip.zip")
    args = ["prepare", "emnist_digits", "--from", str(zip_path), "--data-dir", str(tmp_path / "d"), "--no-verify"]
    assert cli_main(args) == 0
    assert "12 test examples" in capsys.readouterr().out
    assert (tmp_path / "d" / "emnist" / "digits" / "3.1.0" / CACHE_NAME).is_file()
    assert cli_main(["prepare", "emnist/digits", "--data-dir", str(tmp_path / "empty")]) == 1
    assert "--from DIR" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bad files
def _corrupt(kind: str, path: Path) -> None:
    target = path / FASHION.files["train_images"]
    if kind == "magic":
        target.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + bytes(100)))
    elif kind == "truncated":
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    elif kind == "count":
        write_idx_gz(path / FASHION.files["train_labels"], np.zeros(29, np.uint8))


@pytest.mark.parametrize("kind, error, match", [
    ("magic", IdxError, "bad magic number"),
    ("truncated", IdxError, "truncated gzip"),
    ("count", DataSourceError, "30 images but .*29 labels"),
])
def test_bad_fashion_files(tmp_path, kind, error, match):
    raw = make_fashion_dir(tmp_path / "raw")
    _corrupt(kind, raw)
    with pytest.raises(error, match=match) as info:
        prepare("fashion_mnist", source_dir=raw, data_dir=tmp_path / "d", verify=False)
    assert str(raw) in str(info.value)  # names the file
    assert _not_prepared(tmp_path / "d")


def test_read_idx_plain_gzipped_and_truncated(tmp_path):
    images, _ = _synthetic(3, seed=0)
    write_idx_gz(tmp_path / "a.gz", images)
    (tmp_path / "a").write_bytes(gzip.decompress((tmp_path / "a.gz").read_bytes()))
    for path in (tmp_path / "a.gz", tmp_path / "a"):
        np.testing.assert_array_equal(read_idx(path), images)
    (tmp_path / "b.gz").write_bytes((tmp_path / "a.gz").read_bytes()[:100])
    with pytest.raises(IdxError, match=r"b\.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "b.gz")


def test_flips_allowed():
    assert flips_allowed("fashion_mnist") and flips_allowed("Fashion-MNIST")
    assert not flips_allowed("emnist/digits") and not flips_allowed("emnist_digits")


def test_checksum_mismatch(tmp_path):
    raw = make_fashion_dir(tmp_path / "raw")
    with pytest.raises(DataSourceError, match="checksum mismatch") as info:
        load("fashion_mnist", data_dir=str(tmp_path / "d"), source_dir=str(raw))
    assert FASHION.files["train_images"] in str(info.value)
    assert _not_prepared(tmp_path / "d")


def test_missing_fashion_file(tmp_path):
    raw = make_fashion_dir(tmp_path / "raw")
    (raw / FASHION.files["test_labels"]).unlink()
    with pytest.raises(DataSourceError, match="missing fashion_mnist files t10k-labels-idx1-ubyte.gz"):
        prepare("fashion_mnist", source_dir=raw, data_dir=tmp_path / "d")


def test_zip_without_members(tmp_path):
    bad = make_emnist_zip(tmp_path / "gzip.zip", members={"gzip/emnist-letters-test-images-idx3-ubyte.gz": b"x"})
    with pytest.raises(DataSourceError, match="zip has no member gzip/emnist-digits-train-images") as info:
        prepare("emnist/digits", source_dir=bad, data_dir=tmp_path / "d", verify=False)
    assert str(bad) in str(info.value)
    assert _not_prepared(tmp_path / "d", "emnist/digits")


def test_not_a_zip(tmp_path):
    bad = tmp_path / "gzip.zip"
    bad.write_bytes(b"this is not a zip")
    with pytest.raises(DataSourceError, match="not a valid zip"):
        prepare("emnist/digits", source_dir=bad, data_dir=tmp_path / "d", verify=False)


def test_interrupted_preparation_leaves_nothing_prepared(tmp_path, monkeypatch):
    raw = make_fashion_dir(tmp_path / "raw")
    real_png, calls = builders_mod._png, []

    def flaky_png(image):
        calls.append(1)
        if len(calls) == 15:
            raise KeyboardInterrupt("simulated interruption")
        return real_png(image)

    monkeypatch.setattr(builders_mod, "_png", flaky_png)
    with pytest.raises(KeyboardInterrupt):
        prepare("fashion_mnist", source_dir=raw, data_dir=tmp_path / "d", verify=False)
    assert _not_prepared(tmp_path / "d")
    assert not (tmp_path / "d" / "fashion_mnist" / "3.0.1").exists()
    monkeypatch.setattr(builders_mod, "_png", real_png)
    splits = load("fashion_mnist", data_dir=str(tmp_path / "d"), source_dir=str(raw), val_size=0, verify=False)
    assert len(splits.train) == 30  # a later run prepares from scratch


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "bit-flipped"])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    raw = make_fashion_dir(tmp_path / "raw")
    a = load("fashion_mnist", data_dir=str(tmp_path / "d"), source_dir=str(raw), val_size=0, verify=False)
    cache = tmp_path / "d" / "fashion_mnist" / "3.0.1" / CACHE_NAME
    data = bytearray(cache.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    cache.write_bytes({"garbage": b"garbage", "empty": b"", "truncated": cache.read_bytes()[:mid],
                       "bit-flipped": bytes(data)}[damage])
    with pytest.warns(UserWarning, match="damaged decode cache"):
        b = load("fashion_mnist", data_dir=str(tmp_path / "d"), val_size=0)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(np.load(cache)["train_images"], a.train.images)  # rebuilt


# ---------------------------------------------------------------------------------------- missing data
def test_missing_dataset_fails_fast_with_help(tmp_path, monkeypatch):
    spec = dataclasses.replace(FASHION, default_dirs=(str(tmp_path / "no-such-dir"),))
    monkeypatch.setitem(DATASETS, "fashion_mnist", spec)
    t0 = time.perf_counter()
    with pytest.raises(DatasetNotFoundError) as info:
        load("fashion_mnist", data_dir=str(tmp_path / "d"), download=False)
    assert time.perf_counter() - t0 < 5
    msg = str(info.value)
    for needle in ("fashion_mnist", str(tmp_path / "d"), "no-such-dir", "apt-get install dataset-fashion-mnist",
                   "train-images-idx3-ubyte.gz", "--from DIR", "download: not allowed (--no-download"):
        assert needle in msg, needle
    with pytest.raises(DatasetNotFoundError, match=r"gzip\.zip"):
        load("emnist/digits", data_dir=str(tmp_path / "d"), download=False)
    assert not (tmp_path / "d" / "fashion_mnist" / "3.0.1").exists()


def test_download_offline_fails_fast(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(network_mod.socket, "create_connection", no_network)
    t0 = time.perf_counter()
    with pytest.raises(DatasetNotFoundError, match="cannot reach biometrics.nist.gov"):
        load("emnist/digits", data_dir=str(tmp_path / "d"), download=True)
    assert time.perf_counter() - t0 < 5
    assert _not_prepared(tmp_path / "d", "emnist/digits")


def test_names_and_aliases():
    assert canonical_name("emnist_digits") == canonical_name("emnist/digits") == "emnist/digits"
    assert canonical_name("fashion_mnist") == "fashion_mnist"
    with pytest.raises(ValueError, match="unknown dataset"):
        canonical_name("cifar10")


def test_builders_match_stock_tfds():
    for ours, name in ((builders_mod.FashionMnist, "fashion_mnist"), (builders_mod.Emnist, "emnist")):
        stock = tfds.builder_cls(name)
        assert ours.name == stock.name and ours.VERSION == stock.VERSION
    ours = builders_mod.builder_for("emnist/digits", "/tmp/unused")
    stock = tfds.builder("emnist/digits", data_dir="/tmp/unused")
    assert repr(ours.info.features) == repr(stock.info.features)
    assert builders_mod.builder_for("fashion_mnist", "/tmp/unused").info.features["label"].names == \
        tfds.builder("fashion_mnist", data_dir="/tmp/unused").info.features["label"].names
    assert ours.url_infos and EMNIST.urls[0] in ours.url_infos  # registered checksums are used online


def test_emnist_stock_orientation_fixed_at_load(tmp_path):
    """A preparation without our orientation marker (TFDS's stock builder) is transposed when decoded."""
    path = prepare("emnist/digits", source_dir=make_emnist_zip(tmp_path / "gzip.zip"), data_dir=tmp_path / "d",
                   verify=False)
    upright = load("emnist/digits", data_dir=str(tmp_path / "d"), val_size=0)
    (path / "metadata.json").unlink()  # now looks like a stock preparation (raw, transposed storage)
    (path / CACHE_NAME).unlink()
    fixed = load("emnist/digits", data_dir=str(tmp_path / "d"), val_size=0)
    np.testing.assert_array_equal(fixed.train.images, upright.train.images.transpose(0, 2, 1, 3))


@pytest.mark.parametrize("name", ["fashion_mnist", "emnist/digits"])
def test_online_path_uses_download_manager(tmp_path, monkeypatch, name):
    """The download path, with the network and TFDS's download manager faked (no network here)."""
    if name == "fashion_mnist":
        raw = make_fashion_dir(tmp_path / "raw")
        files = {url: raw / url.rsplit("/", 1)[1] for url in FASHION.urls}
    else:
        files = {EMNIST.urls[0]: make_emnist_zip(tmp_path / "raw" / "gzip.zip")}
    requested = []

    def fake_download(self, urls):
        requested.append(urls)
        return {k: files[u] for k, u in urls.items()} if isinstance(urls, dict) else files[urls]

    class FakeConnection:
        def close(self):
            pass

    monkeypatch.setattr(network_mod.socket, "create_connection", lambda *a, **k: FakeConnection())
    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
    monkeypatch.setitem(DATASETS, "fashion_mnist", dataclasses.replace(FASHION, default_dirs=()))
    with pytest.raises(DataSourceError, match="checksum mismatch|examples, expected"):  # verify=True: real sizes
        load(name, data_dir=str(tmp_path / "d"), download=True)
    splits = load(name, data_dir=str(tmp_path / "d"), download=True, verify=False, val_size=0)
    assert len(splits.test) in (10, 12) and requested
    assert set(files) == (set(requested[0].values()) if isinstance(requested[0], dict) else {requested[0]})


def test_unwritable_cache_only_warns(tmp_path, monkeypatch):
    from cnn_jax.data import loading

    def fail(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(loading, "_write_cache", fail)
    raw = make_fashion_dir(tmp_path / "raw")
    with pytest.warns(UserWarning, match="cannot write the decoded cache"):
        splits = load("fashion_mnist", data_dir=str(tmp_path / "d"), source_dir=str(raw), val_size=0, verify=False)
    assert len(splits.train) == 30
