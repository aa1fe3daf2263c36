import os
import sys
from pathlib import Path

# Eight fake CPU devices for the whole session (mesh and pmap tests in-process), set before JAX starts.
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # their shared `common` module

import pytest  # noqa: E402

FASHION_RAW = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_tfds_dir(tmp_path_factory) -> Path:
    """A TFDS data dir with real Fashion-MNIST prepared (offline, no TF) and its decode cache built."""
    if not (FASHION_RAW / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real Fashion-MNIST not in {FASHION_RAW} (apt-get install dataset-fashion-mnist)")
    from cnn_jax.data import load

    data_dir = tmp_path_factory.mktemp("tfds_fashion")
    load("fashion_mnist", data_dir=str(data_dir), val_size=0)
    return data_dir
