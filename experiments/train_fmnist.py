"""Train a registry model on Fashion-MNIST from the raw IDX files, logging per-epoch metrics to JSONL.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 PYTHONPATH=. \\
        python experiments/train_fmnist.py --model bn_cnn --log runs/bn_cnn.jsonl

Augmentation (random 2-pixel shifts + horizontal flips) and normalisation run on device inside the compiled
step; this local version stands in until ``cnn_jax.data.augment`` lands. The defaults (bn_cnn, 18 epochs,
AdamW one-cycle 3e-3, wd 5e-4, label smoothing 0.05, dropout 0.2) reached 93.8% test accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.config import TrainConfig
from cnn_jax.data.idx import read_idx
from cnn_jax.fit import fit
from cnn_jax.models import get_model

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train pixel statistics


def normalize(images: jax.Array) -> jax.Array:
    return (images.astype(jnp.float32) * (1 / 255.0) - MEAN) / STD


def augment(key: jax.Array, images: jax.Array, pad: int = 2) -> jax.Array:
    """uint8 ``(B, H, W, C)`` -> normalised float; each image shifted by up to ``pad`` px, maybe flipped."""
    b, h, w, _ = images.shape
    k_shift, k_flip = jax.random.split(key)
    x = jnp.pad(normalize(images), ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-MEAN / STD)
    offsets = jax.random.randint(k_shift, (b, 2), 0, 2 * pad + 1)
    x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, im.shape[-1])))(x, offsets)
    flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1], x)


def load(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(data_dir / f"{split}-images-idx3-ubyte.gz")[..., None]
    labels = read_idx(data_dir / f"{split}-labels-idx1-ubyte.gz").astype(np.int32)
    return images, labels


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--model", default="bn_cnn")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="conv stage widths (model default)")
    p.add_argument("--dropout", type=float, default=0.2, help="dense dropout")
    p.add_argument("--conv-dropout", type=float, default=0.0, help="bn_cnn conv-stage dropout")
    p.add_argument("--epochs", type=int, default=18)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--schedule", default="onecycle")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument("--microbatch", type=int, default=None)
    p.add_argument("--steps-per-chunk", type=int, default=117, help="fused steps between progress updates")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--log", type=Path, default=Path("runs/fmnist.jsonl"))
    args = p.parse_args(argv)
    train, test = load(args.data_dir, "train"), load(args.data_dir, "t10k")
    if args.limit:
        train, test = ((a[: args.limit], b[: args.limit]) for a, b in (train, test))
    cfg = TrainConfig(optimizer=args.optimizer, lr=args.lr, schedule=args.schedule, epochs=args.epochs,
                      batch_size=args.batch_size, weight_decay=args.weight_decay, clip=1.0,
                      label_smoothing=args.label_smoothing, microbatch=args.microbatch,
                      steps_per_chunk=args.steps_per_chunk)
    kw = {"widths": tuple(args.widths) if args.widths else None, "dropout": args.dropout,
          "conv_dropout": args.conv_dropout if args.model == "bn_cnn" else None}
    model = get_model(args.model, **{k: v for k, v in kw.items() if v is not None})
    t0 = time.perf_counter()
    result = fit(model, cfg, train, test, log_path=args.log,
                 preprocess=(lambda k, x: normalize(x)) if args.no_augment else augment,
                 eval_preprocess=lambda k, x: normalize(x))
    best = max(h["val_accuracy"] for h in result.history)
    print(f"{args.model}: final test accuracy {result.history[-1]['val_accuracy']:.4f} (best {best:.4f}) "
          f"in {time.perf_counter() - t0:.0f} s; log {args.log}")


if __name__ == "__main__":
    main()
