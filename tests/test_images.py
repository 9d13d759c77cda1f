"""Medical images to RGB: every format and mode, DICOM rendering, clear errors, padding, API encoding."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from stmed.errors import ImageError
from stmed.images import CLIP_MEAN, encode_for_api, list_images, load_image, pad_to_square, resolve_path

ROOT = Path(__file__).resolve().parents[1]
JPEG = ROOT / "examples" / "images" / "synpic33378.jpg"  # a real VQA-RAD radiograph, 470x383
CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))


@pytest.fixture(scope="module")
def source() -> Image.Image:
    return Image.open(JPEG).convert("RGB")


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def check_rgb(img: Image.Image, size: tuple[int, int]) -> None:
    assert img.mode == "RGB", img.mode
    assert img.size == size, (img.size, size)


# --- raster formats ------------------------------------------------------------------------------

def test_real_jpeg(source):
    img, info = load_image(JPEG)
    check_rgb(img, source.size)
    assert (info.format, info.mode, info.size) == ("JPEG", "RGB", source.size)
    assert np.array_equal(pixels(img), pixels(source))


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("TIFF", ".tif"), ("BMP", ".bmp")])
def test_lossless_formats_round_trip_exactly(tmp_path, source, fmt, suffix):
    path = tmp_path / f"img{suffix}"
    source.save(path, format=fmt)
    img, info = load_image(path)
    check_rgb(img, source.size)
    assert info.format == fmt
    assert np.array_equal(pixels(img), pixels(source)), f"{fmt} pixels changed"


def test_webp(tmp_path, source):
    path = tmp_path / "img.webp"
    source.save(path, format="WEBP", lossless=True)
    img, info = load_image(path)
    check_rgb(img, source.size)
    assert info.format == "WEBP"
    assert np.array_equal(pixels(img), pixels(source))


def test_grayscale_png(tmp_path, source):
    grey = source.convert("L")
    grey.save(tmp_path / "g.png")
    img, info = load_image(tmp_path / "g.png")
    check_rgb(img, source.size)
    assert info.mode == "L"
    arr = pixels(img)
    assert np.array_equal(arr[..., 0], pixels(grey)) and np.array_equal(arr[..., 0], arr[..., 2])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grey_is_scaled_to_8_bits(tmp_path, source, suffix):
    grey = pixels(source.convert("L")).astype(np.uint16)
    assert grey.min() == 0 and grey.max() == 255, "the fixture image should span the full range"
    Image.fromarray(grey * 16 + 100).save(tmp_path / f"ct16{suffix}")  # 12-bit-like values with an offset
    raw = Image.open(tmp_path / f"ct16{suffix}")
    assert raw.mode.startswith("I"), f"PIL did not keep 16 bits: {raw.mode}"
    img, info = load_image(tmp_path / f"ct16{suffix}")
    check_rgb(img, source.size)
    assert info.mode == raw.mode and any("scaled min-max" in n for n in info.notes), info
    out = pixels(img)[..., 0]
    assert np.abs(out - grey.astype(np.int16)).max() <= 1, "min-max scaling should recover the 8-bit image"


def test_constant_16bit_image_is_black_not_an_error(tmp_path):
    Image.fromarray(np.full((20, 30), 4000, dtype=np.uint16)).save(tmp_path / "flat.png")
    img, _ = load_image(tmp_path / "flat.png")
    check_rgb(img, (30, 20))
    assert pixels(img).max() == 0


def test_cmyk_jpeg(tmp_path, source):
    source.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    img, info = load_image(tmp_path / "cmyk.jpg")
    check_rgb(img, source.size)
    assert (info.format, info.mode) == ("JPEG", "CMYK")
    diff = np.abs(pixels(img) - pixels(source)).mean()
    assert diff < 6, f"CMYK colours came back wrong (mean abs difference {diff:.1f}); inverted?"


def test_palette_png(tmp_path, source):
    pal = source.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.save(tmp_path / "pal.png")
    img, info = load_image(tmp_path / "pal.png")
    check_rgb(img, source.size)
    assert info.mode == "P"
    assert np.array_equal(pixels(img), pixels(pal.convert("RGB")))


def test_palette_with_transparency_goes_on_black(tmp_path):
    pal = Image.new("P", (10, 4), 1)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(0, (0, 0, 5, 4))  # left half index 0 (red), transparent below
    pal.info["transparency"] = 0
    pal.save(tmp_path / "t.png", transparency=0)
    img, _ = load_image(tmp_path / "t.png")
    arr = pixels(img)
    assert (arr[:, :5] == 0).all(), "transparent pixels should be black"
    assert (arr[:, 5:] == [0, 255, 0]).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_goes_on_black(tmp_path, source, mode):
    base = source.convert(mode[:-1])
    alpha = Image.new("L", source.size, 255)
    alpha.paste(0, (0, 0, source.size[0] // 2, source.size[1]))
    base.putalpha(alpha)
    assert base.mode == mode
    base.save(tmp_path / "a.png")
    img, info = load_image(tmp_path / "a.png")
    check_rgb(img, source.size)
    assert info.mode == mode
    arr, half = pixels(img), source.size[0] // 2
    assert (arr[:, :half] == 0).all(), "fully transparent half should be black"
    expect = pixels(base.convert("RGBA"))[:, half:, :3]
    assert np.array_equal(arr[:, half:], expect), "opaque half unchanged"


# --- DICOM ---------------------------------------------------------------------------------------

def test_ct_dicom_facts():
    img, info = load_image(CT)
    check_rgb(img, (128, 128))
    assert (info.format, info.modality, info.mode) == ("DICOM", "CT", "MONOCHROME2")
    assert info.window == "min-max", "CT_small has no window: min-max over Hounsfield units"
    arr = pixels(img)
    assert arr.min() == 0 and arr.max() == 255
    assert np.array_equal(arr[..., 0], arr[..., 1])


def test_mr_dicom_applies_its_window():
    """MR_small says centre 600 / width 1600: values map by the DICOM linear window, not min-max."""
    img, info = load_image(MR)
    check_rgb(img, (64, 64))
    assert (info.modality, info.window) == ("MR", "centre 600 / width 1600")
    raw = pydicom.dcmread(MR).pixel_array.astype(np.float64)
    c, w = 600 - 0.5, 1600 - 1  # PS3.3 C.11.2.1.2.1
    expect = np.clip((raw - c) / w + 0.5, 0, 1) * 255
    got = pixels(img)[..., 0]
    assert np.abs(got - expect).max() <= 1.0, "window not applied as the file says"
    assert got.min() > 40, "the darkest MR pixel lies well inside the window: it must not be black"


def test_dicom_without_window_uses_min_max(tmp_path):
    ds = pydicom.dcmread(MR)
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(tmp_path / "nowin.dcm")
    img, info = load_image(tmp_path / "nowin.dcm")
    assert info.window == "min-max"
    raw = ds.pixel_array.astype(np.float64)
    expect = (raw - raw.min()) / (raw.max() - raw.min()) * 255
    assert np.abs(pixels(img)[..., 0] - expect).max() <= 1.0


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_monochrome1_is_inverted(tmp_path, name):
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    normal, _ = load_image(get_testdata_file(name))
    inverted, info = load_image(tmp_path / "m1.dcm")
    assert info.mode == "MONOCHROME1" and "MONOCHROME1 inverted" in info.notes
    assert np.array_equal(pixels(inverted), 255 - pixels(normal))


def test_dicom_without_preamble_suffix_is_found_by_content(tmp_path):
    """A DICOM file named without .dcm (as PACS exports often are) is still read as DICOM."""
    (tmp_path / "IM0001").write_bytes(CT.read_bytes())
    img, info = load_image(tmp_path / "IM0001")
    assert info.format == "DICOM" and img.size == (128, 128)


def test_no_dicom_tags_leave_the_loader():
    ds = pydicom.dcmread(CT)
    _, info = load_image(CT)
    facts = info.to_dict()
    assert set(facts) <= {"format", "size", "mode", "modality", "window", "notes"}
    text = json.dumps(facts)
    for secret in (str(ds.PatientName), str(ds.PatientID), str(ds.InstitutionName)):
        assert secret and secret not in text, f"{secret!r} leaked into image facts"


def dicom_file(name: str) -> Path:
    """A DICOM bundled with pydicom; never one it would fetch from the network."""
    path = Path(pydicom.data.get_testdata_file(name, download=False) or "")
    if not path.is_file():
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


def test_ybr_dicom_comes_out_as_rgb():
    """The same test pattern stored as YBR_FULL_422 and as RGB must give the same colours."""
    ybr, info = load_image(dicom_file("SC_ybr_full_422_uncompressed.dcm"))
    rgb, _ = load_image(dicom_file("SC_rgb_rle.dcm"))
    assert info.mode == "YBR_FULL_422" and info.window == "none (colour)"
    diff = np.abs(pixels(ybr) - pixels(rgb)).max()
    assert diff <= 8, f"YBR converted wrongly (max difference {diff}); converted twice?"


def test_palette_colour_dicom_uses_its_palette():
    from pydicom.pixels import apply_color_lut

    path = dicom_file("examples_palette.dcm")
    img, info = load_image(path)
    check_rgb(img, (800, 350))
    assert (info.mode, info.modality, info.window) == ("PALETTE COLOR", "US", "palette")
    ds = pydicom.dcmread(path)
    expect = apply_color_lut(ds.pixel_array, ds).astype(np.float64) / 65535 * 255
    assert np.abs(pixels(img) - expect).max() <= 1
    arr = pixels(img)
    assert (arr[..., 0] != arr[..., 2]).mean() > 0.05, "a palette image should keep its colours"


@pytest.mark.parametrize("name, frames, size", [("SC_rgb_rle_2frame.dcm", 2, (100, 100)), ("rtdose.dcm", 15, (10, 10))])
def test_multiframe_dicom_shows_the_middle_frame(name, frames, size):
    path = dicom_file(name)
    img, info = load_image(path)
    check_rgb(img, size)
    assert f"middle frame of {frames}" in info.notes
    ds = pydicom.dcmread(path)
    if ds.SamplesPerPixel == 3:
        assert np.array_equal(pixels(img), ds.pixel_array[frames // 2].astype(np.int16))


@pytest.mark.parametrize("name, says", [("MR_truncated.dcm", "cannot decode DICOM pixels"),
                                        ("rtplan.dcm", "DICOM file has no image pixels")])
def test_undecodable_dicom_is_one_sentence(name, says):
    path = dicom_file(name)
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_dicom_without_a_decoder_is_one_sentence_or_an_image():
    """12-bit JPEG Extended needs pylibjpeg or GDCM: without one, pydicom lists every failed decoder
    on its own line; stmed must still say it in one."""
    path = dicom_file("JPEG-lossy.dcm")
    try:
        img, _ = load_image(path)
    except ImageError as e:
        assert "cannot decode DICOM pixels" in str(e) and "\n" not in str(e), str(e)
    else:
        check_rgb(img, (256, 1024))


# --- errors --------------------------------------------------------------------------------------

def one_sentence(err: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_truncated_jpeg(tmp_path):
    data = JPEG.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "cut.jpg")
    assert "truncated or corrupt JPEG" in one_sentence(e, tmp_path / "cut.jpg")


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "empty.png")
    assert one_sentence(e, tmp_path / "empty.png").endswith("empty file")


def test_text_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("this is a radiology report, not an image\n" * 10)
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "notes.png")
    assert "not a readable image" in one_sentence(e, tmp_path / "notes.png")


def test_text_named_dcm(tmp_path):
    (tmp_path / "notes.dcm").write_text("not dicom " * 50)
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "notes.dcm")
    assert "not a readable DICOM" in one_sentence(e, tmp_path / "notes.dcm")


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "gone.jpg")
    assert one_sentence(e, tmp_path / "gone.jpg").endswith("image not found")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)


def test_decompression_bomb_guard_runs_before_decoding(tmp_path):
    with pytest.raises(ImageError) as e:
        load_image(JPEG, max_pixels=10_000)
    assert "470x383 = 180,010 pixels, above the limit of 10,000" in one_sentence(e, JPEG)
    # a truncated file over the limit reports the limit: the pixels were never decoded
    data = JPEG.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="above the limit"):
        load_image(tmp_path / "cut.jpg", max_pixels=10_000)
    with pytest.raises(ImageError, match="above the limit of 1,000"):
        load_image(CT, max_pixels=1_000)
    img, _ = load_image(JPEG, max_pixels=470 * 383)  # exactly at the limit is fine
    assert img.size == (470, 383)


# --- padding and encoding ------------------------------------------------------------------------

@pytest.mark.parametrize("size, offset", [((300, 200), (0, 50)), ((201, 400), (99, 0))])
def test_pad_to_square_centres_on_mean_colour(size, offset):
    img = Image.new("RGB", size, (255, 255, 255))
    sq = pad_to_square(img)
    side = max(size)
    assert sq.size == (side, side)
    arr = pixels(sq)
    mean = tuple(int(c * 255) for c in CLIP_MEAN)
    assert mean == (122, 116, 104)
    x, y = offset
    assert (arr[y:y + size[1], x:x + size[0]] == 255).all(), "image sits centred"
    assert tuple(arr[0, 0]) == mean and tuple(arr[-1, -1]) == mean, "bands have LLaVA's mean colour"
    assert (arr == 255).all(axis=2).sum() == size[0] * size[1], "padding covers the rest"


def test_pad_to_square_keeps_square_images():
    img = Image.new("RGB", (64, 64), (1, 2, 3))
    assert pad_to_square(img) is img


def decode(url: str) -> bytes:
    head, _, body = url.partition(",")
    assert head == "data:image/jpeg;base64"
    return base64.b64decode(body)


@pytest.mark.parametrize("max_side, expect", [(200, (200, 163)), (1024, (470, 383))])
def test_encode_for_api_limits_the_side(source, max_side, expect):
    url, digest = encode_for_api(source, max_side=max_side)
    data = decode(url)
    assert hashlib.sha256(data).hexdigest() == digest
    out = Image.open(io.BytesIO(data))
    assert out.format == "JPEG" and out.size == expect
    assert source.size == (470, 383), "the caller's image is not resized in place"


def test_encode_for_api_carries_no_metadata(tmp_path, source):
    exif = Image.Exif()
    exif[0x010E] = "PATIENT Doe^Jane MRN 123456"  # ImageDescription
    source.save(tmp_path / "tagged.jpg", exif=exif, comment=b"Doe^Jane")
    img, _ = load_image(tmp_path / "tagged.jpg")
    data = decode(encode_for_api(img)[0])
    assert b"Doe^Jane" not in data and b"123456" not in data
    assert len(Image.open(io.BytesIO(data)).getexif()) == 0
    ct, _ = load_image(CT)
    ct_data = decode(encode_for_api(ct)[0])
    assert b"CompressedSamples" not in ct_data and b"DICM" not in ct_data


def test_encode_for_api_is_deterministic(source):
    assert encode_for_api(source) == encode_for_api(source.copy()), "the judge cache keys on this hash"


# --- paths ---------------------------------------------------------------------------------------

def test_resolve_path(tmp_path):
    base, root = tmp_path / "data", tmp_path / "root"
    assert resolve_path("/abs/x.jpg", base, root) == Path("/abs/x.jpg")
    assert resolve_path("a/x.jpg", base, root) == root / "a/x.jpg", "--image-root wins over the input's folder"
    assert resolve_path("a/x.jpg", base) == base / "a/x.jpg"


def test_list_images_recursive_sorted(tmp_path):
    for name in ["b/2.png", "a.jpg", "b/1.DCM", "c/notes.txt", "c/d/3.webp"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a.jpg", "b/1.DCM", "b/2.png", "c/d/3.webp"]
