"""Train a CNN on EMNIST Digits: ``--preset lab`` (the notebook's CNN) or ``--preset best`` (regularised).

The first time it downloads NIST's ``gzip.zip`` (562 MB), or takes it from ``--source-dir``; see the README's
Datasets section.

    python experiments/emnist_digits.py --preset lab --source-dir ~/Downloads    # --help lists every flag
"""

from cnn_jax.cli import main

if __name__ == "__main__":
    main("emnist/digits")
