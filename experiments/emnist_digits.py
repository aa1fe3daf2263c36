"""Train a CNN on EMNIST Digits: ``--preset lab`` (the notebook's CNN) or ``--preset best`` (regularised).

Needs NIST's ``gzip.zip`` (``--source-dir``) or ``--download`` the first time; see the README's Datasets section.

    python experiments/emnist_digits.py --preset lab --source-dir ~/Downloads    # --help lists every flag
"""

from cnn_jax.cli import main

if __name__ == "__main__":
    main("emnist/digits")
