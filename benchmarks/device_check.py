"""One device check, ready for the day an accelerator is lent: writes one JSON and prints one table.

    PYTHONPATH=. python3 benchmarks/device_check.py [--data DIR] [--preset best] [--results-dir DIR] [--budget S]
    python benchmarks/device_check.py --smoke          # CPU, tiny sizes (peers: LabCNN only): checks the script runs
    python benchmarks/device_check.py --copy-data      # copy Fashion-MNIST's four files into data/fashion-mnist

In order, within ``--budget`` seconds (default 450, under 8 minutes with the start):

1. the device, as JAX and PyTorch see it: kind, count, memory, jax/jaxlib/plugin versions, the XLA flags and JAX
   settings in force, and the per-backend rules (:func:`cnn_jax.backend.describe`); a float32 matmul's error
   against float64 under our rule and under XLA's default precision (TF32 shows here);
2. the backend-agnostic tests (:data:`DEVICE_TESTS`: ops against their oracles, models, augmentations, the rules,
   the train step, resume and checkpoint restore) run on this device by pytest, pass/fail per test;
3. time to 94% test accuracy of a Fashion-MNIST preset (``--preset``, default ``best``), one seed, through the
   :class:`~cnn_jax.trainer.Trainer` API on the raw IDX files (``--data``), the compile time apart; then that
   model saved as a run folder, loaded with ``cnn_jax.load`` and its predictions checked against the evaluation;
4. ``peers.py`` rows: LabCNN and the BN-CNN (48/96/192) at batch 128 and 1024, cnn_jax float32 and bf16 with
   their defaults (and float32 under XLA's default matmul precision at the larger batch), against PyTorch eager
   float32 and bf16 autocast on CUDA where torch sees a CUDA device (else skipped, with a note).

Nothing here needs TensorFlow, tensorflow-datasets, array_record or tensorboardX. Writes
``<results-dir>/<backend>-<date>.json`` (atomically, after every part, so a check cut short keeps what it
measured), the table beside it (``.txt``) and the tests' output (``-pytest.log``); ``--smoke`` writes to
``outputs/device_check/`` unless told. A part that fails is recorded and the check goes on.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))  # cnn_jax from this checkout, also without PYTHONPATH

import jax  # noqa: E402
import numpy as np  # noqa: E402
import peers  # noqa: E402 - benchmarks/ (the script's folder)

from cnn_jax.files import write_json, write_text  # noqa: E402

if TYPE_CHECKING:
    from cnn_jax.config import Config
    from cnn_jax.trainer import Trainer

#: Where Fashion-MNIST's raw files are looked for, in order: Debian's package, then the folder that
#: ``--copy-data`` fills (git-ignored, so that it can be carried to a machine that has no copy).
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CARRIED_DIR = ROOT / "data" / "fashion-mnist"
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
THRESHOLD = 0.94

#: The tests that hold on any backend and need no TFDS (pytest node ids or files), and those left out.
DEVICE_TESTS = (
    "tests/test_ops.py", "tests/test_models.py", "tests/test_augment.py", "tests/test_backend.py",
    "tests/test_train.py",
    "tests/test_checkpoint.py::test_retention_keeps_latest_n_and_best",
    "tests/test_checkpoint.py::test_damaged_latest_falls_back_with_a_warning",
    "tests/test_checkpoint.py::test_content_that_decodes_but_differs_from_its_digest_is_refused",
    "tests/test_checkpoint.py::test_restore_onto_another_device_count",
)
DESELECTED = {
    "tests/test_train.py::test_microbatch_accumulation_matches_full_batch":
        "its last check needs 8 devices (tests/conftest.py's fake CPUs)",
}
SMOKE_TESTS = (
    "tests/test_ops.py::test_conv2d_matches_scipy_correlate",
    "tests/test_backend.py::test_conv_impl_follows_the_backend",
)
#: pytest-xdist workers for the device's tests where it is installed (compiling is most of their time).
WORKERS = 4
OUTCOMES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
_OUTCOME = "(?P<outcome>" + "|".join(OUTCOMES) + ")"
_RESULT_LINES = (re.compile(r"^(?P<id>\S.*?::.*?) " + _OUTCOME + r"\b"),  # pytest -v
                 re.compile(r"^\[gw\d+\] \[\s*\d+%\] " + _OUTCOME + r" (?P<id>\S.*?::.*?)\s*$"))  # with xdist

#: cnn_jax's rows beside peers.py's: float32 and bf16 with the defaults (rules included), and float32 under XLA's
#: own default matmul precision (TF32 on recent NVIDIA GPUs) at the largest batch.
LABELS = {**peers.LABELS, "jax_f32": "cnn_jax f32", "jax_bf16": "cnn_jax bf16",
          "jax_f32_xla_default": "cnn_jax f32, XLA default matmul precision", "torch_f32": "PyTorch eager f32",
          "torch_bf16": "PyTorch eager bf16 autocast"}


class CheckError(Exception):
    """Bad input: the message names the problem and the fix."""


# ----------------------------------------------------------------------------------------------- data
def has_files(folder: Path) -> bool:
    """Whether ``folder`` holds the four files."""
    return all((folder / f).is_file() for f in FILES)


def find_data(given: str | None) -> Path:
    """The folder of Fashion-MNIST's four ``*-ubyte.gz`` files: ``given``, else Debian's, else ``data/``'s."""
    if given is not None:
        folder = Path(given).expanduser()
        if not folder.is_dir():
            raise CheckError(f"--data {given}: no such folder; give the folder holding Fashion-MNIST's {FILES[0]} "
                             "and the three other *-ubyte.gz files")
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise CheckError(f"--data {given}: missing {', '.join(missing)}; copy the four Fashion-MNIST "
                             f"*-ubyte.gz files there (python benchmarks/device_check.py --copy-data)")
        return folder
    for folder in (DEBIAN_DIR, CARRIED_DIR):
        if has_files(folder):
            return folder
    raise CheckError(f"no Fashion-MNIST files in {DEBIAN_DIR} or {CARRIED_DIR}; pass --data DIR, or fill "
                     f"{CARRIED_DIR.relative_to(ROOT)} with --copy-data (from Debian's dataset-fashion-mnist)")


