"""Run in a subprocess by tests/test_parallel.py (needs its own XLA_FLAGS / distributed setup).

``devices OUT``: on 8 fake CPU devices, train one chunk with parallelism none / sharded / pmap and save
the params of each.  ``multihost OUT``: one process of a ``jax.distributed`` run (env CNN_JAX_*), trains
with the sharded strategy over both processes' devices and saves its final params.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from synthetic import make_data  # noqa: E402

from cnn_jax.config import TrainConfig  # noqa: E402
from cnn_jax.models import BNCNN, LabCNN  # noqa: E402
from cnn_jax.trainer import Trainer  # noqa: E402

CFG = TrainConfig(epochs=1, batch_size=64, eval_batch_size=64, lr=3e-3, label_smoothing=0.1, clip=1.0)
TRAIN = make_data(512, seed=0)
VAL = make_data(100, seed=1)


def flat(tree, prefix):
    return {prefix + "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def run(model, parallelism, steps=6):
    trainer = Trainer(model, CFG.replace(parallelism=parallelism), len(TRAIN[0]), TRAIN[0].shape[1:])
    state, _ = trainer.train_chunk(trainer.init_state(), trainer.put_data(*TRAIN), steps=steps)
    ev = trainer.evaluate(state, trainer.put_data(*VAL, for_eval=True))
    host = trainer.host_state(state)
    return {**flat(host.params, "params/"), **flat(host.batch_stats, "batch_stats/"),
            "eval/loss": np.asarray(ev["loss"]), "eval/confusion": np.asarray(ev["confusion"])}


def main(mode, out):
    if mode == "devices":
        assert jax.device_count() == 8, jax.devices()
        models = {
            "lab_dropout": (LabCNN(widths=(8, 16), dense=32, dropout=0.5), ("none", "sharded")),
            "lab": (LabCNN(widths=(8, 16), dense=32, dropout=0.0), ("none", "sharded", "pmap")),
            "bn": (BNCNN(widths=(8, 16), dense=16, dropout=0.0, conv_dropout=0.0),
                   ("none", "sharded", "pmap")),
        }
        arrays = {}
        for name, (model, strategies) in models.items():
            for strategy in strategies:
                for k, v in run(model, strategy).items():
                    arrays[f"{name}:{strategy}:{k}"] = v
        np.savez(out, **arrays)
    else:
        from cnn_jax.fit import fit

        res = fit(LabCNN(widths=(8, 16), dense=32, dropout=0.5),
                  CFG.replace(parallelism="sharded", distributed=True, steps_per_chunk=4), TRAIN, VAL,
                  progress=False)
        assert jax.process_count() == 2 and jax.device_count() == 2, (jax.process_count(), jax.devices())
        host = res.trainer.host_state(res.state)
        np.savez(out, **flat(host.params, "params/"), val_accuracy=res.history[-1]["val_accuracy"])
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
