"""Train a CNN on EMNIST Digits: ``--preset lab`` (the notebook's CNN), ``fast`` or ``best`` (no flips for digits).

The first time it downloads NIST's ``gzip.zip`` (562 MB), or takes it from ``--source-dir``; see
docs/datasets.md. ``--source-dir`` may also be the MNIST digits stand-in (``python -m cnn_jax.data stand-in
emnist/digits --out DIR``): it is then named as the stand-in, its runs go to ``checkpoints/mnist_digits_standin/``
(unless ``--workdir``) and hold out 1,000 validation images (unless ``--val-size``).

    python experiments/emnist_digits.py --preset lab --source-dir ~/Downloads    # --help lists every flag
    cnn-jax train --dataset emnist/digits --preset lab --source-dir ~/Downloads  # the same
"""

import sys

from cnn_jax.cli import run

if __name__ == "__main__":
    run("emnist/digits", sys.argv[1:])
