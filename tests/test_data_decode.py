"""Decoding rules at their edges: memory of large images, orientation, pixel depths, array headers, labels.

Every file is generated in the test (the sample photos scikit-image ships, synthetic arrays); none is
committed. Memory is measured in a child process (its peak resident size above what importing vaekit took).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile
from skimage import data as samples

import vaekit.data.memory as memory_module
from vaekit.cli import main
from vaekit.data import BadInputError, load_own_data
from vaekit.data.arrays import read_array_file
from vaekit.data.images import ImageProblem, decode_image, fit, probe_image
from vaekit.data.pixels import luma, pixel_rule, to_8bit
from vaekit.data.pngbands import png_layout
from vaekit.data.splits import content_digest

ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def photo(size: int = 48) -> np.ndarray:
    return np.ascontiguousarray(samples.astronaut()[100 : 100 + size, 120 : 120 + size])


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def last_line(err: str) -> str:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1]


# --- memory --------------------------------------------------------------------------------------------------

PEAK = """
import resource, sys
from vaekit.data.images import decode_image, probe_image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[2] == "probe":
    probe_image(sys.argv[1])
else:
    decode_image(sys.argv[1], channels=3, image_size=None if sys.argv[2] == "full" else int(sys.argv[2]))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


def peak_bytes(path: Path, what: str) -> int:
    done = subprocess.run([sys.executable, "-c", PEAK, str(path), what], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.fixture(scope="module")
def large_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6000x6000 RGBA PNG of a few hundred KB that decodes to 144 MB of pixels."""
    side = 6000
    pixels = np.zeros((side, side, 4), np.uint8)
    pixels[..., 0], pixels[..., 3] = 200, 128
    pixels[: side // 2, :, 1] = 50
    path = tmp_path_factory.mktemp("large") / "large.png"
    Image.fromarray(pixels).save(path, compress_level=1)
    return path


def test_a_large_png_costs_about_its_output(large_png: Path) -> None:
    decoded, output = 6000 * 6000 * 4, 6000 * 6000 * 3
    assert peak_bytes(large_png, "probe") < 16 << 20  # the header pass decodes no pixel
    assert peak_bytes(large_png, "64") < 0.25 * decoded  # was about 8x: several full-size copies
    assert peak_bytes(large_png, "2") < 0.25 * decoded  # a tiny output does not make the bands huge
    assert peak_bytes(large_png, "full") < 1.75 * output


def reference(stored: bytes, grey: bool, image_size: int | None = None) -> np.ndarray:
    """What Pillow's whole-image decode gives under the same rules (no bands, no PNG inflated by vaekit)."""
    im = Image.open(io.BytesIO(stored))
    im.load()
    picture = to_8bit(im, pixel_rule(im), grey)
    if image_size is None:
        return np.asarray(picture)
    return fit(np.asarray(picture.reduce(max(1, min(picture.size) // (2 * image_size)))), image_size)


BAND_CASES = ("RGBA", "RGB", "L", "LA", "P", "RGB-tRNS", "L-tRNS", "P-tRNS")
BAND_OPTIONS = {"RGB-tRNS": {"transparency": (10, 20, 30)}, "L-tRNS": {"transparency": 77},
                "P-tRNS": {"transparency": 3}}


def band_case(case: str) -> Image.Image:
    """A random picture of 720,000 pixels (several bands) in the mode ``case`` names."""
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (900, 800, 4), dtype=np.uint8))
    mode = case.split("-")[0]
    if mode == "P":
        return rgba.convert("RGB").quantize(64, method=Image.Quantize.FASTOCTREE)
    return rgba.convert(mode)


@pytest.mark.parametrize("case", BAND_CASES)
def test_a_png_decoded_in_bands_equals_the_whole_image_decode(case: str) -> None:
    stored = encode(band_case(case), "PNG", compress_level=1, **BAND_OPTIONS.get(case, {}))
    assert png_layout(io.BytesIO(stored)) is not None
    for grey in (False, True):
        assert np.array_equal(decode_image(stored, channels=1 if grey else 3), reference(stored, grey))
        assert np.array_equal(decode_image(stored, channels=1 if grey else 3, image_size=32),
                              reference(stored, grey, 32))


def png_chunks(stored: bytes) -> list[bytes]:
    chunks, at = [], 8
    while at < len(stored):
        length = struct.unpack(">I", stored[at : at + 4])[0]
        chunks.append(stored[at : at + 12 + length])
        at += 12 + length
    return chunks


def test_a_damaged_large_png_is_a_bad_file() -> None:
    stored = encode(band_case("RGB"), "PNG", compress_level=1)
    chunks = png_chunks(stored)
    idat = [i for i, c in enumerate(chunks) if c[4:8] == b"IDAT"]
    assert len(idat) > 2
    cut = stored[:8] + b"".join(c for i, c in enumerate(chunks) if i not in idat[len(idat) // 2 :])
    with pytest.raises(ImageProblem, match=r"truncated PNG image \(its pixel data ends after [\d,]+ of 900 rows\)"):
        decode_image(cut, channels=3)
    flipped = bytearray(stored)
    flipped[len(stored) // 2] ^= 0xFF
    with pytest.raises(ImageProblem, match=r"corrupt PNG image \(a pixel data chunk fails its CRC check\)"):
        decode_image(bytes(flipped), channels=3)


def with_chunk_before_iend(png: bytes, kind: bytes, body: bytes) -> bytes:
    return png[:-12] + chunk(kind, body) + png[-12:]


def test_png_exif_after_the_pixels_is_read_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    pixels = photo()[:30]
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored rotated: the viewer turns it 90 degrees clockwise
    stored = with_chunk_before_iend(encode(Image.fromarray(pixels), "PNG"), b"eXIf", exif.tobytes())
    assert np.array_equal(decode_image(stored, channels=3), np.rot90(pixels, k=-1))

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the header pass decoded the pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    probe = probe_image(stored)
    assert (probe.height, probe.width) == (48, 30)


def test_data_too_large_for_memory_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        Image.fromarray(photo()).save(tmp_path / f"{i}.png")
    import vaekit.data.folder

    def never(*args: object, **kwargs: object) -> None:  # the data must be refused before it is decoded
        raise AssertionError("decoding started")

    monkeypatch.setattr(vaekit.data.folder, "_decode_all", never)
    monkeypatch.setattr(memory_module, "available_bytes", lambda: 10 << 20)
    with pytest.raises(BadInputError) as refused:
        load_own_data(tmp_path, image_size=8192, progress=False)
    assert "the 3 decoded 8192x8192 images would take 604.0 MB, more than the 10.5 MB of memory available; pass a " \
           "smaller --image-size" in one_line(refused)
    # Training refuses it even sooner, from the size of a training step on such images.
    code, err = run_cli(["train", "--data", str(tmp_path), "--image-size", "8192", "--out", str(tmp_path / "run"),
                         "--quiet"], capsys)
    assert code == 2 and "--image-size" in last_line(err)
    assert not (tmp_path / "run").exists()


def test_out_of_memory_with_a_large_image_size_blames_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import vaekit.training

    def exhausted(*args: object, **kwargs: object) -> None:
        raise MemoryError()

    monkeypatch.setattr(vaekit.training, "train", exhausted)
    code, err = run_cli(["train", "--data", str(tmp_path), "--image-size", "8192"], capsys)
    assert code == 2 and "8192x8192 images (--image-size 8192) are too large" in err and "smaller model" not in err
    code, err = run_cli(["train", "--data", str(tmp_path), "--image-size", "64"], capsys)
    assert code == 1 and "try a smaller model" in err


# --- orientation and pixel depths ----------------------------------------------------------------------------


def test_tiff_with_an_orientation_tag_loads_upright(tmp_path: Path) -> None:
    pixels = photo()[:30]
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored = encode(Image.fromarray(pixels), "TIFF", exif=exif.tobytes())
    probe = probe_image(stored)
    upright = np.rot90(pixels, k=-1)
    assert (probe.height, probe.width) == upright.shape[:2]
    assert np.array_equal(decode_image(stored, channels=3), upright)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "0.tif").write_bytes(stored)
    other = encode(Image.fromarray(255 - pixels), "TIFF", exif=exif.tobytes())  # a second, different image
    (tmp_path / "d" / "1.tif").write_bytes(other)
    splits, info = load_own_data(tmp_path / "d", progress=False, cache=False)
    assert info["image_shape"] == [48, 30, 3]
    loaded = np.concatenate([splits.train_images, splits.test_images])
    assert any(np.array_equal(image, upright) for image in loaded)
    assert any(np.array_equal(image, 255 - upright) for image in loaded)


TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("fmt", ["TIFF", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_is_applied_once(fmt: str, orientation: int) -> None:
    pixels = photo()[:30]
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    options = {"lossless": True} if fmt == "WEBP" else {}
    stored = encode(Image.fromarray(pixels), fmt, exif=exif.tobytes(), **options)
    method = TRANSPOSE.get(orientation)
    upright = np.asarray(Image.fromarray(pixels).transpose(method)) if method is not None else pixels
    probe = probe_image(stored)
    assert (probe.height, probe.width) == upright.shape[:2]
    assert np.array_equal(decode_image(stored, channels=3), upright)


def test_float_and_32_bit_integer_tiffs_keep_their_values_or_are_refused() -> None:
    levels = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    as_int32 = encode(Image.fromarray(levels.astype(np.int32)), "TIFF")
    assert np.array_equal(decode_image(as_int32, channels=1), levels)
    unit = encode(Image.fromarray(levels.astype(np.float32) / 255), "TIFF")
    assert np.array_equal(decode_image(unit, channels=1), levels)
    with pytest.raises(ImageProblem, match=r"float pixels range from 0 to 230, but vaekit reads float images as 0-1"):
        decode_image(encode(Image.fromarray(levels.astype(np.float32)), "TIFF"), channels=1)
    wide = encode(Image.fromarray(levels.astype(np.int32) * 100), "TIFF")
    with pytest.raises(ImageProblem, match=r"32-bit integer pixels range from 0 to 23000, but vaekit reads"):
        decode_image(wide, channels=1)


def test_lab_tiff_becomes_the_rgb_it_encodes() -> None:
    rgb = photo()
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    stored = encode(ImageCms.applyTransform(Image.fromarray(rgb), to_lab), "TIFF")
    assert Image.open(io.BytesIO(stored)).mode == "LAB"
    got = decode_image(stored, channels=3).astype(int)
    assert np.abs(got - rgb).max() <= 4
    assert np.abs(decode_image(stored, channels=1).astype(int) - luma(rgb)).max() <= 4


def test_transparent_grey_level_is_white_at_16_bits_as_at_8() -> None:
    levels = np.array([[0, 100, 200, 255]] * 3, np.uint8)
    eight = decode_image(encode(Image.fromarray(levels), "PNG", transparency=100), channels=1)
    deep = encode(Image.fromarray(levels.astype(np.uint16) * 257), "PNG", transparency=100 * 257)
    assert Image.open(io.BytesIO(deep)).mode.startswith("I")
    assert eight[0].tolist() == [0, 255, 200, 255]
    assert np.array_equal(decode_image(deep, channels=1), eight)
    assert np.array_equal(decode_image(deep, channels=3), np.repeat(eight[..., None], 3, axis=2))


def png_of(width: int, height: int, depth: int, colour: int, rows: bytes, *extra: bytes) -> bytes:
    """A PNG written by hand: Pillow cannot write 16-bit colour."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(extra) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_16_bit_colour_with_a_transparent_colour_is_refused() -> None:
    key = (0x1234, 0x5678, 0x9ABC)
    row = np.array([key, (0x1200, 0x5600, 0x9A00), (65535, 65535, 65535)], ">u2").tobytes()
    stored = png_of(3, 2, 16, 2, (b"\0" + row) * 2, chunk(b"tRNS", struct.pack(">HHH", *key)))
    with pytest.raises(ImageProblem, match="16-bit colour PNG with a transparent colour, which Pillow reads at 8 bits"):
        decode_image(stored, channels=3)
    opaque = png_of(3, 2, 16, 2, (b"\0" + row) * 2)
    assert decode_image(opaque, channels=3)[0].tolist() == [[0x12, 0x56, 0x9A], [0x12, 0x56, 0x9A], [255, 255, 255]]


# --- array files ---------------------------------------------------------------------------------------------


def npy_bytes(descr: str, shape: str, data: bytes) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (117 - len(header) - 10) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + data


@pytest.mark.parametrize("descr", ["|u1", "<f4"])
def test_npy_header_with_a_negative_dimension_is_one_line_exit_2(descr: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "neg.npy"
    path.write_bytes(npy_bytes(descr, "(3, 4, -4)", bytes(64)))
    with pytest.raises(BadInputError) as info:
        read_array_file(path)
    assert "declares shape (3, 4, -4), with a negative dimension; the file is corrupt" in one_line(info)
    code, err = run_cli(["train", "--data", str(path), "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert code == 2 and "negative dimension" in last_line(err) and "Traceback" not in err


def test_text_named_npy_is_said_to_be_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.npy"
    path.write_text("0 1 2\n3 4 5\n")
    with pytest.raises(BadInputError) as info:
        read_array_file(path)
    assert "is not a NumPy .npy file (it is a text file)" in one_line(info)
    assert "Python objects" not in str(info.value)


def test_tiny_npz_declaring_a_terabyte_is_refused_before_reading(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy_bytes("|u1", "(1000000, 1000, 1000)", bytes(1000)))
    assert path.stat().st_size < 1000
    with pytest.raises(BadInputError) as info:
        read_array_file(path)
    assert "declares (1000000, 1000, 1000) uint8 (1,000,000,000,000 bytes) but its zip entry holds 1,000" \
        in one_line(info)
    code, err = run_cli(["train", "--data", str(path), "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert code == 2 and "out of memory" not in err and "zip entry" in last_line(err)


def test_npz_larger_than_the_memory_is_refused_before_reading(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez_compressed(tmp_path / "zeros.npz", x=np.zeros((1000, 64, 64), np.uint8))
    monkeypatch.setattr(memory_module, "available_bytes", lambda: 1 << 20)
    with pytest.raises(BadInputError) as info:
        read_array_file(tmp_path / "zeros.npz")
    assert "zeros.npz: its arrays would take 4.1 MB, more than the 1.0 MB of memory available" in one_line(info)


@pytest.mark.parametrize("name", ["x.npy", "x"])  # numpy reads a member that is no .npy whole, as bytes
def test_npz_entry_claiming_more_than_deflate_can_hold_is_refused(name: str, tmp_path: Path) -> None:
    path = tmp_path / "lying.npz"
    member = npy_bytes("|u1", "(4000000, 8, 8)", bytes(1000))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, member)
    raw = bytearray(path.read_bytes())
    claimed = struct.pack("<I", len(member) - 1000 + 256_000_000)  # the header, and the data it declares
    central = raw.index(b"PK\x01\x02")
    assert raw[22:26] == raw[central + 24 : central + 28] == struct.pack("<I", len(member))
    raw[22:26] = raw[central + 24 : central + 28] = claimed  # the entry's uncompressed size, in both headers
    path.write_bytes(bytes(raw))
    with pytest.raises(BadInputError) as info:
        read_array_file(path)
    assert "lying.npz[x]: claims to expand from" in one_line(info) and "to 256,000,118 bytes, more than deflate " \
        "can; the file is corrupt" in str(info.value)


# --- labels and ignored files --------------------------------------------------------------------------------


def test_identifier_labels_become_classes_named_by_their_values(tmp_path: Path) -> None:
    x = np.random.default_rng(1).integers(0, 256, (40, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "ids.npz", x=x, y=np.array([1443537, 1440764] * 20))
    raw = read_array_file(tmp_path / "ids.npz")
    assert raw.class_names == ["1440764", "1443537"] and raw.labels.tolist() == [1, 0] * 20
    assert raw.digest == content_digest(x, np.array([1443537, 1440764] * 20))  # as recorded by earlier runs
    splits, info = load_own_data(tmp_path / "ids.npz")
    assert info["class_names"] == ["1440764", "1443537"] and set(splits.train_labels.tolist()) == {0, 1}
    np.savez(tmp_path / "dense.npz", x=x, y=np.arange(40) % 4)
    dense = read_array_file(tmp_path / "dense.npz")
    assert dense.class_names is None and dense.labels.tolist() == (np.arange(40) % 4).tolist()


def test_split_keys_are_renumbered_together(tmp_path: Path) -> None:
    x = np.zeros((4, 4, 4), np.uint8)
    np.savez(tmp_path / "s.npz", x_train=x, y_train=np.array([7, 9, 7, 9]), x_test=x, y_test=np.array([9, 3, 3, 7]))
    raw = read_array_file(tmp_path / "s.npz")
    assert raw.class_names == ["3", "7", "9"] and raw.labels.tolist() == [1, 2, 1, 2, 2, 0, 0, 1]


def test_files_with_other_extensions_are_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        Image.fromarray(photo(8) // (i + 1)).save(tmp_path / f"{i}.png")
    (tmp_path / "holiday.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (tmp_path / "scan").write_bytes(b"P5 1 1 255\n\0")
    load_own_data(tmp_path, progress=False, cache=False)
    warning = [line for line in capsys.readouterr().err.splitlines() if "ignored" in line]
    assert len(warning) == 1
    assert "ignored 2 other file(s) such as holiday.heic, scan; vaekit reads PNG" in warning[0]


def test_record_of_a_renumbered_run_is_json(tmp_path: Path) -> None:
    x = np.arange(6 * 16, dtype=np.uint8).reshape(6, 4, 4)
    splits, info = load_own_data((x, np.array([10, 20, 10, 20, 10, 20])))
    assert json.loads(json.dumps(info))["class_names"] == ["10", "20"]
