"""One decoder for image files: bit depths, EXIF orientation, refusals; and the writer's permissions."""

import os
import stat
import warnings

import numpy as np
import pytest
from PIL import Image

from sklearn_panda import PandaDetector
from sklearn_panda._io.images import read_image, write_files
from sklearn_panda._io.report import open_rgb

from conftest import TINY_IMAGES


def ramp16(height=8, width=32):
    return np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (height, 1))


def test_a_16_bit_png_keeps_its_values(tmp_path):
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp16()).save(path)
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == (8, 32, 3)
    np.testing.assert_allclose(image[0, :, 0], np.linspace(0, 1, 32), atol=1e-4)
    # Pillow's convert("RGB") would have made nearly all of it white.
    assert (image > 0.99).mean() < 0.1


def test_16_bit_tiff_and_float_tiff(tmp_path):
    Image.fromarray(ramp16()).save(tmp_path / "ramp16.tif")
    np.testing.assert_allclose(read_image(tmp_path / "ramp16.tif")[0, :, 1], np.linspace(0, 1, 32), atol=1e-4)
    Image.fromarray(np.linspace(0, 1, 32, dtype=np.float32)[None].repeat(4, 0)).save(tmp_path / "float.tif")
    np.testing.assert_allclose(read_image(tmp_path / "float.tif")[0, :, 2], np.linspace(0, 1, 32), atol=1e-7)


@pytest.mark.parametrize(
    "values, words",
    [
        (np.full((4, 4), 3.5, dtype=np.float32), ["float image", "[3.5, 3.5]", "[0, 1]"]),
        (np.full((4, 4), -7, dtype=np.int32), ["integer image", "-7", "16 bits"]),
        (np.full((4, 4), 70000, dtype=np.int32), ["integer image", "70000", "16 bits"]),
    ],
)
def test_values_that_are_not_intensities_are_refused_by_name(values, words, tmp_path):
    path = tmp_path / "odd.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ValueError) as error:
        read_image(path)
    assert str(path) in str(error.value)
    for word in words:
        assert word in str(error.value)


def _png16(path, values, colour_type):
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): filter 0 on every row."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = values.shape[:2]
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels, colour_type", [(3, 2), (2, 4), (4, 6)])
def test_16_bit_colour_or_alpha_pngs_are_refused_not_cut_to_8_bits(tmp_path, channels, colour_type):
    # A 12-bit camera image in a 16-bit colour PNG: Pillow keeps only each sample's high byte.
    values = np.random.default_rng(0).integers(0, 4096, size=(6, 5, channels))
    _png16(tmp_path / "camera.png", values, colour_type)
    with pytest.raises(ValueError, match="16-bit image with colour or alpha.*IMREAD_UNCHANGED"):
        read_image(tmp_path / "camera.png")
    # The hand-written file is a valid 16-bit PNG: as greyscale, Pillow reads it at its depth.
    _png16(tmp_path / "grey.png", values[..., 0], 0)
    np.testing.assert_allclose(read_image(tmp_path / "grey.png")[..., 0], values[..., 0] / 65535, atol=1e-7)


def test_a_16_bit_pgm_pillow_opens_as_32_bit_mode_keeps_its_16_bit_rule(tmp_path):
    height, width = ramp16().shape  # written by hand: Pillow 10 cannot write 16-bit PGMs
    (tmp_path / "ramp16.pgm").write_bytes(f"P5 {width} {height} 65535\n".encode() + ramp16().astype(">u2").tobytes())
    assert Image.open(tmp_path / "ramp16.pgm").mode == "I"
    np.testing.assert_allclose(read_image(tmp_path / "ramp16.pgm")[0, :, 0], np.linspace(0, 1, 32), atol=1e-4)


