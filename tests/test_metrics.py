"""pipelines.metrics: PSNR and SSIM against scikit-image's reference implementations."""

import math

import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import moving_square
from pipelines.metrics import psnr, ssim


def noisy(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames + rng.normal(0, sigma, frames.shape), 0, 255).astype(np.uint8)


def test_psnr_matches_skimage():
    clip = moving_square(5, 32, 48)
    test = noisy(clip, 10)
    assert psnr(clip, test) == pytest.approx(peak_signal_noise_ratio(clip, test, data_range=255), abs=1e-9)
    assert psnr(clip, clip) == math.inf


@pytest.mark.parametrize("sigma", [3.0, 25.0])
def test_ssim_matches_skimage_on_a_photo_and_a_clip(sigma):
    photo = data.astronaut()[::4, ::4]  # (128, 128, 3)
    test = noisy(photo, sigma)
    expected = structural_similarity(photo, test, channel_axis=-1, data_range=255)
    assert ssim(photo, test) == pytest.approx(expected, abs=1e-6)

    clip = moving_square(3, 32, 40)
    test = noisy(clip, sigma, seed=1)
    per_frame = [structural_similarity(c, t, channel_axis=-1, data_range=255) for c, t in zip(clip, test)]
    assert ssim(clip, test) == pytest.approx(float(np.mean(per_frame)), abs=1e-6)


def test_ssim_of_identical_frames_is_one_and_bad_shapes_are_refused():
    clip = moving_square(2, 16, 16)
    assert ssim(clip, clip) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        ssim(clip, clip[:, :8])
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(clip[:, :5, :5], clip[:, :5, :5])
