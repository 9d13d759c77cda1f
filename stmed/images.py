"""Any medical image to an RGB PIL image: JPEG, PNG, TIFF, BMP, WebP and DICOM.

DICOM files are rendered from pixels alone: the modality LUT, then the VOI LUT or window
centre/width when the file has one, else min-max; MONOCHROME1 is inverted. Only the tags that
rendering needs are read, and none of them leaves this module except the modality and window.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from stmed.errors import ImageError, RecordError

if TYPE_CHECKING:
    from stmed.corrupt import Corruption
    from stmed.records import Record

MAX_PIXELS = 120_000_000  # decompression-bomb guard: about 11k x 11k; whole-slide images need tiling first
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # LLaVA pads with the vision processor's mean colour
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom", ".gif"}


@dataclass
class ImageInfo:
    format: str
    size: tuple[int, int]
    mode: str
    modality: str | None = None  # DICOM only
    window: str | None = None  # DICOM only: how grey levels were mapped
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}


def resolve_path(image: str, base_dir: Path | None = None, image_root: Path | None = None) -> Path:
    """An image path from a record: absolute, or relative to --image-root, else the input's folder.
    Paths are not confined to the root: a record may name any file this user can read."""
    p = Path(image).expanduser()
    if p.is_absolute():
        return p
    return (image_root or base_dir or Path.cwd()) / p


def short_path(path: str | Path, limit: int = 200) -> str:
    """A path as an error message shows it: a 5,000-character one cut to its ends."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def is_dicom(path: Path, head: bytes) -> bool:
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def load_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> tuple["Image.Image", ImageInfo]:  # noqa: F821
    """Open an image file as RGB, or raise ImageError with one sentence naming the file."""
    path = Path(path)
    try:
        if not path.exists():
            raise ImageError(f"{path}: image not found")
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, not an image")
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:  # a name too long, a permission denied
        raise ImageError(f"{short_path(path)}: cannot read the image ({e.strerror or e})") from None
    if not head:
        raise ImageError(f"{path}: empty file")
    if is_dicom(path, head):
        return _load_dicom(path, max_pixels)
    return _load_raster(path, max_pixels)


def _load_raster(path: Path, max_pixels: int):
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our own guard below gives a clearer message
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot open image ({e})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"{path}: image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,}")
    fmt = img.format or path.suffix.lstrip(".").upper()
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: truncated or corrupt {fmt} image ({e})") from None
    info = ImageInfo(format=fmt, size=img.size, mode=img.mode)
    return to_rgb(img, info), info


def to_rgb(img, info: ImageInfo):
    """RGB from any PIL mode: 16-bit and float greys are min-max scaled, alpha goes onto black."""
    import numpy as np
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        info.notes.append(f"{mode} grey levels scaled min-max to 8 bits")
        return Image.fromarray(_minmax_u8(arr)).convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (0, 0, 0))  # medical images sit on black
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def _minmax_u8(arr):
    import numpy as np

    return _scale_u8(arr, float(np.min(arr)), float(np.max(arr)))


