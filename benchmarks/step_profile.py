"""Where a train step's time goes: per layer and pass, cnn_jax (XLA:CPU's executed ops) beside PyTorch eager.

    python benchmarks/step_profile.py [--models bn resnet] [--batch 128] [--steps 10] [--precision f32] \\
        [--json out.json] [--smoke]

For each network of ``benchmarks/peers.py`` (``lab``, ``bn``: the ``best`` preset's, ``resnet``: the ``fast``
preset's) it trains ``--steps`` steps of batch ``--batch`` under a profiler, after warm-up, twice:

* cnn_jax: ``Trainer.train_chunk`` with the preset's flags (as ``peers.py``'s ``jax_best``), traced with
  ``jax.profiler``. Each executed XLA op (a fusion, a dot, a copy) is charged to the layer and pass in its
  metadata: the Flax module (``Conv_1``, ``BatchNorm_2``, ...) and ``forward`` (``jvp``) or ``backward``
  (``transpose(jvp)``); ops of the model's own code (pooling, ReLU, residual adds) to "pool, relu, adds",
  the rest (optimizer, shuffle, loop) to "optimizer, data, other".
* PyTorch eager (when installed): ``torch.profiler``; each op's self time is charged to its nearest enclosing
  op or autograd node of a known kind (``aten::convolution``, ``ConvolutionBackward0``, ...).

Prints, per step, milliseconds by kind of layer and pass for both, and cnn_jax's per-layer rows (kernel shapes
named) with the kind of work (matmul, im2col patches, other); writes JSON. Profiled times sum the ops' own
durations (ops that run side by side on different cores both count); the unprofiled step time (median of
``--rounds`` windows) is printed beside them. Figures are for one machine: the script names it.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import statistics
import tempfile
import time

import jax
import numpy as np
import peers  # benchmarks/ (the script's folder): the networks, their PyTorch twins and the runners
from common import machine

from cnn_jax.files import write_json
from cnn_jax.train_state import model_state

KINDS = ("conv", "batch norm", "dense", "pool, relu, adds", "loss", "optimizer, data, other")
PASSES = ("forward", "backward")
_INSTR = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{op_name="([^"]*)"')
_LAYER = re.compile(r"\b(Conv|BatchNorm|Dense)_\d+\b")


# ------------------------------------------------------------------------------------------------ cnn_jax
def classify_xla(op_name: str, model: str) -> tuple[str, str, str]:
    """``(kind, pass, layer)`` of an XLA op from its metadata ``op_name`` (e.g.
    ``jit(fn)/while/body/transpose(jvp(ResNet))/Conv_1/dot_general``)."""
    if "jvp(" not in op_name:
        return "optimizer, data, other", "other", "optimizer, data, other"
    step = "backward" if "transpose(jvp(" in op_name else "forward"
    m = _LAYER.search(op_name)
    if m:
        kind = {"Conv": "conv", "BatchNorm": "batch norm", "Dense": "dense"}[m.group(1)]
        return kind, step, m.group(0)
    if f"jvp({model})" in op_name:
        return "pool, relu, adds", step, f"{model} (pool, relu, adds)"
    return "loss", step, "loss"


def work_kind(instr: str, text: str) -> str:
    """What an executed op does, from its HLO: ``matmul`` (dots, YNNPACK fusions), ``im2col`` (the patches'
    concatenation) or ``other`` (elementwise fusions, copies, reductions)."""
    if instr.startswith(("ynn_fusion", "dot", "xnn_fusion")) or " dot(" in text:
        return "matmul"
    if instr.startswith(("stack", "concatenate", "bitcast_concatenate")):
        return "im2col"
    return "other"


def _trace_events(folder: str) -> list[dict]:
    files = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)
    return json.loads(gzip.open(files[0]).read())["traceEvents"] if files else []


def profile_cnn_jax(model: str, batch: int, steps: int, precision: str = "f32") -> dict:
    """Milliseconds per step by (kind, pass) and by layer, from a ``jax.profiler`` trace of ``steps`` steps."""
    trainer, data = peers.jax_trainer(model, batch, precision=precision, **peers.MODELS[model]["best"])
    net, state = trainer.model, trainer.init_state()
    steps = min(steps, trainer.steps_per_epoch)
    args = (np.int32(steps), (np.float32(0), np.int32(0)))
    compiled = trainer._chunk_fn.lower(state, *data, *args).compile()  # the executable profiled below
    meta = {}
    for line in compiled.as_text().splitlines():
        m = _INSTR.match(line)
        if m:
            meta[m.group(1)] = (m.group(2), line)
    state, out = compiled(state, *data, *args)  # warm-up
    jax.block_until_ready(out)
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder)
        state, out = compiled(state, *data, *args)
        jax.block_until_ready(out)
        jax.profiler.stop_trace()
        events = _trace_events(folder)
    by_kind: dict[tuple[str, str], float] = collections.Counter()
    by_layer: dict[tuple[str, str], float] = collections.Counter()
    by_work: dict[tuple[str, str, str], float] = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or e.get("name") not in meta:
            continue
        op_name, text = meta[e["name"]]
        kind, step, layer = classify_xla(op_name, type(net).__name__)
        ms = e["dur"] / 1e3 / steps
        by_kind[kind, step] += ms
        by_layer[layer, step] += ms
        by_work[layer, step, work_kind(e["name"], text)] += ms
    params, _ = model_state(net)
    shapes = {name: "x".join(map(str, leaf["kernel"].shape)) for name, leaf in params.items() if "kernel" in leaf}
    return {"by_kind": {f"{k} | {s}": v for (k, s), v in by_kind.items()},
            "by_layer": [{"layer": layer, "pass": s, "kernel": shapes.get(layer, ""), "ms": v,
                          **{w: by_work.get((layer, s, w), 0.0) for w in ("matmul", "im2col", "other")}}
                         for (layer, s), v in sorted(by_layer.items(), key=_layer_order)]}


def _layer_order(item) -> tuple:
    (layer, step), _ = item
    m = re.match(r"(\w+)_(\d+)$", layer)
    return (0 if m else 1, int(m.group(2)) if m else 0, layer, step)


# ------------------------------------------------------------------------------------------------ PyTorch
#: PyTorch op (exact name) or autograd node (name prefix) -> (kind, pass); an op's self time goes to the nearest
#: of its enclosing ops (itself first) that is listed here.
TORCH_OPS: dict[str, tuple[str, str]] = {
    "aten::convolution": ("conv", "forward"), "aten::batch_norm": ("batch norm", "forward"),
    "aten::max_pool2d": ("pool, relu, adds", "forward"), "aten::adaptive_max_pool2d": ("pool, relu, adds", "forward"),
    "aten::relu": ("pool, relu, adds", "forward"), "aten::add": ("pool, relu, adds", "forward"),
    "aten::mul": ("pool, relu, adds", "forward"), "aten::linear": ("dense", "forward"),
    "aten::cross_entropy_loss": ("loss", "forward"),
}
TORCH_NODES: dict[str, tuple[str, str]] = {
    "ConvolutionBackward": ("conv", "backward"), "NativeBatchNormBackward": ("batch norm", "backward"),
    "MaxPool2DWithIndicesBackward": ("pool, relu, adds", "backward"),
    "AdaptiveMaxPool2DBackward": ("pool, relu, adds", "backward"), "ReluBackward": ("pool, relu, adds", "backward"),
    "AddBackward": ("pool, relu, adds", "backward"), "MulBackward": ("pool, relu, adds", "backward"),
    "AddmmBackward": ("dense", "backward"), "MmBackward": ("dense", "backward"), "TBackward": ("dense", "backward"),
    "LogSoftmaxBackward": ("loss", "backward"), "NllLossBackward": ("loss", "backward"),
    "Optimizer.": ("optimizer, data, other", "other"),
}


def torch_kind(names: list[str]) -> tuple[str, str]:
    """``(kind, pass)`` of a PyTorch op from its own name and its ancestors' (innermost first)."""
    for name in names:
        if name in TORCH_OPS:
            return TORCH_OPS[name]
        node = name.removeprefix("autograd::engine::evaluate_function: ")
        for prefix, kp in TORCH_NODES.items():
            if node.startswith(prefix):
                return kp
    return "optimizer, data, other", "other"


