"""The real photographs that camera scenes move over: the stills that ship inside scikit-image.

Every photo has a caption subject ("a cat") and belongs to one split. The held-out photos are
never used for training scenes; `spacetime eval` animates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipelines.errors import UserError


@dataclass(frozen=True)
class Photo:
    name: str  # the function in skimage.data that returns it
    subject: str  # what a caption calls it: "a photo of {subject}"
    size: tuple[int, int]  # (height, width) in pixels
    heldout: bool = False
    flippable: bool = True  # False where a mirror image would look wrong (text)


PHOTOS: dict[str, Photo] = {
    p.name: p
    for p in (
        Photo("chelsea", "a cat", (300, 451)),
        Photo("astronaut", "an astronaut", (512, 512)),
        Photo("camera", "a man with a camera", (512, 512)),
        Photo("coins", "old coins", (303, 384)),
        Photo("moon", "the surface of the moon", (512, 512)),
        Photo("hubble_deep_field", "distant galaxies", (872, 1000)),
        Photo("immunohistochemistry", "stained tissue under a microscope", (512, 512)),
        Photo("retina", "the back of an eye", (1411, 1411)),
        Photo("cell", "a cell under a microscope", (660, 550)),
        Photo("grass", "grass", (512, 512)),
        Photo("gravel", "gravel", (512, 512)),
        Photo("brick", "a brick wall", (512, 512)),
        Photo("page", "a page of text", (191, 384), flippable=False),
        # held out: never in a training scene
        Photo("coffee", "a cup of coffee", (400, 600), heldout=True),
        Photo("rocket", "a rocket on its launch pad", (427, 640), heldout=True),
        Photo("stereo_motorcycle", "a motorcycle", (500, 741), heldout=True),
        Photo("clock", "a clock", (300, 400), heldout=True),
    )
}
TRAIN_PHOTOS = tuple(name for name, p in PHOTOS.items() if not p.heldout)
HELDOUT_PHOTOS = tuple(name for name, p in PHOTOS.items() if p.heldout)


def photos_for_split(split: str) -> tuple[str, ...]:
    if split == "train":
        return TRAIN_PHOTOS
    if split == "heldout":
        return HELDOUT_PHOTOS
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """The photo as a read-only uint8 (H, W, 3) array (grey stills are repeated over 3 channels)."""
    if name not in PHOTOS:
        raise UserError(f"unknown photo {name!r}; known photos: {', '.join(PHOTOS)}")
    try:
        import skimage.data
    except ImportError as err:
        raise UserError("camera scenes move over the sample photos of scikit-image; "
                        "install it with `pip install scikit-image`") from err
    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = np.ascontiguousarray(image[..., :3].astype(np.uint8))
    image.setflags(write=False)
    return image


@lru_cache(maxsize=256)
def prefiltered_photo(name: str, flip: bool, level: int) -> np.ndarray:
    """The photo shrunk by 2 ** (level / 4) with a Lanczos filter (level 0: the photo itself), as float32.

    Sampling a photo at a fraction of its resolution aliases; sampling a copy already shrunk to about
    the output's resolution does not. Levels are quarter-octaves so that clips share copies."""
    image = load_photo(name)
    if flip:
        image = image[:, ::-1]
    if level > 0:
        from PIL import Image

        factor = 2.0 ** (level / 4)
        h, w = image.shape[:2]
        size = (max(2, round(w / factor)), max(2, round(h / factor)))
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.Resampling.LANCZOS))
    out = np.ascontiguousarray(image, dtype=np.float32)
    out.setflags(write=False)
    return out
