"""notebooks/walkthrough.ipynb is stored without outputs and runs end to end (training its own tiny run when
CNN_JAX_RUN_DIR has no checkpoint), producing figures."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"


def test_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "CNN_JAX_RUN_DIR" in code[0].source and "TFDS_DATA_DIR" in code[0].source


def test_notebook_runs_and_trains_when_no_run(fashion_tfds_dir, tmp_path, monkeypatch):
    # the kernel inherits this environment: a run folder without checkpoints, tiny fallback training
    monkeypatch.setenv("CNN_JAX_RUN_DIR", str(tmp_path / "no_run_here"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(fashion_tfds_dir))
    monkeypatch.setenv("CNN_JAX_TRAIN_ARGS", "--epochs 1 --limit 1000 --val-size 200")
    monkeypatch.setenv("CNN_JAX_NUM_IMAGES", "8")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("PYTHONPATH", raising=False)  # cnn_jax as a user's kernel has it: the installed package
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 6, f"only {len(images)} figures"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "training a tiny one" in text and "loaded " in text
    assert "-> SAME (1, 28, 28, 8)" in text and "max_pool -> (1, 14, 14, 8)" in text
    assert "read_image: 64x64 L; inverted (dark on light -> light on dark" in text and "-> (28, 28, 1)" in text
    assert "my_picture.png: " in text  # the --image command's answer, with its top classes
    accuracy = float(text.split("accuracy on the first 2000 test images: ")[1].split("%")[0])
    assert 30 < accuracy <= 100  # one tiny epoch, well above chance (10%)
