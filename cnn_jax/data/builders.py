"""TFDS builders for ``fashion_mnist`` and ``emnist`` that need no TensorFlow.

TFDS's stock builders read their raw files with ``tf.io.gfile`` and encode PNGs with ``tf.image``. The
subclasses here keep the stock name, version, configs and features (they inherit ``_info``) but read the
raw IDX files with NumPy (:mod:`cnn_jax.data.sources`) and encode PNGs with Pillow; TFDS's own writer
then writes ``array_record`` shards + ``dataset_info.json`` exactly where ``tfds.data_source`` looks
(``<data_dir>/<name>/<config>/<version>``). They are declared with ``skip_registration=True`` so they do
not collide with the registered stock builders; reading is done by the stock builders (same files).

TFDS prepares into ``<name>/<config>/incomplete.XXXX_<version>`` and renames it into place only when
complete, so an interrupted preparation never leaves a directory that counts as prepared.

EMNIST's raw images are stored transposed (NIST's convention; TFDS's stock builder keeps them so). We
transpose once here, so the prepared images are upright, and record ``{"cnn_jax_orientation":
"upright"}`` in the dataset's ``metadata.json`` so that readers can tell it from a stock preparation.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
from tensorflow_datasets.image_classification import mnist as _tfds_mnist

from cnn_jax.data.sources import (
    DATASETS,
    DatasetNotFoundError,
    DataSourceError,
    canonical_name,
    find_source,
    read_source,
)

__all__ = ["FashionMnist", "Emnist", "MIRROR_ENV", "ORIENTATION_KEY", "builder_for", "default_data_dir",
           "download_urls", "not_found_message", "prepare", "unreachable"]

ORIENTATION_KEY = "cnn_jax_orientation"


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (TFDS's own rule)."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(data_dir).expanduser()


def _png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``(28, 28)`` uint8 image (Pillow; TFDS would use ``tf.image.encode_png``)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


MIRROR_ENV = "CNN_JAX_DATA_MIRROR"


def download_urls(urls: tuple[str, ...]) -> tuple[str, ...]:
    """``urls``, or the same file names under ``$CNN_JAX_DATA_MIRROR`` (a base URL) when it is set."""
    base = os.environ.get(MIRROR_ENV)
    if not base:
        return urls
    return tuple(urllib.parse.urljoin(base.rstrip("/") + "/", url.rsplit("/", 1)[1]) for url in urls)


def unreachable(urls: tuple[str, ...], timeout: float = 5.0) -> str | None:
    """Why the hosts serving ``urls`` cannot be reached (name lookup included), within ``timeout`` seconds
    per host; None when they can. The attempt runs in a daemon thread (a name lookup ignores socket timeouts),
    so a lookup that hangs delays neither the answer nor the interpreter's exit."""
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        outcome: list[BaseException | None] = []

        def attempt(host=parts.hostname, port=port, outcome=outcome) -> None:
            try:
                socket.create_connection((host, port), timeout).close()
                outcome.append(None)
            except OSError as e:
                outcome.append(e)

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(timeout)
        if not outcome:
            return f"cannot reach {parts.hostname}:{port} within {timeout:.0f} s (no network?)"
        if outcome[0] is not None:
            return f"cannot reach {parts.hostname}:{port} ({outcome[0]}; no network?)"
    return None


class _TfFreeMixin:
    """Reads raw files from ``source`` (dir, zip, or None = TFDS download manager), no TensorFlow."""

    _cnn_name: str
    _cnn_transpose = False

    def __init__(self, *, source: str | os.PathLike | None = None, verify: bool = True, **kwargs):
        self._cnn_source = source
        self._cnn_verify = verify
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls):  # the stock builder's registered checksums (url_checksums/<name>.txt)
        return tfds.core.utils.tfds_path() / "url_checksums" / f"{cls.name}.txt"

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
        """The registered checksums, for the official URLs and for the same files on a mirror."""
        infos = tfds.download.checksums.load_url_infos(cls._checksums_path)
        return {**infos, **dict(zip(download_urls(tuple(infos)), infos.values(), strict=True))}

    def _download(self, dl_manager) -> str | dict[str, str]:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        source = self._cnn_source if self._cnn_source is not None else self._download(dl_manager)
        arrays = read_source(self._cnn_name, source, verify=self._cnn_verify,
                             progress=lambda where: print(f"reading {where}", flush=True))
        return {split: self._generate_examples(images=images, labels=labels)
                for split, (images, labels) in arrays.items()}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):  # noqa: D401
        if self._cnn_transpose:
            images = images.transpose(0, 2, 1)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"image": _png(np.ascontiguousarray(image)), "label": int(label)}


class FashionMnist(_TfFreeMixin, _tfds_mnist.FashionMNIST, skip_registration=True):
    """``fashion_mnist`` (same version/features as TFDS's), prepared without TensorFlow."""

    name = "fashion_mnist"
    _cnn_name = "fashion_mnist"

    def _download(self, dl_manager):
        spec = DATASETS[self._cnn_name]
        urls = dict(zip(spec.files, download_urls(spec.urls), strict=True))
        return {kind: os.fspath(p) for kind, p in dl_manager.download(urls).items()}