def copy_data(source: Path, dest: Path = CARRIED_DIR) -> Path:
    """Copy the four files from ``source`` into ``dest`` (created), to carry them to a machine without them."""
    if source.resolve() == dest.resolve():
        raise CheckError(f"--copy-data: {dest} is already where the files are copied to; pass --data with "
                         "another folder")
    dest.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copyfile(source / f, dest / f)
    return dest


def read_fashion(folder: Path, config: Config, verify: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train", "val", "test"}``: uint8 NHWC images and int32 labels from the raw IDX files, split and
    limited as a run of ``config`` is (``data.val_size`` with ``train.seed``; ``data.limit``)."""
    from cnn_jax.data.sources import read_source
    from cnn_jax.data.splits import split_validation

    raw = read_source("fashion_mnist", folder, verify=verify)
    (x, y), (tx, ty) = raw["train"], raw["test"]
    try:
        train, val, _ = split_validation(x[..., None], y.astype(np.int32), config.data.val_size, config.train.seed)
    except ValueError as e:  # the size out of range
        raise CheckError(f"{e}; set it with --set data.val_size=N") from None
    train, val = (train.images, train.labels), (val.images, val.labels)
    test = (tx[..., None], ty.astype(np.int32))
    if config.data.limit:
        train, test = (tuple(a[:config.data.limit] for a in s) for s in (train, test))
    return {"train": train, "val": val, "test": test}


# --------------------------------------------------------------------------------------------- device
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_status(backend: str) -> tuple[Any, str]:
    """``(torch module or None, note)``: torch is used only where it imports and sees a CUDA device and JAX's
    backend is a GPU."""
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - an optional package that fails to import in any way is skipped
        return None, f"PyTorch rows skipped: torch does not import ({type(e).__name__}: {e})"
    if not torch.cuda.is_available():
        return None, f"PyTorch rows skipped: torch {torch.__version__} sees no CUDA device"
    if backend != "gpu":
        return None, f"PyTorch rows skipped: JAX's backend is {backend}, not the GPU torch sees"
    b = torch.backends
    return torch, (f"torch {torch.__version__} (CUDA {torch.version.cuda}) with its defaults: cudnn.benchmark="
                   f"{b.cudnn.benchmark}, cudnn.allow_tf32={b.cudnn.allow_tf32}, "
                   f"cuda.matmul.allow_tf32={b.cuda.matmul.allow_tf32}")


def device_info() -> dict[str, Any]:
    """What this device and this JAX are, and the settings in force."""
    dev = jax.devices()[0]
    try:
        memory = dev.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend reports memory
        memory = None
    smi = None
    if shutil.which("nvidia-smi"):
        try:
            query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
            smi = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            smi = None
    plugins = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()
               if (d.metadata["Name"] or "").lower().replace("_", "-").startswith(("jax-cuda", "jax-rocm", "libtpu"))}
    env_prefixes = ("XLA_", "JAX_", "TF_", "CUDA_", "NVIDIA_TF32", "LIBTPU", "TPU_")
    config = {k: getattr(jax.config, k, None) for k in ("jax_default_matmul_precision", "jax_enable_x64",
                                                         "jax_platforms", "jax_compilation_cache_dir")}
    return {
        "backend": jax.default_backend(), "platform": getattr(getattr(dev, "client", None), "platform", dev.platform),
        "device_kind": dev.device_kind, "device_count": jax.device_count(), "memory_stats": memory,
        "nvidia_smi": smi, "jax": jax.__version__, "jaxlib": _version("jaxlib"), "plugins": plugins,
        "flax": _version("flax"), "optax": _version("optax"), "orbax_checkpoint": _version("orbax-checkpoint"),
        "numpy": np.__version__, "torch": _version("torch"), "python": platform.python_version(),
        "host": platform.node(), "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(env_prefixes)},
        "jax_config": config,
    }


def matmul_probe(n: int = 512) -> dict[str, float]:
    """Relative error (Frobenius) of an ``n x n`` float32 matmul against float64: through ``cnn_jax.ops`` (our
    rule) and through ``lax.dot_general`` at XLA's default precision (TF32 on recent NVIDIA GPUs)."""
    from jax import lax

    from cnn_jax.ops import dot_general

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    dims = (((1,), (0,)), ((), ()))
    runs = {"cnn_jax_rule": jax.jit(lambda a, b: dot_general(a, b, dims)),
            "xla_default": jax.jit(lambda a, b: lax.dot_general(a, b, dims, precision=lax.Precision.DEFAULT))}
    return {k: float(np.linalg.norm(np.asarray(f(a, b), np.float64) - want) / np.linalg.norm(want))
            for k, f in runs.items()}


# ---------------------------------------------------------------------------------------------- tests
def parse_pytest(output: str) -> list[dict[str, str]]:
    """``[{"id", "outcome"}]`` from ``pytest -v`` output (one line per finished test)."""
    found = {}
    for line in output.splitlines():
        for pattern in _RESULT_LINES:
            if m := pattern.match(line.strip()):
                found[m["id"]] = m["outcome"]  # an error in teardown repeats the id: the last word wins
                break
    return [{"id": k, "outcome": v} for k, v in found.items()]


def run_tests(ids: tuple[str, ...], deselected: dict[str, str], timeout: float, log: Path | None) -> dict[str, Any]:
    """Run ``ids`` with pytest on this machine's default backend, in a child process; pass/fail per test."""
    platforms = os.environ.get("JAX_PLATFORMS")
    if platforms is None:  # tests/conftest.py defaults to CPU: name this machine's backend instead
        dev = jax.devices()[0]
        platforms = getattr(getattr(dev, "client", None), "platform", None) or jax.default_backend()
    env = {**os.environ, "JAX_PLATFORMS": platforms,
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    workers = WORKERS if importlib.util.find_spec("xdist") is not None and len(ids) > 2 else 0
    cmd = [sys.executable, "-m", "pytest", "-v", "--color=no", "-p", "no:cacheprovider", *ids,
           *(a for d in deselected for a in ("--deselect", d)), *(["-n", str(workers)] if workers else [])]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the child we started, and its own children
        out, _ = proc.communicate()
    seconds = time.perf_counter() - t
    if log is not None:
        write_text(log, out)
    results = parse_pytest(out)
    counts = {o.lower(): sum(r["outcome"] == o for r in results) for o in OUTCOMES}
    summary = next((ln.strip("= ") for ln in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed)", ln)),
                   None)
    return {"command": " ".join(cmd[1:]), "jax_platforms": platforms, "workers": workers, "selected": list(ids),
            "deselected": deselected, "returncode": proc.returncode, "timed_out": timed_out, "seconds": seconds,
            "counts": counts, "summary": summary, "results": results, "output_tail": out[-6000:]}


# ---------------------------------------------------------------------------------------------- peers
#: Why a runner could not run: ``{(model, batch, runner): "Error: message"}``.
FAILED_RUNNERS: dict[tuple[str, int, str], str] = {}


def _probed(name: str, factory: Callable[[str, int], peers.Runner]) -> Callable[[str, int], peers.Runner]:
    """``factory``, with one step run at once: a runner that cannot run here is skipped (peers.measure skips an
    ImportError) and its reason kept in :data:`FAILED_RUNNERS`, instead of stopping the check."""
    def make(model: str, batch: int) -> peers.Runner:
        try:
            run = factory(model, batch)
            run(1)
        except Exception as e:  # noqa: BLE001 - any failure of one runner is that runner's note
            why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            FAILED_RUNNERS[model, batch, name] = why
            raise ImportError(why) from e
        return run
    return make


def _xla_default_precision(model: str, batch: int) -> peers.Runner:
    inner = peers._cnn_jax(model, batch)

    def run(steps: int) -> None:
        with jax.default_matmul_precision("default"):  # traced (once) and run under XLA's own default
            inner(steps)
    return run


FACTORIES: dict[str, Callable[[str, int], peers.Runner]] = {name: _probed(name, f) for name, f in {
    "jax_f32": lambda m, b: peers._cnn_jax(m, b),
    "jax_bf16": lambda m, b: peers._cnn_jax(m, b, precision="bf16"),
    "jax_f32_xla_default": _xla_default_precision,
    "torch_f32": lambda m, b: peers._torch(m, b, bf16=False, device="cuda"),
    "torch_bf16": lambda m, b: peers._torch(m, b, bf16=True, device="cuda"),
}.items()}


def run_peers(batches: tuple[int, ...], rounds: int, window: float, deadline: float, with_torch: bool,
              models: tuple[str, ...] = ("lab", "bn")) -> dict[str, Any]:
    """peers.py's measurement for ``models`` (LabCNN and the BN-CNN) at each batch; cells left when ``deadline``
    (a ``time.perf_counter()`` value) has passed are skipped with a note."""
    rows, notes = [], []
    for model in models:
        for batch in batches:
            if time.perf_counter() > deadline:
                notes.append(f"{model} at batch {batch}: skipped, the time budget was spent")
                continue
            names = ["jax_f32", "jax_bf16"] + ["jax_f32_xla_default"] * (batch == max(batches))
            names += ["torch_f32", "torch_bf16"] if with_torch else []
            print(f"peers: {model} at batch {batch} ({', '.join(names)}) ...", flush=True)
            try:
                res = peers.measure(model, batch, rounds, window, names, FACTORIES)
            except Exception as e:  # noqa: BLE001 - a runner failing mid-measurement costs its cell only
                notes.append(f"{model} at batch {batch}: {type(e).__name__}: {e}")
                continue
            notes += [f"{model} at batch {batch}: {LABELS[n]} skipped ({FAILED_RUNNERS.get((model, batch, n), '?')})"
                      for n in names if n not in res]
            base = {k: res.get(k, {}).get("images_per_s") for k in ("torch_f32", "torch_bf16")}
            for name, r in res.items():
                v = r["images_per_s"]
                rows.append({"model": model, "batch": batch, "runner": name, "label": LABELS[name],
                             **{k: r[k] for k in ("images_per_s", "low", "high", "steps")},
                             "gflops": v * peers.train_flops(model) / 1e9,
                             "vs_torch_f32": v / base["torch_f32"] if base["torch_f32"] else None,
                             "vs_torch_bf16": v / base["torch_bf16"] if base["torch_bf16"] else None})
    return {"rounds": rounds, "window_s": window, "rows": rows, "notes": notes}


# ---------------------------------------------------------------------------------- time to accuracy
def time_to_accuracy(config: Config, data: dict[str, tuple[np.ndarray, np.ndarray]], deadline: float,
                     threshold: float = THRESHOLD) -> tuple[dict[str, Any], Trainer, Any]:
    """Train ``config`` epoch by epoch (one compiled chunk per epoch), evaluating the test split after each, until
    its accuracy reaches ``threshold``, the epochs end, or the next epoch would pass ``deadline``.

    Compile times are measured apart: the train chunk's first call runs one step (compile + a step), the first
    evaluation is run twice (compile + an evaluation, then an evaluation). ``seconds_to_threshold`` counts the
    training and evaluation calls after those, plus one step; ``with_compile`` adds the compile times.
    Returns ``(record, trainer, state)``."""
    from cnn_jax.trainer import Trainer, build_model, preprocessing

    preprocess, eval_preprocess = preprocessing(config)
    (x, y), test = data["train"], data["test"]
    model = build_model(config, len(FASHION_CLASSES), x.shape[1:])
    trainer = Trainer(model, config, len(y), x.shape[1:], preprocess, eval_preprocess)
    t = time.perf_counter()
    state = trainer.init_state()
    placed, placed_test = trainer.put_data(x, y), trainer.put_data(*test, for_eval=True)
    jax.block_until_ready((state, placed, placed_test))
    setup = time.perf_counter() - t
    spe, epochs = trainer.steps_per_epoch, config.train.epochs

    t = time.perf_counter()
    state, m = trainer.train_chunk(state, placed, 1)
    trainer.check_finite(state, m)  # syncs
    first_call = time.perf_counter() - t
    totals = (float(m["loss_sum"]), int(m["correct"]))
    history, train_s, eval_s, per_step, compile_eval = [], 0.0, 0.0, None, None
    reached, stopped = None, None
    for epoch in range(1, epochs + 1):
        steps = spe - 1 if epoch == 1 else spe
        if history and time.perf_counter() + history[-1]["train_s"] + history[-1]["eval_s"] > deadline:
            stopped = f"the time budget would be passed by epoch {epoch}"
            break
        t = time.perf_counter()
        if steps:
            state, m = trainer.train_chunk(state, placed, steps, totals if epoch == 1 else (0.0, 0))
            trainer.check_finite(state, m)
        epoch_train = time.perf_counter() - t
        if epoch == 1:
            per_step = epoch_train / steps if steps else None
        t = time.perf_counter()
        ev = trainer.evaluate(state, placed_test)
        epoch_eval = time.perf_counter() - t
        if compile_eval is None:  # the first evaluation compiled; time a second one
            t = time.perf_counter()
            ev = trainer.evaluate(state, placed_test)
            again = time.perf_counter() - t
            compile_eval, epoch_eval = max(epoch_eval - again, 0.0), again
        train_s, eval_s = train_s + epoch_train, eval_s + epoch_eval
        acc = float(ev["accuracy"])
        history.append({"epoch": epoch, "test_accuracy": acc, "test_loss": float(ev["loss"]),
                        "train_s": epoch_train, "eval_s": epoch_eval, "elapsed_s": train_s + eval_s})
        print(f"  epoch {epoch}/{epochs}: test accuracy {acc:.4f}, {epoch_train:.2f} s train + {epoch_eval:.2f} s "
              "eval", flush=True)
        if acc >= threshold:
            reached = history[-1]
            break
    compile_train = max(first_call - (per_step or 0.0), 0.0)
    step_s = per_step or 0.0
    to = None if reached is None else reached["elapsed_s"] + step_s
    record = {
        "config": config.to_dict(), "num_train": len(y), "num_test": len(test[1]), "steps_per_epoch": spe,
        "microbatch": trainer.cfg.microbatch, "threshold": threshold, "setup_s": setup,
        "first_train_call_s": first_call, "compile_train_s": compile_train, "compile_eval_s": compile_eval or 0.0,
        "step_s": per_step, "images_per_s": config.train.batch_size / per_step if per_step else None,
        "reached": reached is not None, "epoch": None if reached is None else reached["epoch"],
        "seconds_to_threshold": to,
        "seconds_to_threshold_with_compile": None if to is None else to + compile_train + (compile_eval or 0.0),
        "final_test_accuracy": history[-1]["test_accuracy"] if history else None,
        "epochs_run": len(history), "stopped": stopped, "history": history,
    }
    return record, trainer, state


def load_and_predict(config: Config, trainer: Trainer, state: Any, test: tuple[np.ndarray, np.ndarray],
                     evaluated: float) -> dict[str, Any]:
    """Save ``state`` as a run folder, load it with ``cnn_jax.load`` and predict the test split: the loaded
    weights must equal the trained ones and the predictions' accuracy the evaluation's (within 0.1 point)."""
    import cnn_jax
    from cnn_jax.checkpoint import RunCheckpointer
    from cnn_jax.run_folder import CKPT_SUBDIR
    from cnn_jax.train_state import eval_params

    host = trainer.host_state(state)
    step = int(np.ravel(host.step)[0])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = RunCheckpointer(Path(tmp) / CKPT_SUBDIR)
        dataset = {"name": config.data.dataset, "num_classes": len(FASHION_CLASSES),
                   "class_names": list(FASHION_CLASSES), "input_shape": list(test[0].shape[1:])}
        ckpt.save(step, host, {"config": config.to_dict(), "dataset": dataset}, {"test_accuracy": evaluated})
        ckpt.close()
        t = time.perf_counter()
        loaded = cnn_jax.load(tmp)
        predicted = loaded.predict(test[0])
        seconds = time.perf_counter() - t
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                        loaded.variables["params"], eval_params(host))
    same_weights = all(jax.tree.leaves(same))
    accuracy = float(np.mean(predicted == test[1]))
    ok = same_weights and abs(accuracy - evaluated) <= 1e-3 and loaded.step == step
    return {"passed": bool(ok), "step": step, "same_weights": same_weights, "predict_accuracy": accuracy,
            "evaluate_accuracy": evaluated, "seconds": seconds}


# ---------------------------------------------------------------------------------------------- table
def _f(v: float | None, spec: str = ",.0f", none: str = "n/a") -> str:
    return none if v is None else format(v, spec)


def render(report: dict[str, Any]) -> str:
    """The printed table (also written beside the JSON)."""
    d, lines = report["device"], []
    mem = (d.get("memory_stats") or {}).get("bytes_limit")
    lines.append(f"cnn_jax device check{' (smoke)' if report['smoke'] else ''}, {report['date']}: backend "
                 f"{d['backend']} ({d['platform']}), {d['device_count']} x {d['device_kind']}"
                 + (f", {mem / 2**30:.1f} GiB for JAX" if mem else "") + f"; jax {d['jax']}, jaxlib {d['jaxlib']}"
                 + "".join(f", {k} {v}" for k, v in d["plugins"].items()))
    if d.get("nvidia_smi"):
        lines.append(f"nvidia-smi: {d['nvidia_smi']}")
    lines.append(f"XLA_FLAGS: {d['xla_flags'] or '(none)'}; JAX settings: "
                 + ", ".join(f"{k}={v}" for k, v in d["jax_config"].items()))
    r = report["rules"]
    lines.append(f"rules: conv {r['conv_impl']['value']}; auto microbatch "
                 f"{'/'.join(str(v) for v in r['auto_microbatch']['value'].values())} (no BN/BN, batch 128); "
                 f"precision {r['precision']['value']}; float32 matmuls {r['matmul_precision']['value']}")
    if p := report.get("matmul_probe"):
        lines.append("float32 matmul error vs float64: " + ", ".join(f"{k} {v:.1e}" for k, v in p.items()))
    lines.append("")
    if t := report.get("tests"):
        c = t["counts"]
        lines.append(f"tests on the device ({t['seconds']:.0f} s{', TIMED OUT' if t['timed_out'] else ''}): "
                     f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped"
                     f" (pytest: {t['summary'] or 'no summary'})")
        per_file: dict[str, list[int]] = {}
        for x in t["results"]:
            n = per_file.setdefault(x["id"].split("::")[0], [0, 0])
            n[0] += x["outcome"] in ("PASSED", "XFAIL")
            n[1] += 1
        lines += [f"  {f}: {ok}/{n} passed" for f, (ok, n) in per_file.items()]
        lines += [f"  {x['outcome']} {x['id']}" for x in t["results"] if x["outcome"] in ("FAILED", "ERROR", "XPASS")]
        lines.append("")
    if a := report.get("time_to_accuracy"):
        c = a["config"]
        what = (f"time to {a['threshold']:.0%} test accuracy, preset {report['preset']} (seed {c['train']['seed']}, "
                f"{a['num_train']:,} train images, batch {c['train']['batch_size']}, microbatch {a['microbatch']}, "
                f"{c['train']['precision']}): ")
        if a["reached"]:
            what += (f"{a['seconds_to_threshold']:.1f} s of training and evaluation, epoch {a['epoch']} "
                     f"(+ compile: train {a['compile_train_s']:.1f} s, eval {a['compile_eval_s']:.1f} s; "
                     f"{a['seconds_to_threshold_with_compile']:.1f} s in all)")
        else:
            what += (f"not reached in {a['epochs_run']} epochs ({a['stopped'] or 'all the preset has'}; final "
                     f"{_f(a['final_test_accuracy'], '.4f')}; compile: train {a['compile_train_s']:.1f} s, "
                     f"eval {a['compile_eval_s']:.1f} s)")
        step_ms = None if a["step_s"] is None else 1e3 * a["step_s"]
        lines += [what, f"  train step {_f(step_ms, '.2f')} ms, {_f(a['images_per_s'])} images/s; data placed on "
                        f"the device in {a['setup_s']:.1f} s", ""]
    if lp := report.get("load_predict"):
        lines += [f"load/predict: {'passed' if lp['passed'] else 'FAILED'} (cnn_jax.load(...).predict: "
                  f"{lp['predict_accuracy']:.4f} test accuracy, Trainer.evaluate {lp['evaluate_accuracy']:.4f}; "
                  f"weights {'equal' if lp['same_weights'] else 'DIFFER'})", ""]
    if pr := report.get("peers"):
        lines.append(f"training throughput (images/s, median of {pr['rounds']} windows of >= {pr['window_s']} s):")
        header = ["model", "batch", "runner", "images/s", "range", "vs PyTorch f32", "vs PyTorch bf16", "GFLOP/s"]
        rows = [[x["model"], str(x["batch"]), x["label"], _f(x["images_per_s"]), f"{x['low']:,.0f}-{x['high']:,.0f}",
                 _f(x["vs_torch_f32"], ".2f", "n/a") + ("x" if x["vs_torch_f32"] else ""),
                 _f(x["vs_torch_bf16"], ".2f", "n/a") + ("x" if x["vs_torch_bf16"] else ""), f"{x['gflops']:,.0f}"]
                for x in pr["rows"]]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                  for row in (header, *rows)]
        lines += [f"  note: {n}" for n in pr["notes"]]
        lines.append("")
    for name, err in report.get("errors", {}).items():
        lines.append(f"{name}: ERROR {err}")
    lines.append(f"total {report.get('total_seconds', 0):.0f} s of a {report['budget_s']:.0f} s budget")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, metavar="DIR",
                   help=f"Fashion-MNIST's four *-ubyte.gz files (default: {DEBIAN_DIR}, else data/fashion-mnist)")
    p.add_argument("--preset", default="best", help="the preset whose time to 94%% is measured (default: best)")
    p.add_argument("--seed", type=int, default=0, help="its seed (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a field of that run's config, e.g. --set train.microbatch=0 (repeatable)")
    p.add_argument("--results-dir", default=None, metavar="DIR",
                   help="where the JSON, table and test log go (default: benchmarks/results; --smoke: "
                        "outputs/device_check)")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole check (default 450; smoke 240)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="peers' batch sizes (default 128 1024)")
    p.add_argument("--skip", nargs="+", default=[], choices=["tests", "tta", "peers"], help="parts to leave out")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on whatever backend: checks the script runs")
    p.add_argument("--copy-data", action="store_true",
                   help=f"copy the four files (from --data, else {DEBIAN_DIR}) into data/fashion-mnist and stop")
    return p.parse_args(argv)


