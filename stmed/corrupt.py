"""Corrupted copies of an image, seeded and described by a small record so any stage can rebuild
exactly the same pixels: the image behind a hard-negative answer (MMedPO noises the lesion,
HSCR hides visual evidence) and the other image of mDPO's image-conditional term.

A corruption is written ``KIND[:STRENGTH]`` with STRENGTH in (0, 1]:

- ``noise``: Gaussian noise of standard deviation STRENGTH x 255 on every channel (default 0.5);
- ``blur``: Gaussian blur of radius STRENGTH x the longer side (default 0.02);
- ``mask``: a rectangle covering STRENGTH of the area, filled with the image's mean colour (default 0.5);
- ``crop``: a random crop keeping STRENGTH of the area, resized back to the full size (default 0.2,
  as mDPO keeps 0-20% of the image).

It is applied to the decoded RGB image (DICOM and 16-bit images are rendered by stmed.images
first), before padding and ``--max-pixels``, so every stage and every family sees the same pixels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from stmed.errors import InputError, RecordError

DEFAULTS = {"noise": 0.5, "blur": 0.02, "mask": 0.5, "crop": 0.2}

# The record fields of corrupted images: this module owns them; every stage, trainer and the view
# read and write them by these names.
FIELD = "corrupt"  # on an answer record: the corruption (Corruption.record()) its second answer set saw
ANSWERS = "corrupt_answers"  # those answers, written as stmed answer writes "answers"
HARD_NEGATIVE = "hard_negative"  # on a pair: "corrupt" when its rejected side is a corrupted-image answer


@dataclass(frozen=True)
class Corruption:
    kind: str
    strength: float
    seed: int = 0

    @classmethod
    def parse(cls, text: str, seed: int = 0, flag: str = "--corrupt") -> "Corruption":
        """``noise``, ``blur:0.05``...; a bad spec is one InputError line naming ``flag``."""
        kind, _, value = text.strip().partition(":")
        if kind not in DEFAULTS:
            raise InputError(f"{flag} {text!r}: the kind must be one of {', '.join(DEFAULTS)} (e.g. blur:0.05)")
        try:
            strength = float(value) if value else DEFAULTS[kind]
        except ValueError:
            raise InputError(f"{flag} {text!r}: the strength after ':' must be a number in (0, 1]") from None
        if not 0 < strength <= 1:
            raise InputError(f"{flag} {text!r}: the strength must be in (0, 1], got {strength:g}")
        return cls(kind, strength, seed)

    @classmethod
    def from_record(cls, value, where: str) -> "Corruption":
        """The corruption a record carries (``{"kind", "strength", "seed"}``); RecordError if torn."""
        if not isinstance(value, dict) or value.get("kind") not in DEFAULTS:
            raise RecordError(f"{where}: field '{FIELD}' must be an object with a kind among {', '.join(DEFAULTS)}")
        strength, seed = value.get("strength", DEFAULTS[value["kind"]]), value.get("seed", 0)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise RecordError(f"{where}: field '{FIELD}.strength' must be a number in (0, 1]")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RecordError(f"{where}: field '{FIELD}.seed' must be an integer")
        return cls(value["kind"], float(strength), seed)

    def with_seed(self, seed: int) -> "Corruption":
        return Corruption(self.kind, self.strength, seed)

    def record(self) -> dict:
        return {"kind": self.kind, "strength": self.strength, "seed": self.seed}

    def apply(self, img):
        """A corrupted RGB copy of ``img``, the same size; the same seed gives the same pixels."""
        import numpy as np
        from PIL import Image, ImageFilter

        img = img.convert("RGB")
        w, h = img.size
        rng = random.Random(self.seed)
        if self.kind == "noise":
            arr = np.asarray(img, dtype=np.float32)
            noise = np.random.default_rng(self.seed).normal(0.0, self.strength * 255.0, arr.shape)
            return Image.fromarray(np.clip(arr + noise, 0, 255).round().astype(np.uint8), "RGB")
        if self.kind == "blur":
            return img.filter(ImageFilter.GaussianBlur(radius=self.strength * max(w, h)))
        cw, ch = _box(w, h, self.strength, rng)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        if self.kind == "mask":
            out = img.copy()
            mean = tuple(int(c) for c in np.asarray(img, dtype=np.float32).reshape(-1, 3).mean(0).round())
            out.paste(Image.new("RGB", (cw, ch), mean), (x, y))
            return out
        return img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)


def _box(w: int, h: int, area: float, rng: random.Random) -> tuple[int, int]:
    """A box of about ``area`` of the image, its aspect ratio drawn around the image's own."""
    aspect = rng.uniform(0.75, 1.33)
    cw = max(1, min(w, round(w * (area * aspect) ** 0.5)))
    ch = max(1, min(h, round(w * h * area / cw)))
    return cw, ch
