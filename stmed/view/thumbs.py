"""Images as small inline thumbnails: pixels only, as JPEG data URLs.

Every image goes through ``stmed.images.load_image`` (so DICOM is windowed the same way the
model saw it) and leaves as a re-encoded JPEG: no DICOM tag, EXIF field or file path survives.
An image shared by many records is encoded once.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

from stmed.errors import ImageError

THUMB_SIDE = 256  # longest side in pixels: readable on a card, about 8-15 KB per radiograph
JPEG_QUALITY = 80


@dataclass
class Thumb:
    url: str | None = None  # data:image/jpeg;base64,... or None when the image could not be read
    size: tuple[int, int] | None = None  # the original image's width and height
    format: str | None = None
    error: str | None = None  # why there is no picture, without the path


class Thumbnailer:
    def __init__(self, side: int = THUMB_SIDE, quality: int = JPEG_QUALITY):
        self.side, self.quality = side, quality
        self._done: dict = {}  # path, or (path, corruption) -> Thumb
        self.failed = 0

    def __call__(self, path: Path) -> Thumb:
        if path not in self._done:
            self._done[path] = self._make(path)
            self.failed += self._done[path].error is not None
        return self._done[path]

    def corrupted(self, path: Path, corruption) -> Thumb:
        """The image as ``corruption`` (stmed.corrupt) showed it to the model, rebuilt from its record:
        corrupted after decoding, as stmed answer did."""
        key = (path, corruption)
        if key not in self._done:
            got = self._decode(path)
            self._done[key] = got if isinstance(got, Thumb) else Thumb(
                self._encode(corruption.apply(got[0])), tuple(got[1].size), got[1].format)
        return self._done[key]

    def _make(self, path: Path) -> Thumb:
        got = self._decode(path)
        return got if isinstance(got, Thumb) else Thumb(self._encode(got[0]), tuple(got[1].size), got[1].format)

    def _decode(self, path: Path):
        """(RGB image, its ImageInfo), or a Thumb saying why not."""
        from stmed.images import load_image

        try:
            return load_image(path)
        except ImageError as e:
            message = str(e)
            prefix = f"{path}: "
            return Thumb(error=message[len(prefix):] if message.startswith(prefix) else "cannot read the image")

    def _encode(self, img) -> str:
        from PIL import ImageChops

        img = img.copy()
        img.thumbnail((self.side, self.side))
        r, g, b = img.split()
        if not ImageChops.difference(r, g).getbbox() and not ImageChops.difference(g, b).getbbox():
            img = r  # a grey image: one channel is a third of the bytes
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=self.quality, optimize=True)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
