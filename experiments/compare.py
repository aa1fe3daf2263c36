"""Compare two or more finished runs: a Markdown report (table, per-class weaknesses, conclusion) and a figure.

    python experiments/compare.py checkpoints/fashion_mnist/lab checkpoints/fashion_mnist/best --out report.md

See :mod:`cnn_jax.report`.
"""

import sys

from cnn_jax.report import main

if __name__ == "__main__":
    sys.exit(main())