def _scale_u8(arr, lo: float, hi: float):
    """Values from [lo, hi] onto 0..255 (all black when the range is empty)."""
    import numpy as np

    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.clip((arr - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _load_dicom(path: Path, max_pixels: int):
    import numpy as np
    import pydicom
    from PIL import Image

    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types for bad files
        raise ImageError(f"{path}: not a readable DICOM file ({type(e).__name__})") from None
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows * cols == 0 or "PixelData" not in ds:
        raise ImageError(f"{path}: DICOM file has no image pixels")
    if rows * cols > max_pixels:
        raise ImageError(f"{path}: DICOM image is {cols}x{rows}, above the limit of {max_pixels:,} pixels")
    try:
        arr = ds.pixel_array
    except Exception as e:
        detail = " ".join(str(e).split())  # pydicom lists each decoder's failure on its own line
        raise ImageError(f"{path}: cannot decode DICOM pixels ({type(e).__name__}: {detail})") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    info = ImageInfo(format="DICOM", size=(cols, rows), mode=photometric, modality=getattr(ds, "Modality", None))
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[frames // 2]
        info.notes.append(f"middle frame of {frames}")
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])  # 8 or 16-bit palette entries
        info.window = "palette"
        return Image.fromarray(_scale_u8(apply_color_lut(arr, ds).astype(np.float64), 0, 2**bits - 1)), info
    if samples == 3:
        # pydicom >= 3 hands YBR pixels over already converted to RGB (pixel_array's as_rgb)
        info.window = "none (colour)"
        return Image.fromarray(_minmax_u8(arr) if arr.dtype != np.uint8 else arr).convert("RGB"), info
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    if "VOILUTSequence" in ds:
        values, info.window = apply_voi_lut(values, ds), "VOI LUT"
        u8 = _minmax_u8(np.asarray(values, dtype=np.float64))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        centre, width = _first(ds.WindowCenter), abs(_first(ds.WindowWidth))
        values = apply_voi_lut(values, ds)
        # The window maps onto a fixed output range; scaling by the data's own min-max would
        # stretch it again and make pixels inside the window black or white. pydicom's range
        # is where values far outside the window land.
        lo, hi = apply_voi_lut(np.array([centre - 100 * width - 1, centre + 100 * width + 1]), ds)
        u8 = _scale_u8(np.asarray(values, dtype=np.float64), float(lo), float(hi))
        info.window = f"centre {centre:g} / width {width:g}"
    else:
        info.window = "min-max"
        u8 = _minmax_u8(np.asarray(values, dtype=np.float64))
    if photometric == "MONOCHROME1":
        u8 = 255 - u8  # MONOCHROME1: low values are bright
        info.notes.append("MONOCHROME1 inverted")
    return Image.fromarray(u8).convert("RGB"), info


def _first(value) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def pad_to_square(img, mean: tuple[float, float, float] = CLIP_MEAN):
    """LLaVA's ``pad`` (expand2square): centre the image on a square of the mean colour."""
    from PIL import Image

    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    colour = tuple(int(c * 255) for c in mean)
    canvas = Image.new(img.mode, (side, side), colour)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def fit_pixels(img, max_pixels: int | None):
    """``img`` downscaled, aspect kept, to at most ``max_pixels`` pixels (``--max-pixels``): the
    bound on image tokens for dynamic-resolution processors (Qwen2-VL gives a 2321x1384 image
    4,067 tokens), applied to the pixels so every stage and every family sees the same image."""
    if not max_pixels or img.width * img.height <= max_pixels:
        return img
    from PIL import Image

    scale = (max_pixels / (img.width * img.height)) ** 0.5
    size = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC)


def prepare(img, pad_square: bool = False, max_pixels: int | None = None):
    """The image a model sees: padded square (LLaVA's ``pad``) when asked, then bounded in pixels."""
    return fit_pixels(pad_to_square(img) if pad_square else img, max_pixels)


def record_image(rec: Record, image_root: Path | None = None, pad_square: bool = False, max_pixels: int | None = None,
                 corrupt: Corruption | None = None):
    """The record's image as RGB (optionally corrupted, padded square, bounded in pixels), or
    RecordError naming file:line."""
    image = rec.get("image")
    if image is not None and not isinstance(image, str):
        raise RecordError(f"{rec.where}: field 'image' must be str, got {type(image).__name__}")
    if not image:
        raise RecordError(f"{rec.where}: missing field 'image'")
    try:
        path = resolve_path(image, rec.base_dir, image_root)
        stat = path.stat()
        return _load(str(path), stat.st_mtime_ns, stat.st_size, pad_square, max_pixels, corrupt)
    except FileNotFoundError:
        raise RecordError(f"{rec.where}: {path}: image not found") from None
    except RecordError as e:  # an image from a folder input: its "where" is the image's path already
        raise RecordError(str(e) if str(e).startswith(f"{rec.where}: ") else f"{rec.where}: {e}") from None
    except (OSError, ValueError) as e:  # a name too long or holding a NUL byte, a permission denied
        raise RecordError(f"{rec.where}: {short_path(image)!r}: cannot read the image "
                          f"({getattr(e, 'strerror', None) or e})") from None


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int, pad_square: bool, max_pixels: int | None,
          corrupt: Corruption | None = None):
    """Questions about one image sit together: decode it once, not once per question. Keyed by
    modification time and size so a rewritten file is read again; small, as images can be big.
    A corruption works on the decoded pixels, before padding and resizing, as every stage rebuilds it."""
    img, _ = load_image(path)
    if corrupt is not None:
        img = corrupt.apply(img)
    return prepare(img, pad_square, max_pixels)


def encode_for_api(img, max_side: int = 1024, quality: int = 90) -> tuple[str, str]:
    """(data URL, sha256 of the bytes) of an image resized to at most ``max_side``: pixels only."""
    img = img.convert("RGB")  # a copy; JPEG holds no alpha
    img.info = {}  # PIL writes a source JPEG's comment (COM) back out from info: drop it
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)  # a fresh JPEG carries no source metadata
    data = buf.getvalue()
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii"), hashlib.sha256(data).hexdigest()


def list_images(folder: Path) -> list[Path]:
    """Image files under a folder, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
