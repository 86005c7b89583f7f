"""A tiny SpacetimePipeline built in code for the pipeline, long-video and CLI tests.

Random weights, seeded: a tiny causal VAE, a tiny DiT whose zero-initialised layers are given
small random values (a fresh DiT outputs exactly zero, which would hide mistakes), and the real
installed MiniLM text encoder. Native clip: 9 frames of 32x32 (3 x 4 x 4 latents). The parts are
built once per test session and shared (no test changes their weights).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

NATIVE_FRAMES, HEIGHT, WIDTH = 9, 32, 32


@functools.lru_cache(maxsize=None)
def tiny_parts(text: bool = True):
    from vae3d import PRESETS as VAE_PRESETS, CausalVideoVAE
    from video_dit import PRESETS as DIT_PRESETS, VideoDiT
    from video_dit.text import TextEncoder, TextEncoders

    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = CausalVideoVAE(**VAE_PRESETS["tiny"]).eval()
        encoders = TextEncoders([TextEncoder()]) if text else None
        dit = VideoDiT(in_channels=vae.config.latent_channels, text_dims=tuple(encoders.dims) if text else (),
                       **{**DIT_PRESETS["tiny"], "hidden_size": 32, "num_heads": 2}).eval()
        for p in dit.parameters():
            if not p.any():  # the adaLN-Zero gates and the final layer
                p.data.normal_(0.0, 0.05)
    return vae, dit, encoders


def tiny_pipeline(context_latent_frames: int = 1, steps: int = 1, text: bool = True, **settings):
    from pipelines.pipeline import SpacetimePipeline

    vae, dit, encoders = tiny_parts(text)
    pipe = SpacetimePipeline(vae=vae, transformer=dit, text_encoder=encoders, native_frames=NATIVE_FRAMES,
                             height=HEIGHT, width=WIDTH, fps=8.0, num_inference_steps=steps, guidance_scale=3.0,
                             context_latent_frames=context_latent_frames, **settings)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_settings(pipe, **settings):
    """Another pipeline over the same parts, with other settings (e.g. context_latent_frames)."""
    from pipelines.pipeline import _SETTINGS, SpacetimePipeline

    config = {k: pipe.config[k] for k in _SETTINGS}
    other = SpacetimePipeline(**pipe.components, **{**config, **settings})
    other.set_progress_bar_config(disable=True)
    return other


def save_tiny_model(folder: Path, **kwargs) -> Path:
    tiny_pipeline(**kwargs).save_pretrained(folder)
    return folder
