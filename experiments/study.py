"""The notebook's study in one command: its CNN (``lab``) on Fashion-MNIST and on handwritten digits, compared.

    python experiments/study.py                              # or `make study`, or `cnn-jax study`
    python experiments/study.py --emnist-source ~/Downloads/gzip.zip --with-best
    python experiments/study.py --emnist-source standin/     # the MNIST digits stand-in
    python experiments/study.py -- --epochs 3 --limit 2000   # flags after -- go to every run

See :mod:`cnn_jax.study`.
"""

from cnn_jax.study import main

if __name__ == "__main__":
    main()
