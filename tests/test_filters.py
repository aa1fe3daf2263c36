"""The filter bank and the convolution walkthrough script."""

from __future__ import annotations

import runpy
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from cnn_jax import FILTERS, apply_filter_bank, filter_bank

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_filter_bank_matches_scipy_per_filter():
    img = np.random.default_rng(0).random((12, 10)).astype(np.float32)
    names = ["sobel_x", "gaussian_blur_5x5", "sharpen", "laplacian_of_gaussian_5x5"]
    maps = np.asarray(apply_filter_bank(img, names))
    assert maps.shape == (12, 10, 4)
    for i, name in enumerate(names):
        want = scipy.signal.correlate2d(img, FILTERS[name], mode="same", boundary="fill")
        np.testing.assert_allclose(maps[..., i], want, rtol=1e-4, atol=1e-5)


def test_filter_properties():
    img = jnp.asarray(np.random.default_rng(1).random((1, 9, 9, 1)), jnp.float32)
    ident, blur = apply_filter_bank(img, ["identity", "box_blur"])[0].transpose(2, 0, 1)
    np.testing.assert_allclose(ident, img[0, ..., 0], rtol=1e-6)
    flat = apply_filter_bank(jnp.full((7, 7), 3.0), ["sobel_x", "laplacian", "box_blur"], padding="VALID")
    np.testing.assert_allclose(flat[..., :2], 0.0, atol=1e-6)  # edge detectors are blind to a flat image
    np.testing.assert_allclose(flat[..., 2], 3.0, rtol=1e-6)  # a blur keeps it
    ramp = jnp.tile(jnp.arange(8.0), (8, 1))  # brightness grows left to right
    assert float(apply_filter_bank(ramp, ["sobel_x"], padding="VALID").min()) > 0
    assert float(jnp.abs(apply_filter_bank(ramp, ["sobel_y"], padding="VALID")).max()) == 0


def test_filter_bank_multichannel_sees_channel_mean():
    rgb = np.random.default_rng(2).random((6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(apply_filter_bank(rgb, ["sharpen"]), apply_filter_bank(rgb.mean(-1), ["sharpen"]),
                               rtol=1e-5, atol=1e-5)
    assert filter_bank(["sobel_x", "gaussian_blur_5x5"], in_channels=3).shape == (5, 5, 3, 2)


def test_filter_bank_bad_names():
    with pytest.raises(ValueError, match=r"unknown filter\(s\) \['sobel_z'\]"):
        filter_bank(["sobel_x", "sobel_z"])
    with pytest.raises(ValueError, match="names is empty"):
        filter_bank([])
    with pytest.raises(ValueError, match="image must be"):
        apply_filter_bank(np.zeros(5))


def _run_demo(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["convolution_demo.py", *argv])
    return runpy.run_path(str(ROOT / "experiments" / "convolution_demo.py"), run_name="demo")["main"]()


def _assert_pngs(paths):
    assert paths
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, p


def test_convolution_demo_writes_pngs(tmp_path, monkeypatch, capsys):
    paths = _run_demo(monkeypatch, "--out", str(tmp_path), "--num-images", "2", "--filters", "sobel_x", "sharpen")
    out = capsys.readouterr().out
    assert "images: " in out and "max pool 2x2" in out
    _assert_pngs(paths)
    assert {p.name for p in paths} >= {"kernels.png", "walkthrough_0.png"}
    for p in paths:
        assert f"wrote {p}" in out


def test_convolution_demo_without_fashion_mnist_uses_generated_image(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    module = runpy.run_path(str(ROOT / "experiments" / "convolution_demo.py"), run_name="demo")
    monkeypatch.setitem(module["load_images"].__globals__, "FASHION_DIRS", (str(empty),))
    paths = module["main"](["--out", str(tmp_path / "out")])
    assert "a generated image" in capsys.readouterr().out
    _assert_pngs(paths)


def test_convolution_demo_bad_flags(tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        _run_demo(monkeypatch, "--num-images", "0", "--out", str(tmp_path))
    with pytest.raises(SystemExit):
        _run_demo(monkeypatch, "--filters", "no_such_filter", "--out", str(tmp_path))
    with pytest.raises(SystemExit, match="no t10k-images"):
        _run_demo(monkeypatch, "--data-dir", str(tmp_path), "--out", str(tmp_path))