def test_integer_files_holding_8_bit_values_warn_once(tmp_path):
    # An int32 TIFF of 0-255 values read almost black without a word.
    values = np.random.default_rng(0).integers(2, 256, size=(4, 6)).astype(np.int32)
    for index in range(3):
        Image.fromarray(values).save(tmp_path / f"int32-{index}.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        images = [read_image(tmp_path / f"int32-{index}.tif") for index in range(3)]
    assert [str(w.message)[:60] for w in caught] == ["Some 16-bit or 32-bit integer image files hold values up to "]
    np.testing.assert_allclose(images[0][..., 0], values / 65535, atol=1e-7)
    Image.fromarray(values * 200).save(tmp_path / "int32-wide.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(tmp_path / "int32-wide.tif")


def test_tiffs_of_several_full_size_pages_are_refused_other_frames_are_not(tmp_path):
    page = np.full((8, 8, 3), 120, dtype=np.uint8)
    Image.fromarray(page).save(tmp_path / "pages.tif", save_all=True, append_images=[Image.fromarray(page + 9)])
    with pytest.raises(ValueError, match="is a TIFF of 2 pages of its size"):
        read_image(tmp_path / "pages.tif")
    # The page a user chose, as a PIL image; a page with a thumbnail; a JPEG with a preview (MPO).
    with Image.open(tmp_path / "pages.tif") as opened:
        opened.seek(1)
        assert read_image(opened).max() == 129
    thumbnail = Image.fromarray(page[:4, :4])
    Image.fromarray(page).save(tmp_path / "thumb.tif", save_all=True, append_images=[thumbnail])
    assert read_image(tmp_path / "thumb.tif").shape == (8, 8, 3)
    Image.fromarray(page).save(tmp_path / "photo.jpg", format="MPO", save_all=True, append_images=[thumbnail])
    assert Image.open(tmp_path / "photo.jpg").n_frames == 2
    assert read_image(tmp_path / "photo.jpg").shape == (8, 8, 3)


def test_formats_whose_decoder_arguments_are_no_raw_mode_read_as_before(tmp_path):
    # A GIF's decoder arguments hold numbers; a 12-bit PGM's hold ("L", 4095); a 5-6-5 BMP's "BGR;16".
    Image.fromarray(np.full((4, 4, 3), 50, np.uint8)).save(tmp_path / "one.gif")
    assert read_image(tmp_path / "one.gif").dtype == np.uint8
    values = (np.arange(16).reshape(4, 4) * 270).astype(np.uint16)
    (tmp_path / "twelve.pgm").write_bytes(b"P5 4 4 4095\n" + values.astype(">u2").tobytes())
    assert read_image(tmp_path / "twelve.pgm").max() == pytest.approx(4050 / 4095, abs=1e-4)
    with Image.open(tmp_path / "twelve.pgm") as opened:
        opened.load()  # decoded: no tiles left, read as before
        assert read_image(opened).max() == pytest.approx(4050 / 4095, abs=1e-4)


def test_decoder_arguments_as_plain_tuples_are_read_as_named_ones():
    """Pillow before 11 gives tiles as plain tuples (no ``.args``): the check reads both."""
    from sklearn_panda._io.images import _check_decodable_depth

    class Opened:
        tile = [("zip", (0, 0, 4, 4), 41, "RGB;16B")]

    with pytest.raises(ValueError, match="RGB;16B"):
        _check_decodable_depth(Opened(), "old.png")
    Opened.tile = [("raw", (0, 0, 4, 4), 66, ("BGR;16", 16, -1))]
    _check_decodable_depth(Opened(), "rgb565.bmp")


def test_exif_orientation_is_applied(tmp_path):
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    image[:, :5] = 255  # a bright band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored image is to be turned 90 degrees clockwise
    Image.fromarray(image).save(tmp_path / "turned.jpg", exif=exif, quality=100)
    decoded = read_image(tmp_path / "turned.jpg")
    assert decoded.shape == (20, 10, 3)
    assert decoded[:5].mean() > 200 and decoded[-5:].mean() < 50  # the band is now on top


def test_eight_bit_modes_stay_uint8_and_alpha_is_dropped():
    assert read_image(Image.new("RGBA", (3, 2), (10, 20, 30, 0))).tolist()[0][0] == [10, 20, 30]
    assert read_image(Image.new("1", (3, 2), 1)).dtype == np.uint8


def test_a_detector_reads_16_bit_files_as_their_8_bit_equivalents_score(tmp_path):
    rng = np.random.default_rng(0)
    images16 = (rng.random((10, 20, 20)) * 65535).astype(np.uint16)
    paths16, paths8 = [], []
    for i, image in enumerate(images16):
        Image.fromarray(image).save(tmp_path / f"{i}-16.png")
        Image.fromarray((image / 257).round().astype(np.uint8)).save(tmp_path / f"{i}-8.png")
        paths16.append(str(tmp_path / f"{i}-16.png"))
        paths8.append(str(tmp_path / f"{i}-8.png"))
    detector = PandaDetector(**TINY_IMAGES, n_steps=0, random_state=0).fit(paths8)
    # The 16-bit files carry what the 8-bit ones do (and a little more): nearly the same scores.
    np.testing.assert_allclose(detector.score_samples(paths16), detector.score_samples(paths8), rtol=0.05)
    # And a mixed batch of both works.
    assert detector.score_samples(paths8[:2] + paths16[:2]).shape == (4,)


def test_report_thumbnails_of_16_bit_files_are_not_white(tmp_path):
    Image.fromarray(ramp16()).save(tmp_path / "ramp16.png")
    thumbnail = np.asarray(open_rgb(tmp_path / "ramp16.png"))
    assert thumbnail.dtype == np.uint8 and 100 < thumbnail.mean() < 155


def test_written_files_get_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_files({tmp_path / "a.bin": b"x"})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == 0o644


def test_save_writes_files_others_can_read(tmp_path):
    detector = PandaDetector(**TINY_IMAGES, n_steps=0, random_state=0).fit(np.zeros((4, 8, 8), dtype=np.uint8))
    previous = os.umask(0o022)
    try:
        detector.save(tmp_path / "model.pt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "model.pt").st_mode) == 0o644
    assert os.listdir(tmp_path) == ["model.pt"]


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    write_files({target: b"new"})
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_writing_through_a_symbolic_link_writes_its_target(tmp_path):
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "v2.pt"
    target.write_bytes(b"old")
    link = tmp_path / "current.pt"
    link.symlink_to(target)
    write_files({link: b"new"})
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["current.pt", "models"]


def test_one_file_named_twice_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"old")
    (tmp_path / "b.pt").symlink_to("a.pt")
    with pytest.raises(ValueError, match="are one file; it would be written twice"):
        write_files({tmp_path / "a.pt": b"1", tmp_path / "b.pt": b"2"})
    assert (tmp_path / "a.pt").read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["a.pt", "b.pt"]
