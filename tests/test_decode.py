"""The one preprocessing (studylib.data.cache.decode) on images as people send them: EXIF orientation,
16-bit samples and transparency. Train, evaluation and serving all decode through it."""
import io

import numpy as np
from PIL import Image

from studylib.data.cache import decode

SIZE = 16


def upright() -> Image.Image:
    """An image whose orientation shows: red on the left, blue on the right, a green band at the top."""
    a = np.zeros((24, 40, 3), np.uint8)
    a[:, :20] = (220, 30, 30)
    a[:, 20:] = (30, 30, 220)
    a[:5] = (30, 200, 30)
    return Image.fromarray(a)


def encoded(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


def oriented(fmt: str) -> Image.Image:
    """The upright image stored turned a quarter counter-clockwise, with EXIF orientation 6 (display it
    rotated 90 degrees clockwise), as a phone held sideways writes it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(upright().transpose(Image.Transpose.ROTATE_90), fmt, exif=exif.tobytes())


def test_exif_orientation_is_honoured():
    want = decode(encoded(upright(), "PNG"), SIZE)
    assert decode(oriented("PNG"), SIZE).equal(want)
    # JPEG (lossy, chroma subsampled, decoded through libjpeg's draft scaling): the same picture within
    # JPEG's error at the colour edges; turned the wrong way it would differ by ~100 on average
    jpeg = decode(oriented("JPEG"), SIZE).float()
    assert (jpeg - decode(encoded(upright(), "JPEG"), SIZE).float()).abs().mean() < 5


def test_16_bit_png_is_scaled_not_clipped_to_white():
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    img = encoded(Image.fromarray(ramp), "PNG")
    assert img.mode.startswith("I;16")
    out = decode(img, 32)
    want = np.rint(ramp / 257).astype(np.uint8)
    assert out[0].numpy().min() == 0 and out[0].numpy().max() == 255
    assert np.abs(out[0].numpy().astype(int) - want).max() <= 1   # bilinear at the same size: the samples
    assert out[0].equal(out[1]) and out[1].equal(out[2])          # grey stays grey


def test_transparency_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)     # black, fully transparent on the left, opaque on the right
    rgba[:, 4:, 3] = 255
    rgba[:, 2:4, 3] = 128                    # half transparent black in between
    out = decode(encoded(Image.fromarray(rgba, "RGBA"), "PNG"), 8).numpy()
    assert (out[:, :, :2] == 255).all() and (out[:, :, 4:] == 0).all()
    assert (np.abs(out[:, :, 2:4].astype(int) - 127) <= 1).all()
    la = Image.fromarray(rgba[:, :, [0, 3]], "LA")
    assert np.array_equal(decode(encoded(la, "PNG"), 8).numpy(), out)
    palette = Image.fromarray(rgba[:, :, 0] // 255, "P")     # index 0 transparent, index 0 = black
    palette.putpalette([0, 0, 0] * 256)
    p = decode(encoded(palette, "PNG", transparency=0), 8).numpy()
    assert (p == 255).all()
