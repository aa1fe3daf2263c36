"""``load``: a prepared TFDS dataset as in-memory uint8 arrays, with a decode cache and a validation split.

Flow of :func:`load`:

1. prepared under the data dir (``data_dir`` / ``$TFDS_DATA_DIR`` / ``~/tensorflow_datasets``)? use it,
   no network. Else prepare it (:func:`cnn_jax.data.preparation.prepare`: local raw files, else a download
   unless ``download=False``), or fail within seconds with a message saying what was tried and how to get it.
2. decoded cache ``<prepared dir>/cnn_jax_decoded.npz`` valid for these shards? read it (well under a
   second). Else read both splits through ``tfds.data_source`` (array_record, PNG decoded by Pillow),
   fix EMNIST's orientation if the preparation did not, write the cache atomically (tmp + rename).
3. hold out a seeded validation split from train; test is returned untouched.

Arrays are host NumPy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from cnn_jax.data.builders import ORIENTATION_KEY, prepared_source
from cnn_jax.data.preparation import check_data_dir, check_same_source, prepare
from cnn_jax.data.sources import DataSourceError, canonical_name, source_label
from cnn_jax.data.splits import ArraySplit, split_validation
from cnn_jax.signals import check_interrupt, interruptible

__all__ = ["ArraySplit", "Splits", "load", "CACHE_NAME", "split_validation"]

CACHE_NAME = "cnn_jax_decoded.npz"
_CACHE_FORMAT = 1
_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class Splits:
    """``train``/``val``/``test`` of one dataset; ``val`` is a seeded hold-out from TFDS's train split.

    ``source``: the stand-in record of the prepared data (:func:`cnn_jax.data.sources.source_record`: its
    ``label``, origin, split, ``fingerprint``), None for the dataset's own files; ``label`` names the data.
    """

    train: ArraySplit
    val: ArraySplit
    test: ArraySplit
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    source: dict | None = None

    @property
    def label(self) -> str:
        """How to name these data to a user (a stand-in is never called by the name it stands in for)."""
        return source_label(self.name, self.source)


# --------------------------------------------------------------------------------------------- cache
def _fingerprint(data_path: Path) -> str | None:
    """Names, sizes and mtimes of the prepared shards (None when there are no array_record shards)."""
    shards = sorted(p for p in data_path.glob("*.array_record-*") if p.is_file())
    if not shards:
        return None
    info = data_path / "dataset_info.json"
    parts = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in [*shards, info] if p.exists()]
    return json.dumps([_CACHE_FORMAT, parts])


def _read_cache(path: Path, fingerprint: str | None) -> dict[str, np.ndarray] | None:
    if fingerprint is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                return None
            return {k: z[k] for k in ("train_images", "train_labels", "test_images", "test_labels")}
    except Exception as e:  # noqa: BLE001 - truncated, bit-flipped, empty: rebuild it
        warnings.warn(f"{path}: damaged decode cache ({type(e).__name__}); decoding again and rebuilding it",
                      stacklevel=3)
        return None


def _write_cache(path: Path, fingerprint: str, arrays: dict[str, np.ndarray]) -> None:
    """Write the npz atomically: a temp file in the same directory (removed on any failure, Ctrl-C included),
    flushed to disk, then ``os.replace``: readers see the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, fingerprint=np.array(fingerprint), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -------------------------------------------------------------------------------------------- decode
def _decode_split(source, what: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    images = np.empty((n, 28, 28, 1), np.uint8)
    labels = np.empty((n,), np.int32)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"decoding {what}", unit="ex")
    try:
        for start in range(0, n, _CHUNK):
            check_interrupt()
            idx = list(range(start, min(n, start + _CHUNK)))
            try:
                batch = source.__getitems__(idx)
            except (AttributeError, TypeError):  # no batched read (e.g. tfds.testing.mock_data's data source)
                batch = [source[i] for i in idx]
            for j, ex in enumerate(batch):
                image = np.asarray(ex["image"])
                images[start + j] = image.reshape(28, 28, 1) if image.size == 784 else image
                labels[start + j] = ex["label"]
            if bar is not None:
                bar.update(len(idx))
    finally:  # also on Ctrl-C: end the bar's line, so that what is printed next starts a line
        if bar is not None:
            bar.close()
    return images, labels


