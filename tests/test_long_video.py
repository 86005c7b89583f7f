"""Long video: window planning, streaming decode, flat memory and flat work per window."""

import numpy as np
import pytest
import torch

from pipeline_tiny import NATIVE_FRAMES, tiny_pipeline
from pipelines.long_video import Window, plan_windows, sample_windows


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(context_latent_frames=1, steps=1)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- planning ----------------------------------------------------------------------------------


def test_windows_cover_the_clip_with_context_from_the_one_before():
    windows = plan_windows(total=17, native=5, known=0, context=2)
    assert windows[0] == Window(0, 5, 0)
    assert all(w.length == 5 for w in windows)
    made = set()
    for before, w in zip([None] + windows, windows):
        if before is not None:
            assert w.given >= 2 and w.start + w.given == before.stop  # given = the end of the one before
        new = set(range(w.start + w.given, w.stop))
        assert not new & made
        made |= new
    assert made == set(range(17))


def test_the_last_window_is_pulled_back_to_end_at_the_clip_end():
    assert plan_windows(6, 5, context=1) == [Window(0, 5, 0), Window(1, 6, 4)]
    assert plan_windows(3, 5) == [Window(0, 3, 0)]  # shorter than native: one short window
    assert plan_windows(5, 5, known=1) == [Window(0, 5, 1)]  # image-to-video
    assert plan_windows(7, 5, known=3, context=1) == [Window(2, 7, 1)]  # extension
    assert plan_windows(5, 5, known=3, context=1) == [Window(0, 5, 3)]
    with pytest.raises(ValueError):
        plan_windows(9, 5, context=5)


def test_sample_windows_gives_each_window_the_latents_before_it():
    windows = plan_windows(9, 3, known=1, context=1)
    like = torch.zeros(1, 2, 1, 1, 1)
    seen = []

    def fake(index, window, given, mask):  # latent frame t gets the value t
        seen.append((window, given[0, 0, :, 0, 0].tolist(), mask[0].tolist()))
        out = torch.arange(window.start, window.stop, dtype=torch.float32)
        return out.view(1, 1, -1, 1, 1).expand(1, 2, -1, 1, 1).clone()

    known = torch.zeros(1, 2, 1, 1, 1)
    new = [n[0, 0, :, 0, 0].tolist() for _, _, n in sample_windows(windows, fake, like, known)]
    assert sum(new, []) == list(range(1, 9))
    assert seen[1] == (Window(2, 5, 1), [2.0, 0.0, 0.0], [True, False, False])


# ---- the pipeline over many windows ------------------------------------------------------------


def test_long_video_streams_frames_window_by_window(pipe):
    chunks = []
    out = pipe("a circle", num_frames=25, on_frames=chunks.append, generator=seeded(2))
    assert out.frames is None and out.num_frames == 25
    # native 3 latent frames, context 1: windows make 3, then 2 new latent frames each, and each
    # latent frame is decoded and handed on at once (1 pixel frame for the first, then 4)
    assert [len(c) for c in chunks] == [1] + [4] * 6
    whole = pipe("a circle", num_frames=25, generator=seeded(2)).frames[0]
    assert np.array_equal(np.concatenate(chunks), whole)


def test_work_per_window_is_the_same_all_along(pipe):
    """Every window runs the DiT on the same shapes and decodes the same number of latent frames:
    time per window cannot grow with the length of the clip."""
    shapes, decoded = [], []
    handle = pipe.transformer.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    decoder_cls = type(pipe.vae.streaming_decoder())
    original = decoder_cls.decode

    def counting(self, z):
        decoded.append(z.shape[2])
        return original(self, z)

    decoder_cls.decode = counting
    try:
        pipe("a circle", num_frames=33, generator=seeded(0), on_frames=lambda f: None)
    finally:
        handle.remove()
        decoder_cls.decode = original
    windows = plan_windows(9, 3, context=1)
    assert len(shapes) == len(windows) * 1 * 1  # one step, guidance batched into one call
    assert len(set(shapes)) == 1 and shapes[0][2] == 3
    assert len(windows) == 4 and decoded == [1] * 9  # one latent frame at a time, in every window


def _peak_tensor_bytes(fn) -> int:
    """Peak bytes of live CPU tensors while fn runs (from the profiler's allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def test_long_video_memory_stays_flat(pipe):
    def make(frames, **kwargs):
        return lambda: pipe("a circle", num_frames=frames, guidance_scale=1.0, generator=seeded(0), **kwargs)

    make(NATIVE_FRAMES, on_frames=lambda f: None)()  # warm-up: one-time allocations are not counted
    one = _peak_tensor_bytes(make(NATIVE_FRAMES, on_frames=lambda f: None))
    four = _peak_tensor_bytes(make(4 * (NATIVE_FRAMES - 1) + 1, on_frames=lambda f: None))
    assert four <= 1.3 * one, (one, four)


def test_the_memory_measurement_sees_what_is_kept_and_what_is_freed():
    def keep(n):
        held = [torch.ones(1000, dtype=torch.float64) for _ in range(n)]
        return len(held)

    def churn(n):
        for _ in range(n):
            torch.ones(1000, dtype=torch.float64)

    assert 80_000 <= _peak_tensor_bytes(lambda: keep(10)) <= 90_000
    assert _peak_tensor_bytes(lambda: churn(10)) <= 17_000
