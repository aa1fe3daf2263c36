"""Wrote tests/data/state-layout-1/: checkpoints saved by cnn_jax before the weights' average became a field of
the state (layout 1), and what that code's training from them gave (the reference for a resume today).

Run once, 2026-12-07, with the code of commit a7fa43e (the last of layout 1) checked out in /tmp/old_ema:
    cd /tmp && PYTHONPATH=/tmp/old_ema:/tmp/old_ema/tests JAX_PLATFORMS=cpu python make.py tests/data/state-layout-1
"""
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from synthetic import make_data, train

import cnn_jax
from cnn_jax.checkpoint import RunCheckpointer
from cnn_jax.config import Config, RunConfig, TrainConfig
from cnn_jax.models import ResNet
from cnn_jax.trainer import Trainer

assert "old_ema" in cnn_jax.__file__, cnn_jax.__file__
out = Path(sys.argv[1])
DATA = make_data(256, seed=0)
for ema in (0.9, None):
    cfg = Config(train=TrainConfig(batch_size=32, epochs=2, lr=3e-3, ema=ema, microbatch=None),
                 run=RunConfig(parallelism="none", eval_batch_size=32))
    t = Trainer(ResNet(widths=(4, 8, 8, 8), rngs=nnx.Rngs(0)), cfg, len(DATA[0]), (28, 28, 1))
    one = train(t, DATA, 1)
    name = "ema" if ema else "no-ema"
    ck = RunCheckpointer(out / name)
    ck.save(int(t.host_state(one).step), t.host_state(one), {"made_by": "cnn_jax 99a439d+step6 (layout 1)"})
    ck.wait()
    ck.close()
    two = t.host_state(train(t, DATA, 1, one))
    leaves = jax.tree.leaves(two)
    np.savez(out / f"{name}-after-one-more-epoch.npz", *leaves)
    print(name, int(two.step), len(leaves))
