"""Train a CNN on Fashion-MNIST: ``--preset lab`` (the notebook's CNN), ``fast`` (a small ResNet) or ``best``.

    python experiments/fashion_mnist.py --preset best --epochs 30        # --help lists every flag
"""

from cnn_jax.cli import main

if __name__ == "__main__":
    main("fashion_mnist")