class _NoOpenCVNote(logging.Filter):
    """Drops TFDS's "OpenCV is not installed ... Defaulting to PIL" warning: Pillow decodes these 28x28 images."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "OpenCV is not installed" not in str(record.msg)


def _decode(name: str, data_dir: Path, data_path: Path, progress: bool) -> dict[str, np.ndarray]:
    out = {}
    quiet = _NoOpenCVNote()
    logging.getLogger("absl").addFilter(quiet)
    try:
        sources = tfds.data_source(name, split=["train", "test"], data_dir=os.fspath(data_dir), download=False)
        for split, source in zip(("train", "test"), sources, strict=True):
            images, labels = _decode_split(source, f"{name} {split}", progress)
            out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    except Exception as e:  # noqa: BLE001 - a deleted, truncated or corrupt shard
        raise DataSourceError(f"{data_path}: the prepared dataset is damaged ({type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:150]}); delete that folder and run again to "
                              f"prepare it anew (`python -m cnn_jax.data prepare {name}`)") from None
    finally:
        logging.getLogger("absl").removeFilter(quiet)
    return out


# ---------------------------------------------------------------------------------------------- load
def load(name: str, *, data_dir: str | None = None, source_dir: str | None = None, val_size: int = 5000,
         seed: int = 0, download: bool = True, verify: bool = True, progress: bool = False) -> Splits:
    """Load ``name`` (``fashion_mnist``, ``emnist/digits``; aliases ``emnist_digits``...) as arrays.

    Args:
      name: TFDS name or alias.
      data_dir: TFDS data dir (default ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``).
      source_dir: raw files to prepare from when not yet prepared (Fashion-MNIST: the four IDX gzip
        files, found automatically in ``/usr/share/datasets/fashion-mnist``; EMNIST: NIST's
        ``gzip.zip``, a folder holding it, or the ``emnist-digits-*`` IDX files).
      val_size: examples held out of train for validation (seeded by ``seed``; 0 allowed).
      download: fetch the official files with TFDS's download manager (registered checksums) when the
        dataset is neither prepared nor found locally (as ``tfds.load`` does); False: never.
      verify: when preparing from local files, check checksums and expected counts (``False`` for
        synthetic/custom files; structure is always checked).
      progress: progress bars while preparing (TFDS's) and decoding.

    Returns:
      :class:`Splits` with uint8 NHWC ``(N, 28, 28, 1)`` images and int32 labels; ``source`` says when the
      prepared data are a stand-in (:mod:`cnn_jax.data.standin`).

    Raises:
      DatasetNotFoundError: not prepared, no local files, download not allowed or hosts unreachable.
      DataSourceError / IdxError: bad raw files (naming the file); ``source_dir`` holding other files than the
        prepared copy was made from (a stand-in against NIST's), with how to replace it.
      DataDirError: the data dir is not a folder, or is not writable when the dataset must be prepared
        there (a read-only data dir holding the prepared dataset is read as is; the decode cache is then
        not written, with a warning).
      KeyboardInterrupt: propagated, after removing what the interrupted preparation had written.
    """
    name = canonical_name(name)
    root = check_data_dir(data_dir, name, write=False)  # not a folder: one line (preparing checks writes)
    builder = tfds.builder(name, data_dir=os.fspath(root))
    if not builder.is_prepared():
        prepare(name, source_dir=source_dir, data_dir=root, download=download, verify=verify, progress=progress)
        builder = tfds.builder(name, data_dir=os.fspath(root))
    else:  # a stand-in given where the dataset's own files were prepared (or the other way round): refused
        check_same_source(name, builder.data_path, source_dir, data_dir)
    if builder.info.file_format is not None and builder.info.file_format.value != "array_record":
        raise DataSourceError(f"{builder.data_path}: prepared as {builder.info.file_format.value}, which "
                              "tfds.data_source cannot read; delete it and prepare again with "
                              f"`python -m cnn_jax.data prepare {name}`")
    data_path = Path(builder.data_path)
    fingerprint = _fingerprint(data_path) if data_path.is_dir() else None
    cache = data_path / CACHE_NAME
    arrays = _read_cache(cache, fingerprint)
    if arrays is None:
        with interruptible():  # Ctrl-C is never lost (see there)
            arrays = _decode(name, root, data_path, progress)
        upright = name.startswith("emnist") and builder.info.metadata is not None and (
            builder.info.metadata.get(ORIENTATION_KEY) == "upright")
        if name.startswith("emnist") and not upright:  # stock TFDS preparation: raw (transposed) images
            for split in ("train", "test"):
                images = arrays[f"{split}_images"]
                arrays[f"{split}_images"] = np.ascontiguousarray(images.transpose(0, 2, 1, 3))
        if fingerprint is not None and not os.access(data_path, os.W_OK):  # a read-only shared data dir
            warnings.warn(f"{cache}: cannot write the decoded cache ({data_path} is read-only); the dataset is "
                          "used as is, and each load decodes it again", stacklevel=2)
        elif fingerprint is not None:
            try:
                _write_cache(cache, fingerprint, arrays)
            except OSError as e:  # e.g. the disk is full: still usable, just not cached
                warnings.warn(f"{cache}: cannot write the decoded cache ({e}); loads will decode again",
                              stacklevel=2)
    train, val, _ = split_validation(arrays["train_images"], arrays["train_labels"], val_size, seed)
    label = builder.info.features["label"]
    return Splits(train=train, val=val, test=ArraySplit(arrays["test_images"], arrays["test_labels"]),
                  name=name, num_classes=int(label.num_classes), class_names=tuple(label.names),
                  source=prepared_source(data_path))