def _config(a: argparse.Namespace) -> Config:
    """The time-to-accuracy run's config: the preset, the seed, the smoke sizes, ``--set``."""
    from cnn_jax.config import PRESETS, ConfigError

    if a.preset not in PRESETS:
        raise CheckError(f"--preset {a.preset}: unknown; choose from {', '.join(sorted(PRESETS))}")
    values: dict[str, Any] = {"train.seed": a.seed}
    preset = PRESETS[a.preset]
    if preset.data.dataset != "fashion_mnist":
        raise CheckError(f"--preset {a.preset} trains {preset.data.dataset}; the check measures Fashion-MNIST")
    if a.smoke:
        widths = preset.model.widths or (32, 64)
        values.update({"train.epochs": 2, "data.limit": 256, "data.val_size": 100, "run.eval_batch_size": 128,
                       "model.widths": tuple(min(w, 16) for w in widths)})
    for item in a.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise CheckError(f"--set {item}: expected KEY=VALUE, e.g. --set train.microbatch=0")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    try:
        return preset.override(values)
    except (ConfigError, TypeError) as e:
        raise CheckError(f"--set: {e}") from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    # The tests' child processes, PyTorch and this process share the device: none takes it all up front (read
    # when JAX's backend starts, below).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if a.copy_data:
        source = find_data(a.data)
        dest = copy_data(source)
        size = sum((dest / f).stat().st_size for f in FILES)
        print(f"copied {len(FILES)} files ({size / 2**20:.1f} MiB) from {source} to {dest.relative_to(ROOT)}; carry "
              f"that path to the device machine (it is git-ignored)")
        return {"copied_to": str(dest)}
    t0 = time.perf_counter()
    budget = a.budget if a.budget is not None else 240.0 if a.smoke else 450.0
    if budget <= 0:
        raise CheckError(f"--budget {a.budget}: must be > 0 seconds")
    batches = tuple(a.batches or ((8,) if a.smoke else (128, 1024)))
    if min(batches) <= 0:
        raise CheckError(f"--batches {' '.join(map(str, batches))}: batch sizes must be > 0")
    config = _config(a)
    data_dir = find_data(a.data) if "tta" not in a.skip else None
    backend = jax.default_backend()
    stamp = datetime.datetime.now(datetime.UTC)
    out_dir = Path(a.results_dir) if a.results_dir else ROOT / (
        "outputs/device_check" if a.smoke else "benchmarks/results")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{backend}-{stamp:%Y-%m-%d}{'-smoke' if a.smoke else ''}"
    json_path, table_path = stem.with_suffix(".json"), stem.with_suffix(".txt")
    log_path = stem.parent / f"{stem.name}-pytest.log"

    from cnn_jax import backend as rules

    report: dict[str, Any] = {"kind": "cnn_jax.device_check", "date": f"{stamp:%Y-%m-%d %H:%M} UTC",
                              "smoke": a.smoke, "argv": sys.argv[1:] if argv is None else list(argv),
                              "budget_s": budget, "preset": a.preset, "data": str(data_dir), "errors": {}}

    def save() -> None:
        report["total_seconds"] = time.perf_counter() - t0
        write_json(json_path, report)

    def part(name: str, fn: Callable[[], Any]) -> Any:
        """``report[name] = fn()``; an exception is recorded under ``errors`` instead, and the check goes on."""
        t = time.perf_counter()
        try:
            report[name] = fn()
            return report[name]
        except Exception as e:  # noqa: BLE001 - one part failing is recorded; the others still run
            report["errors"][name] = f"{type(e).__name__}: {e}"
            report[f"{name}_traceback"] = traceback.format_exc()[-4000:]
            print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return None
        finally:
            report.setdefault("phase_seconds", {})[name] = time.perf_counter() - t
            save()

    torch, torch_note = torch_status(backend)
    report["device"] = device_info()
    report["rules"] = rules.describe()
    report["torch"] = torch_note
    part("matmul_probe", lambda: matmul_probe(64 if a.smoke else 512))
    print(f"device check on {backend}: {report['device']['device_kind']} x {report['device']['device_count']}, "
          f"jax {jax.__version__}; results to {json_path}", flush=True)

    if "tests" not in a.skip:
        ids = SMOKE_TESTS if a.smoke else DEVICE_TESTS
        print(f"tests: {len(ids)} selections on {backend} ...", flush=True)
        part("tests", lambda: run_tests(ids, {} if a.smoke else DESELECTED, 0.35 * budget, log_path))
    if "tta" not in a.skip:
        left = budget - (time.perf_counter() - t0)
        deadline = time.perf_counter() + (left if "peers" in a.skip else 0.5 * left)
        print(f"time to {THRESHOLD:.0%}: preset {a.preset} on {data_dir} ...", flush=True)
        trained: dict[str, Any] = {}

        def tta() -> dict[str, Any]:
            trained["data"] = read_fashion(data_dir, config, verify=not a.smoke)
            record, trained["trainer"], trained["state"] = time_to_accuracy(config, trained["data"], deadline)
            return record
        record = part("time_to_accuracy", tta)
        if record and record["history"]:
            part("load_predict", lambda: load_and_predict(config, trained["trainer"], trained["state"],
                                                          trained["data"]["test"],
                                                          record["history"][-1]["test_accuracy"]))
    if "peers" not in a.skip:
        rounds, window = (1, 0.01) if a.smoke else (5, 0.5)
        models = ("lab",) if a.smoke else ("lab", "bn")  # smoke: the BN-CNN's cells are the same code
        part("peers", lambda: run_peers(batches, rounds, window, t0 + budget - 10.0, torch is not None, models))
        if "peers" in report:
            report["peers"]["notes"] = ([] if torch is not None else [torch_note]) + report["peers"]["notes"]
    report["total_seconds"] = time.perf_counter() - t0
    table = render(report)
    print("\n" + table, end="", flush=True)
    save()
    write_text(table_path, table)
    print(f"wrote {json_path}, {table_path.name}" + (f", {log_path.name}" if log_path.exists() else ""))
    return report


if __name__ == "__main__":
    try:
        main()
    except CheckError as e:
        sys.exit(f"error: {e}")
