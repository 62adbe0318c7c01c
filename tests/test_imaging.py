import io

import numpy as np
import pytest
from PIL import Image

from training.imaging import ImageError, decode_image, open_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


RGB = Image.new("RGB", (40, 30), (200, 10, 10))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF"])
def test_supported_formats_decode_to_rgb(fmt):
    img = decode_image(encode(RGB, fmt), channels=3)
    assert img.mode == "RGB" and img.size == (40, 30)


def test_grayscale_target_gives_l():
    assert decode_image(encode(RGB, "PNG"), channels=1).mode == "L"


def test_rgba_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image(encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_palette_la_and_cmyk_convert():
    assert decode_image(encode(RGB.convert("P"), "PNG")).mode == "RGB"
    assert decode_image(encode(Image.new("LA", (8, 8), (10, 255)), "PNG")).getpixel((0, 0)) == (10, 10, 10)
    cmyk = decode_image(encode(RGB.convert("CMYK"), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((5, 5))[0] > 150


def test_16_bit_grayscale_is_rescaled_not_clipped():
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    img = decode_image(encode(Image.fromarray(arr), "PNG"), channels=1)
    assert 125 <= img.getpixel((0, 0)) <= 130


def test_exif_orientation_is_honoured():
    tall = Image.new("RGB", (20, 40), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img = decode_image(encode(tall, "JPEG", exif=exif.tobytes()))
    assert img.size == (40, 20)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    r, g, b = decode_image(buf.getvalue()).getpixel((0, 0))
    assert r > 200 and b < 50


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, I am text", "not_an_image"),
        (b"<html><body>no</body></html>", "not_an_image"),
        (b"%PDF-1.4\n%...", "not_an_image"),
    ],
)
def test_non_images_are_refused_with_a_reason(data, reason):
    with pytest.raises(ImageError) as exc:
        decode_image(data)
    assert exc.value.reason == reason
    assert "JPEG" in str(exc.value) or "empty" in str(exc.value)


def test_truncated_file_is_refused():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageError) as exc:
        decode_image(data[: len(data) // 2])
    assert exc.value.reason == "truncated"


def test_unsupported_format_names_the_accepted_ones():
    with pytest.raises(ImageError) as exc:
        decode_image(encode(RGB, "ICO"))
    assert exc.value.reason == "unsupported_format" and "WEBP" in str(exc.value)


def test_pixel_limit_refuses_before_decoding():
    with pytest.raises(ImageError) as exc:
        open_image(encode(Image.new("L", (2000, 2000)), "PNG"), max_pixels=1_000_000)
    assert exc.value.reason == "too_many_pixels" and "1000000" in str(exc.value)


def test_draft_decoding_keeps_at_least_the_requested_size():
    big = encode(Image.new("RGB", (1600, 1200), (10, 200, 10)), "JPEG")
    img = decode_image(big, draft_size=256)
    assert min(img.size) >= 256 and img.size[0] < 1600


def test_a_photo_a_little_larger_than_the_model_needs_is_decoded_at_eighths():
    """640x480 for a 256-px resize: 5/8 (400x300), where Pillow's draft mode (halves only) decoded it whole."""
    photo = encode(Image.new("RGB", (640, 480), (200, 30, 10)), "JPEG", quality=90)
    img = decode_image(photo, draft_size=256)
    assert img.size == (400, 300) and img.mode == "RGB"
    assert np.abs(np.asarray(img, np.int16) - (200, 30, 10)).max() <= 3
    assert decode_image(photo).size == (640, 480)  # training decodes whole
    assert decode_image(photo, draft_size=450).size == (640, 480)  # no eighth to spare: whole
    gray = decode_image(encode(Image.new("L", (640, 480), 90), "JPEG"), channels=1, draft_size=256)
    assert (gray.size, gray.mode) == ((400, 300), "L")


def test_scaled_decoding_leaves_what_it_would_not_decode_as_pillow_does_to_pillow():
    rotated = Image.new("RGB", (640, 480), (10, 200, 10))
    exif = rotated.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    img = decode_image(encode(rotated, "JPEG", exif=exif.tobytes()), draft_size=256)
    assert img.size == (480, 640)  # upright, decoded whole by Pillow
    cmyk = decode_image(encode(Image.new("CMYK", (640, 480), (0, 0, 0, 0)), "JPEG"), draft_size=256)
    assert cmyk.mode == "RGB" and cmyk.size == (640, 480)
    truncated = encode(Image.effect_noise((640, 480), 60).convert("RGB"), "JPEG")[:-2000]
    with pytest.raises(ImageError) as exc:  # refused by simplejpeg; Pillow says why
        decode_image(truncated, draft_size=256)
    assert exc.value.reason == "truncated"


@pytest.mark.slow
def test_fuzz_decode_briefly(tmp_path):
    """A short Atheris run of the decode-and-validate function (CI); longer runs: tests/fuzz_decode.py."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("fuzz_decode.py")
    cmd = [sys.executable, str(script), "-max_total_time=20", "-rss_limit_mb=4096",
           f"-artifact_prefix={tmp_path}/crash-", str(tmp_path / "corpus")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=script.parents[1])
    tail = done.stderr[-3000:]
    assert done.returncode == 0, tail
    assert "Done" in tail and not list(tmp_path.glob("crash-*")), tail


def test_a_tiff_of_too_many_strips_is_refused_before_decoding():
    """Within the pixel limit, but one row a strip: the decode budget refuses it at once, with what to do."""
    import io
    import time

    from training.imaging import ImageError, decode_image

    buf = io.BytesIO()
    Image.new("L", (16, 40_000)).save(buf, "TIFF", tiffinfo={278: 1})  # RowsPerStrip 1: 40,000 strips
    start = time.perf_counter()
    with pytest.raises(ImageError, match="40000 strips or tiles; at most 1024") as err:
        decode_image(buf.getvalue())
    assert err.value.reason == "too_complex" and time.perf_counter() - start < 1.0
    ok = io.BytesIO()
    Image.new("RGB", (640, 480)).save(ok, "TIFF")  # Pillow's default strips
    assert decode_image(ok.getvalue()).size == (640, 480)


def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding():
    """Start-of-scan markers cannot occur inside entropy-coded data, so counting them is exact and cheap."""
    from training.imaging import MAX_JPEG_SCANS, ImageError, decode_image

    progressive = encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG", progressive=True)
    assert decode_image(progressive).size == (64, 64)  # an ordinary progressive JPEG: about 10 scans
    head, _, tail = progressive.rpartition(b"\xff\xd9")  # append empty scans before the end-of-image marker
    sos = progressive[progressive.index(b"\xff\xda") :][:14]  # one scan header, reused
    bomb = head + sos * (MAX_JPEG_SCANS + 1) + b"\xff\xd9" + tail
    for draft in (None, 32):  # serving decodes JPEGs in draft mode: the same rule holds there
        with pytest.raises(ImageError, match=f"scans; at most {MAX_JPEG_SCANS}") as err:
            decode_image(bomb, draft_size=draft)
        assert err.value.reason == "too_complex"
