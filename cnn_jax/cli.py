"""The experiment scripts' command line: a preset, overridden field by field, trained in a run folder.

Every :class:`~cnn_jax.config.Config` field is a flag by its dotted name (``--train.lr 3e-3``,
``--model.widths 32 64``, ``--run.keep 4``); the short flags users type (``--lr``, ``--epochs``,
``--batch-size``, ...; :data:`~cnn_jax.config.FLAGS`) are the same options. A run folder is
``<workdir>/<run>`` (default ``checkpoints/<dataset>/<preset>``); the same command resumes it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
import sys
import typing
from pathlib import Path
from typing import Any

from cnn_jax import parallel
from cnn_jax.config import CHOICES, PRESETS, Config, ConfigError, ModelConfig, field_types, flag

__all__ = ["ArgumentParser", "build_parser", "parse", "main", "run", "script_command", "digits_plan", "DigitsPlan",
           "STANDIN_RUNS", "STANDIN_VAL_SIZE"]

EXIT_SIGNAL = {"SIGTERM": 143, "SIGINT": 130}
_HELP = {"data.augment": "translate crop flip erase; no names: none", "data.tta": "flip; no names: none",
         "train.microbatch": "gradient accumulation slice (CPU speed); 0: off; auto (default): 16 on CPU, 32 with "
                             "batch norm", "train.batch_size": "global batch",
         "data.download": "download the dataset when it is neither prepared nor found locally (default)",
         "run.progress": "a progress bar on a terminal (plain lines otherwise)",
         "run.parallelism": "none: one device; sharded: jit over a mesh of every device of every host; pmap",
         "train.ema": "decay of a moving average of the weights used to evaluate and predict (none: off)",
         "train.bn_bias_lr": "learning rate of the batch-norm biases, a multiple of --lr (default 1)",
         "train.lookahead": "sync period k: every k steps the slow weights step halfway to the weights, which "
                            "restart from them (none: off)",
         "run.test": "evaluate the test split at the end (default); --no-test for recipe searches"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a mistake is one line, ``PROG: error: MESSAGE (PROG --help lists the flags)``, exit 2:
    the usage (45 lines for training) only with ``--help``. Every command of cnn_jax parses with it (subcommands
    too: argparse makes them of the parent's class)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the flags)\n")


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def _optional(tp):
    def convert(text: str):
        return None if text.lower() == "none" else tp(text)
    convert.__name__ = tp.__name__
    return convert


def _microbatch(text: str) -> int | str | None:
    if text.lower() in ("auto", "none"):
        return text.lower() if text.lower() == "auto" else None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (0: off) or auto, got {text!r}") from None


def script_command(dataset: str) -> str:
    """The experiment script that trains ``dataset`` (``experiments/fashion_mnist.py``)."""
    return f"experiments/{dataset.replace('/', '_')}.py"


def build_parser(dataset: str, prog: str | None = None) -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=prog or script_command(dataset), description=f"Train a CNN on {dataset}; resumable. "
        "Every config field is a flag by its dotted name; the short flags are the same options.")
    p.add_argument("--preset", default="lab", help=f"named config to start from: {sorted(PRESETS)} (default lab)")
    p.add_argument("--workdir", default=None, help=f"parent folder of runs (default checkpoints/{dataset})")
    p.add_argument("--run", default=None, help="run name (default: the preset's)")
    p.add_argument("--resume", action="store_true", help="require resuming (error if nothing to resume)")
    p.add_argument("--new-run", action="store_true",
                   help="start a fresh run <run>-N beside a run with checkpoints or results")
    for section in ("data", "model", "train", "run"):
        g = p.add_argument_group(f"{section} (default: the preset's)")
        for name, tp in field_types(section).items():
            key = f"{section}.{name}"
            if key == "data.dataset":
                continue  # the script's
            alias = flag(key)
            names = [f"--{key}"] + ([alias] if tp is not bool else [])
            optional = type(None) in typing.get_args(tp)  # X | None
            base = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
            kw: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": _HELP.get(key)}
            if typing.get_origin(base) is tuple:
                elem = typing.get_args(base)[0]
                kw.update(nargs="*" if elem is str else "+", type=elem, metavar=elem.__name__.upper())
            elif base is bool:
                kw.update(type=_bool, metavar="BOOL")
            elif key == "train.microbatch":
                kw.update(type=_microbatch, metavar="N|auto")
            else:
                kw.update(type=_optional(base) if optional else base)
                if key in CHOICES:
                    kw["choices"] = CHOICES[key]
                else:
                    kw["metavar"] = name.upper()
            g.add_argument(*names, **kw)
            if tp is bool:  # a pair of switches: --download / --no-download, --progress / --no-progress, ...
                g.add_argument(alias, dest=key, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=_HELP.get(key))
    return p


def parse(dataset: str, argv: list[str] | None = None, prog: str | None = None
          ) -> tuple[Config, Path, argparse.Namespace]:
    """``(config, run folder, args)`` from the command line, checked before any work (one-line errors);
    ``prog``: the command's name in messages (default: the experiment script's)."""
    from cnn_jax.data import FLIPS, canonical_name, flips_allowed
    from cnn_jax.run_folder import has_checkpoints, has_run

    parser = build_parser(dataset, prog)
    args = parser.parse_args(argv)
    if args.preset not in PRESETS:
        parser.error(f"--preset: unknown preset {args.preset!r}; choose from {sorted(PRESETS)}")
    overrides = {k: v for k, v in vars(args).items() if "." in k}
    try:
        dataset = canonical_name(dataset)
        config = PRESETS[args.preset]
        views = {k: tuple(v for v in getattr(config.data, k) if flips_allowed(dataset) or v not in FLIPS)
                 for k in ("augment", "tta")}  # a preset's flips never apply to digits
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=dataset, **views))
        if overrides.get("model.name", config.model.name) != config.model.name:  # another model: its defaults
            config = dataclasses.replace(config, model=ModelConfig(name=overrides["model.name"]))
        config = config.override(overrides)
    except (ConfigError, ValueError) as e:
        parser.error(str(e))
    workdir = Path(args.workdir or Path("checkpoints") / dataset.replace("/", "_"))
    from cnn_jax.files import unwritable

    if problem := unwritable(workdir):
        parser.error(f"--workdir {workdir}: {problem}; pick another --workdir")
    name = args.preset if args.run is None else args.run
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        parser.error(f"--run: {name!r} is not a plain name (letters, digits, '.', '_', '-'; no folders); "
                     "put folders in --workdir")
    run_dir = workdir / name
    if args.new_run and has_run(run_dir):
        base, i = run_dir, 2
        while (run_dir := base.with_name(f"{base.name}-{i}")).exists():
            i += 1
        print(f"--new-run: {base} holds a run; starting a new run in {run_dir}")
    if args.resume and not has_checkpoints(run_dir):
        parser.error(f"--resume: no checkpoints in {run_dir / 'ckpt'} to resume from")
    return config, run_dir, args


def given_flags(dataset: str, argv: list[str]) -> dict[str, Any]:
    """The flags ``argv`` sets, by their fields' names (``"data.source_dir"``, ``"workdir"``...), read by the
    training parser itself, so that its abbreviations and aliases count; ``{}`` when ``argv`` does not parse
    (training then says why)."""
    parser = build_parser(dataset)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = vars(parser.parse_args(argv))
    except SystemExit:
        return {}
    defaults = vars(parser.parse_args([]))
    return {k: v for k, v in args.items() if k not in defaults or defaults[k] != v}


def resume_command(dataset: str, argv: list[str] | None, command: list[str] | None = None) -> str:
    """The command that resumes a stopped run: ``command`` (the words that started it, e.g. ``["cnn-jax",
    "train", "--dataset", "fashion_mnist"]``) with ``argv`` when given; the process's own when it is the
    experiment script's (``argv`` None, or the process's arguments); else, for a run started from Python with
    its own flags (a benchmark, the study), ``python -m cnn_jax train --dataset <dataset>`` with those flags
    (it works wherever cnn_jax is installed)."""
    if command is not None:
        return shlex.join([*command, *(argv or [])])
    if argv is None or list(argv) == sys.argv[1:]:
        return shlex.join(["python", sys.argv[0] or script_command(dataset), *sys.argv[1:]])
    return shlex.join(["python", "-m", "cnn_jax", "train", "--dataset", dataset, *argv])


def main(dataset: str, argv: list[str] | None = None, command: list[str] | None = None) -> dict[str, Any]:
    """Train ``dataset`` from command-line flags: parse, start ``jax.distributed`` when asked or detected (before
    anything touches a device), train and evaluate. ``command``: the words that started it (its name in
    messages and in the resume hint; default: the experiment script). Errors are one line (exit 2 for flags, 1
    for data/checkpoints, 3 for a diverged run); SIGTERM/SIGINT save and exit 143/130."""
    config, run_dir, _ = parse(dataset, argv, None if command is None else shlex.join(command))
    parallel.initialize_distributed(config.run.distributed)
    import jax

    from cnn_jax.checkpoint import CheckpointError
    from cnn_jax.data import DatasetNotFoundError, DataSourceError, IdxError
    from cnn_jax.files import RunLockedError
    from cnn_jax.run_folder import has_checkpoints
    from cnn_jax.train import StoppedError, train_and_evaluate
    from cnn_jax.trainer import NonFiniteLossError

    try:
        return train_and_evaluate(config, run_dir)
    except (CheckpointError, DatasetNotFoundError, DataSourceError, IdxError, RunLockedError, ValueError) as e:
        sys.exit(f"error: {e}")
    except NonFiniteLossError as e:
        then = (f"the last good checkpoint in {run_dir / 'ckpt'} is kept. Lower --lr or add --clip, then start a "
                "new run (--new-run)") if has_checkpoints(run_dir) else \
            "no checkpoint had been saved yet, so nothing was kept. Lower --lr or add --clip and run again"
        print(f"error: {e}; {then}.", file=sys.stderr)
        raise SystemExit(3) from None
    except KeyboardInterrupt:  # Ctrl-C before training started (preparing data), or a second one while saving
        from cnn_jax.signals import close_progress_bars

        close_progress_bars()
        print("error: interrupted (Ctrl-C); what was saved before is kept: run the same command again to go on",
              file=sys.stderr)
        raise SystemExit(EXIT_SIGNAL["SIGINT"]) from None
    except StoppedError as e:
        if jax.process_index() == 0:
            print(f"{e}; resume with the same command: {resume_command(dataset, argv, command)}")
        raise SystemExit(EXIT_SIGNAL.get(e.signal, 1)) from None


def run(dataset: str, argv: list[str] | None = None, command: list[str] | None = None) -> dict[str, Any]:
    """:func:`main` for any dataset, as ``cnn-jax train`` and the experiment scripts run it. EMNIST Digits may be
    the MNIST digits stand-in (``--source-dir``): it is then named as the stand-in and its runs go to their own
    folder (``checkpoints/mnist_digits_standin/`` unless ``--workdir``), with 1,000 validation images unless
    ``--val-size`` (:func:`digits_plan`)."""
    from cnn_jax.data import canonical_name

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        digits = canonical_name(dataset) == "emnist/digits"
    except ValueError:
        digits = False  # main names the unknown dataset
    if not digits or any(a in ("-h", "--help") for a in argv):
        return main(dataset, argv, command)
    given = given_flags(dataset, argv)
    plan = digits_plan(given)
    workdir = given.get("workdir")
    full = [*argv, *plan.args, *([] if workdir else ["--workdir", str(Path("checkpoints") / plan.folder)])]
    for line in plan.lines + ([f"runs on the stand-in go to checkpoints/{plan.folder}/ (--workdir to choose)"]
                              if plan.record and not workdir else []):
        print(line)
    results = main(dataset, full, command)
    if plan.record and results.get("test_accuracy") is not None:
        print(f"{plan.label}: test accuracy {results['test_accuracy']:.4f} (not EMNIST Digits; see docs/datasets.md)")
    return results


# ------------------------------------------------------------------------ EMNIST Digits or its stand-in
#: Validation images the experiment scripts hold out of a stand-in's 8,500 training images (the presets' 5,000
#: would leave 3,500 to train on), unless a --val-size is given.
STANDIN_VAL_SIZE = 1000
#: The folder (beside ``emnist_digits``) for runs on a stand-in: never the folder of runs on NIST's files.
STANDIN_RUNS = "mnist_digits_standin"


@dataclasses.dataclass(frozen=True)
class DigitsPlan:
    """What an experiment script does for EMNIST Digits (:func:`digits_plan`)."""

    record: dict[str, Any] | None  #: the stand-in record of the data a run would use; None: NIST's own files
    args: list[str]  #: flags to add (a stand-in's validation size)
    lines: list[str]  #: what to tell the user

    @property
    def folder(self) -> str:
        """The folder (under checkpoints/) for runs on these data."""
        return STANDIN_RUNS if self.record else "emnist_digits"

    @property
    def label(self) -> str:
        return self.record["label"] if self.record else "EMNIST Digits"


def digits_plan(flags: dict[str, Any], source_dir: str | None = None) -> DigitsPlan:
    """What EMNIST Digits runs with ``flags`` (the experiment flags given, by field: ``{"data.source_dir": ...}``,
    as :func:`cnn_jax.cli.given_flags` reads them) will train on: the prepared copy (under ``data.data_dir``, else
    ``$TFDS_DATA_DIR``...) when there is one, else ``source_dir`` (default: ``data.source_dir``). On a stand-in,
    runs go to their own folder (:attr:`DigitsPlan.folder`) and hold out :data:`STANDIN_VAL_SIZE` validation
    images unless ``flags`` give ``data.val_size``."""
    from cnn_jax.data.builders import builder_for, prepared_source
    from cnn_jax.data.sources import read_provenance, source_record
    from cnn_jax.data.standin import NAME

    data_dir = flags.get("data.data_dir")
    source_dir = source_dir or flags.get("data.source_dir")
    record, prepared = None, False
    try:
        builder = builder_for(NAME, data_dir)
        if builder.is_prepared():
            record, prepared = prepared_source(builder.data_path), True
        elif source_dir is not None:
            record = source_record(read_provenance(NAME, source_dir))
    except Exception:  # noqa: BLE001 - a bad data dir or files: the run itself says what is wrong
        record = None
    if record is None:
        return DigitsPlan(None, [], [])
    args, lines = [], [f"data: {record['label']}: {record['counts'][0]:,} train / {record['counts'][1]:,} test "
                       "images, not EMNIST Digits (see docs/datasets.md)"]
    if prepared:
        where = "" if data_dir is None else f" --data-dir {data_dir}"
        lines.append(f"it is the copy prepared in {builder.data_path}; to use NIST's EMNIST Digits instead: python -m "
                     f"cnn_jax.data prepare {NAME} --from gzip.zip --replace{where}")
    if "data.val_size" not in flags:
        args = ["--val-size", str(STANDIN_VAL_SIZE)]
        lines.append(f"holding out {STANDIN_VAL_SIZE:,} of its {record['counts'][0]:,} training images for "
                     "validation (--val-size to choose)")
    return DigitsPlan(record, args, lines)
