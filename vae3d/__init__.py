"""vae3d: a causal 3D convolutional video VAE with streaming encode and decode.

    from vae3d import CausalVideoVAE, PRESETS
    vae = CausalVideoVAE(**PRESETS["tiny"])
    z = vae.encode_latents(video)          # (B, 3, 1 + 4k, H, W) in [-1, 1] -> (B, 16, 1 + k, H/8, W/8)
    video = vae.decode_latents(z)

See docs/vae3d.md.
"""

from vae3d.model import PRESETS, CausalVideoVAE, DiagonalGaussian
from vae3d.streaming import StreamingDecoder, StreamingEncoder

__all__ = ["CausalVideoVAE", "DiagonalGaussian", "PRESETS", "StreamingDecoder", "StreamingEncoder"]
