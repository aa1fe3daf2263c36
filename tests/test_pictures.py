"""Your own pictures as model inputs (``read_image``): transparency is background (a light object on a
transparent background stays light, on black; a dark one is inverted to light on black), with a note; a
picture of any shape costs memory bounded by the model's input size; an absurdly large one is a one-line error."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from cnn_jax.inference import read_image

SIZE = 64
_yy, _xx = np.mgrid[:SIZE, :SIZE]
DISC = ((_yy - SIZE / 2) ** 2 + (_xx - SIZE / 2) ** 2) < 14 ** 2  # the object: a disc in the middle


def _rgba(object_value: int, background_value: int = 0, background_alpha: int = 0) -> np.ndarray:
    a = np.empty((SIZE, SIZE, 4), np.uint8)
    a[..., :3] = np.where(DISC, object_value, background_value)[..., None]
    a[..., 3] = np.where(DISC, 255, background_alpha)
    return a


def _centre_and_corners(image: np.ndarray) -> tuple[float, float]:
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8
    g = image[..., 0].astype(float)
    return float(g[11:17, 11:17].mean()), float(max(g[:4, :4].max(), g[-4:, -4:].max(), g[:4, -4:].max()))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_light_object_on_transparent_stays_light_on_black(tmp_path, mode):
    path = tmp_path / f"light-{mode}.png"
    rgba = _rgba(230)
    if mode == "RGBA":
        Image.fromarray(rgba).save(path)
    elif mode == "LA":
        Image.fromarray(rgba[..., [0, 3]], "LA").save(path)
    else:  # a palette picture whose index 0 is transparent
        p = Image.fromarray(np.where(DISC, 1, 0).astype(np.uint8), "P")
        p.putpalette([0, 0, 0, 230, 230, 230])
        p.save(path, transparency=0)
    image, notes = read_image(path)
    centre, corners = _centre_and_corners(image)
    assert centre > 200 and corners == 0, (centre, corners, notes)  # not all black, not inverted
    assert not any("inverted" in n for n in notes), notes
    said = "; ".join(notes)
    assert "transparent background -> black" in said and "object is light" in said, notes


def test_dark_object_on_transparent_becomes_light_on_black(tmp_path):
    Image.fromarray(_rgba(20, background_value=255)).save(tmp_path / "dark.png")  # transparent white pixels
    image, notes = read_image(tmp_path / "dark.png")
    centre, corners = _centre_and_corners(image)
    assert centre > 200 and corners == 0, (centre, corners, notes)
    said = "; ".join(notes)
    assert "transparent background -> black" in said and "object is dark" in said and "inverted" in said, notes


def test_half_transparent_edges_blend_into_the_black_background(tmp_path):
    rgba = _rgba(255)
    rgba[..., 3] = np.where(DISC, 255, 0)
    rgba[SIZE // 2, :, :3], rgba[SIZE // 2, :, 3] = 255, 128  # a half-transparent white line across the picture
    Image.fromarray(rgba).save(tmp_path / "line.png")
    image, _ = read_image(tmp_path / "line.png", (SIZE, SIZE, 1))  # no resizing: exact values
    assert image[SIZE // 2, 0, 0] == 128 and image[0, 0, 0] == 0 and image[SIZE // 2 - 5, SIZE // 2, 0] == 255


def test_transparency_without_light_on_dark_is_composited_on_white(tmp_path):
    Image.fromarray(_rgba(20)).save(tmp_path / "dark.png")
    image, notes = read_image(tmp_path / "dark.png", (28, 28, 3), light_on_dark=False)
    assert image.shape == (28, 28, 3)
    assert image[0, 0].tolist() == [255, 255, 255] and image[14, 14].max() < 40
    assert "transparent background composited on white" in notes


def test_opaque_pictures_are_as_before(tmp_path):
    """Dark on light (opaque, or with an alpha channel that is opaque everywhere) is inverted; light on dark is
    kept as it is."""
    grey = np.where(DISC, 20, 240).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "dark-on-light.png")
    Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)])).save(tmp_path / "opaque-rgba.png")
    Image.fromarray(255 - grey).save(tmp_path / "light-on-dark.png")
    for name in ("dark-on-light.png", "opaque-rgba.png"):
        image, notes = read_image(tmp_path / name, (SIZE, SIZE, 1))
        np.testing.assert_array_equal(image[..., 0], 255 - grey)  # inverting is exact
        assert any(n.startswith("inverted (dark on light") for n in notes), notes
        assert not any("transparent" in n for n in notes), notes
    image, notes = read_image(tmp_path / "light-on-dark.png", (SIZE, SIZE, 1))
    np.testing.assert_array_equal(image[..., 0], 255 - grey)
    assert notes == [f"{SIZE}x{SIZE} L"]
    image, notes = read_image(tmp_path / "dark-on-light.png")
    assert notes[-1] == "resized to 28x28" and _centre_and_corners(image)[0] > 200


@pytest.mark.parametrize("size", [(40000, 1), (1, 40000)])
def test_a_long_thin_picture_costs_little_memory(tmp_path, size):
    """40000 x 1 pixels was padded to a 40000 x 40000 square (1.6 GB) before resizing; now it is shrunk first."""
    w, h = size
    strip = np.zeros(40000, np.uint8)
    strip[15000:25000] = 255  # a light line, its middle quarter, on black
    Image.fromarray(strip.reshape(h, w)).save(tmp_path / "strip.png")
    tracemalloc.start()
    started = time.perf_counter()
    try:
        image, notes = read_image(tmp_path / "strip.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 10
    assert peak < 5_000_000, f"peak {peak / 1e6:.1f} MB"
    assert image.shape == (28, 28, 1) and notes[0] == f"{w}x{h} L"
    assert any(n.startswith("shrunk to ") for n in notes) and "padded to 112x112" in notes, notes
    rows = image[..., 0] if w > h else image[..., 0].T  # the line runs along the long side, in the middle
    assert rows[13:15, 12:16].min() > 20 and rows[:10].max() == 0 and rows[-10:].max() == 0
    assert rows[:, :5].max() == 0 and rows[:, -5:].max() == 0


def test_a_large_photo_is_read_shrunk(tmp_path):
    rng = np.random.default_rng(0)
    photo = np.kron(np.where(DISC, 220, 15).astype(np.uint8), np.ones((50, 40), np.uint8))  # 3200 x 2560
    photo = np.clip(photo.astype(int) + rng.integers(-10, 10, photo.shape), 0, 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=90)
    image, notes = read_image(tmp_path / "photo.jpg")
    assert notes[0] == "2560x3200 L" and notes[1].startswith("shrunk to ") and "resized to 28x28" in notes
    centre, corners = _centre_and_corners(image)
    assert centre > 180 and corners < 40


def test_too_large_a_picture_is_a_one_line_error(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "biggish.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("big.png", "biggish.png"):  # past Pillow's error limit (2x), and past its warning limit
        with pytest.raises(ValueError) as raised:
            read_image(tmp_path / name)
        message = str(raised.value)
        assert message.startswith(f"{tmp_path / name}: too large a picture") and "\n" not in message
        assert "pass a smaller picture" in message
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)
    assert read_image(tmp_path / "big.png")[0].shape == (28, 28, 1)


def test_an_animated_picture_says_that_its_first_frame_was_used(tmp_path):
    frames = [Image.fromarray(np.full((SIZE, SIZE), value, np.uint8)) for value in (255, 0, 128)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    image, notes = read_image(tmp_path / "anim.gif")
    assert "the first of its 3 frames" in notes[0], notes
    assert image.mean() > 200 or image.mean() < 50  # one frame's pixels, not a blend
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(tmp_path / "still.gif")
    assert "frames" not in read_image(tmp_path / "still.gif")[1][0]