def profile_torch(model: str, batch: int, steps: int) -> dict | None:
    """Milliseconds per step by (kind, pass) from ``torch.profiler`` (None without torch)."""
    try:
        import torch  # noqa: F401
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    run = peers.RUNNERS["torch_f32"](model, batch)
    run(3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(steps)
    by_kind: dict[tuple[str, str], float] = collections.Counter()
    for e in prof.events():
        names, p = [], e
        while p is not None:
            names.append(p.name)
            p = p.cpu_parent
        by_kind[torch_kind(names)] += e.self_cpu_time_total / 1e3 / steps
    return {"by_kind": {f"{k} | {s}": v for (k, s), v in by_kind.items()}}


def step_ms(run, steps: int, rounds: int) -> float:
    """Median milliseconds per step over ``rounds`` windows of ``steps`` steps (no profiler)."""
    run(steps)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        run(steps)
        times.append((time.perf_counter() - t) / steps * 1e3)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------ report
def _row(by_kind: dict[str, float] | None, kind: str) -> list[str]:
    if by_kind is None:
        return ["n/a"] * len(PASSES)
    return [f"{by_kind.get(f'{kind} | {s}', 0.0):.1f}" for s in PASSES]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["bn", "resnet"], choices=list(peers.MODELS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="profiled steps (and steps per timed window)")
    p.add_argument("--rounds", type=int, default=3, help="unprofiled timed windows (median reported)")
    p.add_argument("--precision", default="f32", choices=["f32", "bf16"], help="cnn_jax's compute precision")
    p.add_argument("--json", default=None, help="write the results here (default: print only)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    a = p.parse_args(argv)
    if a.smoke:
        a.batch, a.steps, a.rounds = 32, 2, 1
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **machine(), "batch": a.batch,
              "steps": a.steps, "precision": a.precision, "models": {}}
    print(f"{report['date']}  {report['cpu']} ({report['cpu_flags']}), {report['cpu_count']} cpus; batch "
          f"{a.batch}, {a.steps} profiled steps; cnn_jax {a.precision}, PyTorch eager f32")
    for model in a.models:
        ours = profile_cnn_jax(model, a.batch, a.steps, a.precision)
        theirs = profile_torch(model, a.batch, a.steps)
        factory = peers.jax_bf16_runner if a.precision == "bf16" else peers.jax_best_runner
        wall = {"cnn_jax": step_ms(factory(model, a.batch), a.steps, a.rounds)}
        if theirs is not None:
            wall["pytorch"] = step_ms(peers.RUNNERS["torch_f32"](model, a.batch), a.steps, a.rounds)
        report["models"][model] = {"cnn_jax": ours, "pytorch": theirs, "step_ms": wall}
        print(f"\n{model}: ms per step by kind of layer (profiled; unprofiled step: cnn_jax "
              f"{wall['cnn_jax']:.1f} ms" + (f", PyTorch {wall['pytorch']:.1f} ms)" if "pytorch" in wall else ")"))
        header = ["kind", "cnn_jax fwd", "cnn_jax bwd", "PyTorch fwd", "PyTorch bwd", "cnn_jax / PyTorch"]
        rows = []
        for kind in KINDS:
            ours_ms = sum(ours["by_kind"].get(f"{kind} | {s}", 0.0) for s in (*PASSES, "other"))
            theirs_ms = None if theirs is None else sum(
                theirs["by_kind"].get(f"{kind} | {s}", 0.0) for s in (*PASSES, "other"))
            cells = _row(ours["by_kind"], kind) + _row(theirs and theirs["by_kind"], kind)
            if kind == "optimizer, data, other":  # one pass: shown as forward
                cells = [f"{ours_ms:.1f}", "", "n/a" if theirs_ms is None else f"{theirs_ms:.1f}", ""]
            rows.append([kind, *cells, f"{ours_ms / theirs_ms:.2f}x" if theirs_ms else "n/a"])
        total = [sum(ours["by_kind"].values()), None if theirs is None else sum(theirs["by_kind"].values())]
        rows.append(["total", f"{total[0]:.1f}", "", "n/a" if total[1] is None else f"{total[1]:.1f}", "",
                     f"{total[0] / total[1]:.2f}x" if total[1] else "n/a"])
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        for r in [header, *rows]:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        print("cnn_jax per layer (ms per step; matmul / im2col patches / other):")
        for r in ours["by_layer"]:
            print(f"  {r['layer']:28} {r['kernel']:12} {r['pass']:8} {r['ms']:6.1f}  "
                  f"({r['matmul']:.1f} / {r['im2col']:.1f} / {r['other']:.1f})")
    if a.json:
        write_json(a.json, report)
        print(f"wrote {a.json}")
    return report


if __name__ == "__main__":
    main()
