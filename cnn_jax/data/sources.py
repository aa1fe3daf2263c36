"""Raw dataset files: where to find them, how to read and validate them.

Everything here is plain NumPy + the standard library (no TFDS, no TensorFlow). The readers return
``{"train": (images, labels), "test": (images, labels)}`` with ``images`` uint8 ``(N, 28, 28)`` in the
file's own orientation and ``labels`` int64 ``(N,)``. Every failure raises :class:`DataSourceError`
(or :class:`~cnn_jax.data.idx.IdxError`, both ``ValueError``) naming the offending file.

A *stand-in* (:mod:`cnn_jax.data.standin`) is laid out like NIST's files and carries a ``STAND-IN.json``
beside them that says what it really is (:func:`read_provenance`); its own checksums and counts then replace
NIST's, and :func:`source_record` is what travels with the prepared data so that it is never labelled EMNIST.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnn_jax.data.idx import gunzip, parse_idx

__all__ = [
    "DATASETS",
    "DataDirError",
    "DataSourceError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "STANDIN_KIND",
    "STANDIN_MEMBER",
    "canonical_name",
    "find_source",
    "read_provenance",
    "read_source",
    "source_label",
    "source_record",
]

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]
_KINDS = ("train_images", "train_labels", "test_images", "test_labels")


class DataSourceError(ValueError):
    """A raw file that is missing, corrupt, inconsistent or fails its checksum."""


class DataDirError(DataSourceError):
    """The TFDS data dir cannot be used: not a folder, unreadable, or not writable when something must be
    written there (preparing a dataset); the message names the folder, the problem and the fix."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is neither prepared, nor found locally, nor allowed/able to be downloaded."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What we know about one dataset's raw files.

    ``files`` maps a kind (``train_images``...) to the IDX gzip file name; ``sha256`` (optional) maps the
    same kinds to the SHA-256 of the *decompressed* IDX bytes (gzip headers differ between mirrors, e.g.
    Debian's ``dataset-fashion-mnist`` vs. upstream, the content does not). ``counts`` is the expected
    ``(train, test)`` size; ``zip_name``/``zip_member_dir`` describe an archive holding the files.
    """

    name: str
    files: dict[str, str]
    counts: tuple[int, int]
    sha256: dict[str, str] | None = None
    zip_name: str | None = None
    zip_member_dir: str = ""
    zip_sha256: str | None = None
    zip_size: int | None = None
    default_dirs: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    apt: str | None = None


_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_EMNIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"

DATASETS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        files={
            "train_images": "train-images-idx3-ubyte.gz",
            "train_labels": "train-labels-idx1-ubyte.gz",
            "test_images": "t10k-images-idx3-ubyte.gz",
            "test_labels": "t10k-labels-idx1-ubyte.gz",
        },
        counts=(60000, 10000),
        # SHA-256 of the decompressed IDX files (computed from Debian's dataset-fashion-mnist, whose
        # content is identical to upstream's; only the gzip headers differ).
        sha256={
            "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        default_dirs=("/usr/share/datasets/fashion-mnist",),
        urls=tuple(_FASHION_URL + f for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")),
        apt="dataset-fashion-mnist",
    ),
    "emnist/digits": DatasetSpec(
        name="emnist/digits",
        files={
            "train_images": "emnist-digits-train-images-idx3-ubyte.gz",
            "train_labels": "emnist-digits-train-labels-idx1-ubyte.gz",
            "test_images": "emnist-digits-test-images-idx3-ubyte.gz",
            "test_labels": "emnist-digits-test-labels-idx1-ubyte.gz",
        },
        counts=(240000, 40000),
        zip_name="gzip.zip",
        zip_member_dir="gzip/",
        # TFDS's registered checksum of NIST's gzip.zip (url_checksums/emnist.txt).
        zip_sha256="fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e",
        zip_size=561753746,
        urls=(_EMNIST_URL,),
    ),
}

_ALIASES = {
    "fashion_mnist": "fashion_mnist", "fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
    "emnist/digits": "emnist/digits", "emnist_digits": "emnist/digits", "emnist-digits": "emnist/digits",
}


def canonical_name(name: str) -> str:
    """The TFDS name for ``name`` (``fashion_mnist``, ``emnist/digits``); aliases accepted."""
    key = name.strip().lower().split(":")[0]
    if key not in _ALIASES:
        raise ValueError(f"unknown dataset {name!r}; known: fashion_mnist, emnist/digits "
                         f"(aliases: {', '.join(sorted(_ALIASES))})")
    return _ALIASES[key]


# ------------------------------------------------------------------------------------------ finding
def _candidates(directory: Path, fname: str) -> list[Path]:
    stem = fname[:-3] if fname.endswith(".gz") else fname
    return [directory / fname, directory / stem, directory / "gzip" / fname, directory / "gzip" / stem]


def find_source(name: str, source_dir: str | os.PathLike | None) -> Path | None:
    """A directory (or zip file) holding ``name``'s raw files, or ``None``.

    ``source_dir`` given: it must hold the files (else :class:`DataSourceError` listing what is missing).
    Not given: the dataset's default locations (e.g. Debian's ``/usr/share/datasets/fashion-mnist``) are
    tried and ``None`` returned when none has the files.
    """
    spec = DATASETS[canonical_name(name)]
    if source_dir is not None:
        path = Path(source_dir).expanduser()
        if not path.exists():
            raise DataSourceError(f"{path}: no such file or directory (given as the {spec.name} source)")
        if path.is_file():
            if spec.zip_name is None:
                raise DataSourceError(f"{path}: {spec.name} is read from a directory of IDX files "
                                      f"({', '.join(spec.files.values())}), not a single file")
            return path
        if _has_files(spec, path):
            return path
        missing = [f for f in spec.files.values() if not any(p.exists() for p in _candidates(path, f))]
        also = f" and no {spec.zip_name}" if spec.zip_name else ""
        raise DataSourceError(f"{path}: missing {spec.name} files {', '.join(missing)}{also}")
    for d in spec.default_dirs:
        if Path(d).is_dir() and _has_files(spec, Path(d)):
            return Path(d)
    return None


def _has_files(spec: DatasetSpec, directory: Path) -> bool:
    if spec.zip_name and (directory / spec.zip_name).is_file():
        return True
    return all(any(p.exists() for p in _candidates(directory, f)) for f in spec.files.values())


# ------------------------------------------------------------------------------------------ stand-ins
#: The file, beside NIST's in a stand-in (``gzip/STAND-IN.json`` in its zip), that says what it is.
STANDIN_MEMBER = "STAND-IN.json"
#: Its ``kind``.
STANDIN_KIND = "cnn_jax.stand-in"
_STANDIN_FORMAT = 1


def _locate(spec: DatasetSpec, source: Path) -> tuple[Path | None, Path | None]:
    """``(zip file, None)`` or ``(None, folder of IDX files)``: where :func:`read_source` reads ``source``."""
    if source.is_file():
        return source, None
    if spec.zip_name and not all(any(p.exists() for p in _candidates(source, f)) for f in spec.files.values()):
        return source / spec.zip_name, None
    return None, source


def _check_provenance(record: Any, spec: DatasetSpec, where: str) -> dict[str, Any]:
    fix = (f"build the stand-in again (python -m cnn_jax.data stand-in {spec.name} --out DIR) or give "
           f"{spec.name}'s own files")
    if not isinstance(record, dict) or record.get("kind") != STANDIN_KIND:
        raise DataSourceError(f"{where}: not a cnn_jax stand-in record (no \"kind\": \"{STANDIN_KIND}\"); {fix}")
    if record.get("format") != _STANDIN_FORMAT:
        raise DataSourceError(f"{where}: stand-in record format {record.get('format')!r}, this cnn_jax reads "
                              f"{_STANDIN_FORMAT}; {fix}")
    if record.get("stands_in_for") != spec.name:
        raise DataSourceError(f"{where}: a stand-in for {record.get('stands_in_for')!r}, not {spec.name}; {fix}")
    sha, counts = record.get("sha256"), record.get("counts")
    ok = (isinstance(record.get("label"), str) and record["label"]
          and isinstance(sha, dict) and set(sha) == set(spec.files)
          and all(isinstance(v, str) and len(v) == 64 for v in sha.values())
          and isinstance(counts, list) and len(counts) == 2 and all(isinstance(c, int) and c > 0 for c in counts))
    if not ok:
        raise DataSourceError(f"{where}: incomplete stand-in record (needs label, sha256 of {', '.join(spec.files)} "
                              f"and counts); {fix}")
    return record


def read_provenance(name: str, source: str | os.PathLike | dict) -> dict[str, Any] | None:
    """The stand-in record (``STAND-IN.json``) of ``name``'s raw files at ``source``, or None for files that
    are not a stand-in (NIST's own, a download, ``{kind: path}``) or cannot be read (:func:`read_source` says why).
    A malformed record raises :class:`DataSourceError`."""
    if isinstance(source, dict):
        return None
    spec = DATASETS[canonical_name(name)]
    zip_path, folder = _locate(spec, Path(source).expanduser())
    if folder is not None:
        path = next((p for p in (folder / STANDIN_MEMBER, folder / "gzip" / STANDIN_MEMBER) if p.is_file()), None)
        if path is None:
            return None
        where, raw = str(path), path.read_bytes()
    else:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                names = set(zf.namelist())
                member = next((m for m in (spec.zip_member_dir + STANDIN_MEMBER, STANDIN_MEMBER) if m in names), None)
                if member is None:
                    return None
                where, raw = f"{zip_path}:{member}", zf.read(member)
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError):
            return None
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataSourceError(f"{where}: unreadable stand-in record ({type(e).__name__}); build the stand-in "
                              f"again (python -m cnn_jax.data stand-in {spec.name} --out DIR)") from None
    return _check_provenance(record, spec, where)


def source_record(provenance: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a prepared dataset (and a run) records of a stand-in: its label, what it stands in for, where it came
    from, its split and a fingerprint of its content (SHA-256 over its files' SHA-256); None for the dataset's
    own files."""
    if provenance is None:
        return None
    digest = hashlib.sha256(json.dumps(provenance["sha256"], sort_keys=True).encode()).hexdigest()
    return {"kind": "stand-in", "label": provenance["label"], "stands_in_for": provenance["stands_in_for"],
            "origin": provenance.get("origin"), "split": provenance.get("split"), "counts": provenance["counts"],
            "fingerprint": digest}


def source_label(name: str, record: dict[str, Any] | None) -> str:
    """How to name the data to a user: a stand-in's label, else the dataset's TFDS name."""
    return record["label"] if record else canonical_name(name)


# ------------------------------------------------------------------------------------------ reading
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_members(spec: DatasetSpec, source: Path | dict[str, Path],
                  verify: bool) -> dict[str, tuple[str, bytes]]:
    """``{kind: (where, decompressed IDX bytes)}`` from a directory, a zip archive or ``{kind: path}``."""
    if isinstance(source, dict):  # {kind: path}, e.g. from TFDS's download manager
        out = {}
        for kind in spec.files:
            path = Path(source[kind])
            out[kind] = (str(path), gunzip(path.read_bytes(), str(path)))
        return out
    zip_path, _ = _locate(spec, source)  # a folder without the IDX files: find_source said the zip is there
    out = {}
    if zip_path is not None:
        if verify and spec.zip_sha256 and zip_path.stat().st_size == spec.zip_size:
            digest = _sha256_file(zip_path)
            if digest != spec.zip_sha256:
                raise DataSourceError(f"{zip_path}: checksum mismatch (sha256 {digest}, expected "
                                      f"{spec.zip_sha256}); fetch it again from {spec.urls[0]}")
        try:
            with zipfile.ZipFile(zip_path) as zf:
                names = set(zf.namelist())
                for kind, fname in spec.files.items():
                    member = next((m for m in (spec.zip_member_dir + fname, fname) if m in names), None)
                    if member is None:
                        raise DataSourceError(
                            f"{zip_path}: zip has no member {spec.zip_member_dir + fname} (expected NIST's "
                            f"layout: {', '.join(spec.zip_member_dir + f for f in spec.files.values())})")
                    where = f"{zip_path}:{member}"
                    try:
                        raw = zf.read(member)
                    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
                        raise DataSourceError(f"{where}: cannot read zip member ({e})") from e
                    out[kind] = (where, gunzip(raw, where))
        except zipfile.BadZipFile as e:
            raise DataSourceError(f"{zip_path}: not a valid zip file ({e})") from e
        return out
    for kind, fname in spec.files.items():
        path = next(p for p in _candidates(source, fname) if p.exists())
        out[kind] = (str(path), gunzip(path.read_bytes(), str(path)))
    return out


def read_source(name: str, source: str | os.PathLike | dict[str, str | os.PathLike], *, verify: bool = True,
                progress: Callable[[str], None] | None = None) -> Arrays:
    """Read and validate ``name``'s raw train/test files from ``source`` (directory or zip).

    ``verify=True`` checks the decompressed content's SHA-256 where known (Fashion-MNIST), the official
    zip's registered SHA-256 (EMNIST, when the zip has the official size) and the expected example
    counts; for a stand-in (:func:`read_provenance`) the SHA-256 and counts its record gives instead.
    ``verify=False`` (tests, custom data) keeps only the structural checks (magic numbers, shapes,
    image/label counts agree, labels in range).
    """
    spec = DATASETS[canonical_name(name)]
    provenance = read_provenance(spec.name, source)
    checksums = provenance["sha256"] if provenance else spec.sha256
    counts = tuple(provenance["counts"]) if provenance else spec.counts
    what = f"{spec.name}'s" if provenance is None else f"the stand-in's ({provenance['label']})"
    members = _load_members(spec, source if isinstance(source, dict) else Path(source).expanduser(),
                            verify and provenance is None)
    arrays: dict[str, np.ndarray] = {}
    for kind, (where, data) in members.items():
        if progress:
            progress(where)
        if verify and checksums:
            digest = hashlib.sha256(data).hexdigest()
            if digest != checksums[kind]:
                raise DataSourceError(f"{where}: checksum mismatch (sha256 of decompressed content {digest}, "
                                      f"expected {checksums[kind]}); the file is corrupt or not "
                                      f"{what} {kind.replace('_', ' ')}")
        arr = parse_idx(data, where)
        want_ndim = 3 if kind.endswith("images") else 1
        if arr.ndim != want_ndim or arr.dtype != np.uint8 or (want_ndim == 3 and arr.shape[1:] != (28, 28)):
            what = "(N, 28, 28) images" if want_ndim == 3 else "(N,) labels"
            raise DataSourceError(f"{where}: expected uint8 {what}, got {arr.dtype} {arr.shape}")
        arrays[kind] = arr
    out: Arrays = {}
    for split, count in zip(("train", "test"), counts, strict=True):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DataSourceError(f"{members[f'{split}_images'][0]} has {len(images)} images but "
                                  f"{members[f'{split}_labels'][0]} has {len(labels)} labels")
        if verify and len(images) != count:
            raise DataSourceError(f"{members[f'{split}_images'][0]}: {len(images)} examples, expected "
                                  f"{count} for {what} {split} split")
        if labels.size and labels.max() >= 10:
            raise DataSourceError(f"{members[f'{split}_labels'][0]}: label {labels.max()} "
                                  "out of range [0, 10)")
        out[split] = (images, labels.astype(np.int64))
    return out

