"""video_dit: a diffusion transformer over spacetime patches, trained with rectified flow.

    from video_dit import VideoDiT, PRESETS, flow
    model = VideoDiT(in_channels=16, **PRESETS["S"], attention="full", text_conditioning="cross")
    v = model(x, timestep, text_states, text_masks)   # (B, C, T, H, W) velocity

`video_dit.flow` holds rectified flow (training loss, schedule, samplers), `video_dit.text` the
text encoders, `video_dit.attention` the attention function, `video_dit.flops` the FLOPs counter.
"""

from video_dit import flow
from video_dit.flops import count_flops, describe
from video_dit.model import PRESETS, VideoDiT, patchify, unpatchify

__all__ = ["VideoDiT", "PRESETS", "flow", "count_flops", "describe", "patchify", "unpatchify"]
