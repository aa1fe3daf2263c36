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
A stand-in's record (:func:`cnn_jax.data.sources.source_record`) goes there too, as ``"cnn_jax_source"``
(:func:`prepared_source` reads it): the prepared data remember what they are.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.image_classification import mnist as _tfds_mnist

from cnn_jax.data.network import download_urls
from cnn_jax.data.sources import (
    DATASETS,
    canonical_name,
    read_provenance,
    read_source,
    source_record,
)
from cnn_jax.signals import check_interrupt

__all__ = ["FashionMnist", "Emnist", "ORIENTATION_KEY", "SOURCE_KEY", "builder_for", "default_data_dir",
           "prepared_source"]

ORIENTATION_KEY = "cnn_jax_orientation"
#: The key of a prepared dataset's ``metadata.json`` holding its stand-in record (absent: the dataset's own files).
SOURCE_KEY = "cnn_jax_source"


class _NoMissingVariantWarning(logging.Filter):
    """Drops TFDS's "Variant folder X has no dataset_info.json" for a folder that does not exist at all: it is
    logged whenever a dataset is merely not prepared yet (the usual case before preparing), and is noise in
    a one-line error. A folder that exists but lacks the file (damaged) still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (str(record.msg).startswith("Variant folder %s has no") and args
                    and not os.path.exists(os.fspath(args[0])))


logging.getLogger("absl").addFilter(_NoMissingVariantWarning())


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
        # TFDS prepares in a temporary incomplete.* folder (data_dir while this runs): ours, to clean up.
        self._cnn_incomplete = Path(os.fspath(self.data_dir))
        source = self._cnn_source if self._cnn_source is not None else self._download(dl_manager)
        arrays = read_source(self._cnn_name, source, verify=self._cnn_verify,
                             progress=lambda where: print(f"reading {where}", flush=True))
        return {split: self._generate_examples(images=images, labels=labels)
                for split, (images, labels) in arrays.items()}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):  # noqa: D401
        if self._cnn_transpose:
            images = images.transpose(0, 2, 1)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            check_interrupt()
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
        metadata = {ORIENTATION_KEY: "upright"}
        if self._cnn_source is not None and not isinstance(self._cnn_source, dict):
            record = source_record(read_provenance(self._cnn_name, self._cnn_source))
            if record is not None:
                metadata[SOURCE_KEY] = record
        info._metadata = tfds.core.MetadataDict(metadata)  # noqa: SLF001
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


def prepared_source(data_path: str | os.PathLike) -> dict | None:
    """The stand-in record a prepared dataset was made from (its ``metadata.json``), or None: the dataset's own
    files (or a preparation from before records existed, or TFDS's stock one)."""
    try:
        record = json.loads((Path(data_path) / "metadata.json").read_text()).get(SOURCE_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None
