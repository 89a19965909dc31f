"""Every kind of upload becomes a clean RGB picture, or a readable error."""
import io

import numpy as np
import pytest
from PIL import Image

from vision import preprocess
from vision.preprocess import CLIP_MEAN, CLIP_STD, ImageError, load_image, to_pixels


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "CMYK", "1", "I;16", "I", "F", "LA", "RGBA", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new("RGB", (30, 20), (200, 100, 50)).convert(mode)
    out = load_image(image)
    assert out.mode == "RGB" and out.size == (30, 20)
    pixels = np.asarray(out, dtype=np.int16)
    if mode in ("RGB", "RGBA", "CMYK", "P", "YCbCr"):  # modes that hold colour keep this one
        assert np.abs(pixels.reshape(-1, 3).mean(axis=0) - (200, 100, 50)).max() <= 8  # P dithers: the mean
    elif mode in ("L", "LA", "1", "F"):  # grey modes: their own grey, not black
        assert np.abs(pixels - np.asarray(image.convert("RGB"), dtype=np.int16)).max() <= 1 and pixels.max() > 0
    else:  # 16/32-bit grey is scaled to its peak: flat grey becomes white
        assert (pixels == 255).all()


def test_transparency_is_flattened_onto_white():
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    out = load_image(encoded(image, "PNG"))
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees to view
    out = load_image(encoded(image, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_pixels_are_bicubic_resized_and_clip_normalised():
    image = Image.new("RGB", (300, 120), (255, 0, 128))
    pixels = to_pixels(image, 224)
    assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == np.float32
    expected = (np.array([255, 0, 128]) / 255.0 - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(pixels[0, :, 100, 100], expected, atol=1e-2)


def test_a_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_a_truncated_file_is_reported_as_damaged():
    data = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(ImageError, match="damaged"):
        load_image(data[: len(data) // 2])


def test_huge_images_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_PIXELS", 100)
    with pytest.raises(ImageError, match="11x10 pixels"):
        load_image(encoded(Image.new("RGB", (11, 10)), "PNG"))


def test_huge_files_and_missing_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_BYTES", 10)
    with pytest.raises(ImageError, match="MB"):
        load_image(b"x" * 11)
    with pytest.raises(ImageError, match="No such image file"):
        load_image(tmp_path / "missing.jpg")
