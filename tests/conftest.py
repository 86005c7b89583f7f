"""Shared fixtures: tiny synthetic videos and images, written with the project's own I/O."""

import os

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def moving_square(frames: int = 9, height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    """A uint8 (T, H, W, 3) clip: a coloured square sliding right over a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), np.full_like(xx, 64)], -1)
    colour = rng.integers(0, 256, size=3)
    clip = np.repeat(background[None].astype(np.uint8), frames, axis=0)
    side = max(4, height // 4)
    for t in range(frames):
        x0 = (t * 3) % max(1, width - side)
        clip[t, height // 3 : height // 3 + side, x0 : x0 + side] = colour
    return clip


@pytest.fixture
def clip() -> np.ndarray:
    return moving_square()


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): one thread
    avoids OpenMP hand-offs that cost more than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where a CUDA GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