class Emnist(_TfFreeMixin, _tfds_mnist.EMNIST, skip_registration=True):
    """``emnist`` (same configs/version/features as TFDS's), prepared without TensorFlow, upright images.

    Only the ``digits`` config has a raw-file spec here (:data:`cnn_jax.data.sources.DATASETS`).
    """

    name = "emnist"
    _cnn_transpose = True

    @property
    def _cnn_name(self) -> str:  # type: ignore[override]
        return f"emnist/{self.builder_config.name}"

    def _info(self):
        info = super()._info()
        info._metadata = tfds.core.MetadataDict({ORIENTATION_KEY: "upright"})  # noqa: SLF001
        return info

    def _download(self, dl_manager):
        return os.fspath(dl_manager.download(download_urls((self.URL,))[0]))


def builder_for(name: str, data_dir: str | os.PathLike | None = None, **kwargs) -> tfds.core.DatasetBuilder:
    """Our TF-free builder for ``name`` (alias accepted), writing array_record under ``data_dir``."""
    name = canonical_name(name)
    common = dict(data_dir=os.fspath(default_data_dir(data_dir)), file_format="array_record", **kwargs)
    if name == "fashion_mnist":
        return FashionMnist(**common)
    return Emnist(config=name.split("/", 1)[1], **common)


def not_found_message(name: str, data_path: Path, tried_local: list[str], download: str) -> str:
    """The message for a dataset that is neither prepared, local, nor downloadable; ``download`` says what
    became of the download (not allowed, or why it failed)."""
    spec = DATASETS[canonical_name(name)]
    lines = [f"dataset {spec.name} is not available. Tried:",
             f"  - a prepared copy in {data_path} (data dir from the data_dir argument / --data-dir, "
             "else $TFDS_DATA_DIR, else ~/tensorflow_datasets): not there"]
    lines += [f"  - raw files in {d}: not there" for d in tried_local] or [
        "  - raw files: no source_dir / --from given and no default location for this dataset"]
    lines.append(f"  - download: {download}")
    lines.append("Get it one of these ways:")
    if spec.apt:
        lines.append(f"  - apt-get install {spec.apt}   (its files are then found automatically)")
    lines.append("  - fetch by hand: " + " ".join(spec.urls))
    lines.append(f"    then: python -m cnn_jax.data prepare {spec.name} --from DIR [--data-dir D]"
                 "   (or cnn_jax.data.load(..., source_dir=DIR))")
    lines.append("  - on a machine with network access, the same command downloads it (checksummed; or set "
                 f"${MIRROR_ENV} to a mirror's base URL)")
    return "\n".join(lines)


def prepare(name: str, *, source_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None, download: bool = True,
            verify: bool = True) -> Path:
    """Prepare ``name`` as array_record under ``data_dir``; returns the prepared directory.

    Already prepared: returned as is (no reading, no network). Else the raw files are taken from
    ``source_dir`` (directory or, for EMNIST, NIST's ``gzip.zip``), else from the dataset's default
    location (Debian's ``/usr/share/datasets/fashion-mnist``), else downloaded through TFDS's download
    manager with the registered checksums (from ``$CNN_JAX_DATA_MIRROR`` when set) unless
    ``download=False``; otherwise (or when the hosts cannot be reached within seconds)
    :class:`DatasetNotFoundError`. Bad raw files raise
    :class:`DataSourceError`/``IdxError`` naming the file. ``verify=False`` skips checksums and expected
    counts (synthetic/test data).
    """
    spec = DATASETS[canonical_name(name)]
    probe = builder_for(spec.name, data_dir)
    if probe.is_prepared():
        return Path(probe.data_path)
    source = find_source(spec.name, source_dir)
    if source is None:
        why = "not allowed (--no-download / download=False)" if not download else unreachable(
            download_urls(spec.urls))
        if why:
            raise DatasetNotFoundError(not_found_message(spec.name, Path(probe.data_path),
                                                         list(spec.default_dirs), why))
        print(f"{spec.name}: downloading {', '.join(download_urls(spec.urls))} (TFDS's download manager, "
              "registered checksums; --no-download turns this off)", flush=True)
    builder = builder_for(spec.name, data_dir, source=source, verify=verify)
    try:
        builder.download_and_prepare(file_format="array_record", download_config=tfds.download.DownloadConfig(
            try_download_gcs=False, force_checksums_validation=source is None))
    except tfds.download.DownloadError as e:  # e.g. a 404, or the connection dropped
        raise DatasetNotFoundError(not_found_message(spec.name, Path(probe.data_path), list(spec.default_dirs),
                                                     f"failed ({str(e).strip().splitlines()[0][:200]})")) from None
    except NonMatchingChecksumError as e:
        raise DataSourceError(f"a downloaded file of {spec.name} failed its registered checksum "
                              f"({str(e).strip().splitlines()[0][:200]}); nothing was prepared: the server "
                              "(or a proxy/mirror) sent other bytes, try again later or fetch the files by hand "
                              "(--from DIR)") from None
    path = Path(builder.data_path)
    if not builder.is_prepared():  # pragma: no cover - TFDS renames only on success
        raise DataSourceError(f"{path}: preparation did not complete")
    return path
