import os
import sys
from pathlib import Path

# Eight fake CPU devices for the whole session (mesh and pmap tests in-process), set before JAX starts.
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # their shared `common` module

import jax_cache  # noqa: E402
import pytest  # noqa: E402

FASHION_RAW = Path("/usr/share/datasets/fashion-mnist")


@pytest.hookimpl(trylast=True)  # after pytest's tmp_path plugin has set up basetemp
def pytest_configure(config: pytest.Config) -> None:
    """JAX's persistent compilation cache in the session's basetemp (``jax_cache.py``), or the one this process
    was given (pytest-xdist's workers; a test session that a test starts, as the device check does);
    ``CNN_JAX_TEST_NO_CACHE=1`` turns it off, to time the suite without it."""
    if os.environ.get("CNN_JAX_TEST_NO_CACHE"):
        return
    if given := os.environ.get(jax_cache.DIR):
        jax_cache.use(Path(given))
        return
    jax_cache.use(config._tmp_path_factory.getbasetemp() / "jax_cache")  # pytest's session tmp_path_factory


@pytest.fixture(scope="session")
def fashion_tfds_dir(tmp_path_factory, request) -> Path:
    """A TFDS data dir with real Fashion-MNIST prepared (offline, no TF) and its decode cache built: once per
    session, shared by pytest-xdist's workers (the first prepares it, under a file lock)."""
    if not (FASHION_RAW / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real Fashion-MNIST not in {FASHION_RAW} (apt-get install dataset-fashion-mnist)")
    from filelock import FileLock

    from cnn_jax.data import load

    base = tmp_path_factory.getbasetemp()
    worker = hasattr(request.config, "workerinput")  # an xdist worker: its basetemp is in the session's
    data_dir = (base.parent if worker else base) / "tfds_fashion"
    with FileLock(f"{data_dir}.lock"):
        load("fashion_mnist", data_dir=str(data_dir), val_size=0)
    return data_dir
