"""vae3d: shapes, causality, chunked == full, tiling, save/load, bad input, Wan equivalence, overfitting."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import moving_square
from vae3d import PRESETS, CausalVideoVAE

CHUNK_TOL = 1e-4  # chunked vs one pass, fp32 (the bound)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=[False, True], ids=["conv", "shortcut"])
def vae(request) -> CausalVideoVAE:
    """The tiny VAE, plain and with a (random) linear shortcut: every property below holds for both."""
    torch.manual_seed(0)
    return CausalVideoVAE(**PRESETS["tiny"], linear_shortcut=request.param).eval()


def video(frames=9, height=32, width=48, seed=0, batch=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=g) * 2 - 1


def clip_tensor(frames=9, height=32, width=48) -> torch.Tensor:
    clip = torch.from_numpy(moving_square(frames, height, width))
    return (clip.permute(3, 0, 1, 2)[None].float() / 127.5 - 1).contiguous()


# ---- configuration and shapes -------------------------------------------------------------------


def test_presets_and_factors(vae):
    assert set(PRESETS) >= {"tiny", "default"}
    assert vae.spatial_factor == 8 and vae.temporal_factor == 4 and vae.config.latent_channels == 16
    assert [vae.valid_num_frames(n) for n in (1, 2, 3, 4, 5, 6, 7, 8, 17)] == [1, 1, 1, 5, 5, 5, 5, 9, 17]
    assert vae.valid_num_frames(6, "up") == 9 and vae.valid_num_frames(8, "down") == 5
    assert vae.valid_size(30, 41) == (32, 48)
    # the default layout is Wan 2.1's: 8x8x4, 16 channels
    default = CausalVideoVAE(**PRESETS["default"])
    assert (default.spatial_factor, default.temporal_factor, default.config.latent_channels) == (8, 4, 16)
    # every architectural number is a config argument, and the config is JSON
    json.dumps(dict(vae.config))
    other = CausalVideoVAE(**{**PRESETS["tiny"], "temporal_downsample": (False, False, True), "latent_channels": 4})
    assert other.temporal_factor == 2 and other.encode(video(5, 16, 16)).mean.shape == (1, 4, 3, 2, 2)


@pytest.mark.parametrize("frames", [1, 5, 9, 13])
def test_shapes_for_1_plus_4k_frames(vae, frames):
    x = video(frames, 16, 24, batch=2)
    post = vae.encode(x)
    k = (frames - 1) // 4
    for t in (post.mean, post.logvar, post.std, post.sample(), post.mode()):
        assert t.shape == (2, 16, 1 + k, 2, 3)
    assert post.kl().shape == (2,)
    out = vae.decode(post.mean)
    assert out.shape == x.shape and out.abs().max() <= 1.0
    z = vae.encode_latents(x)
    assert z.shape == (2, 16, 1 + k, 2, 3)
    assert vae.decode_latents(z).shape == x.shape


def test_one_frame_input_is_the_first_frame_of_a_video(vae):
    x = video(9)
    still = vae.encode(x[:, :, :1]).mean
    assert still.shape == (1, 16, 1, 4, 6)
    assert torch.allclose(still, vae.encode(x).mean[:, :, :1], atol=1e-5)  # a still is a one-frame video
    image = vae.decode(still)
    assert image.shape == (1, 3, 1, 32, 48)
    assert torch.allclose(image, vae.decode(vae.encode(x).mean)[:, :, :1], atol=1e-5)


# ---- causality ------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 4, 5, 8])
def test_encoder_is_causal(vae, k):
    x = video(9)
    y = x.clone()
    y[:, :, k] += 0.5
    a, b = vae.encode(x).mean, vae.encode(y).mean
    first_changed = 1 + (k - 1) // 4  # latent frame that holds pixel frame k
    assert torch.equal(a[:, :, :first_changed], b[:, :, :first_changed])
    assert (a[:, :, first_changed] - b[:, :, first_changed]).abs().max() > 1e-4


@pytest.mark.parametrize("j", [1, 2])
def test_decoder_is_causal(vae, j):
    z = vae.encode(video(9)).mean
    z2 = z.clone()
    z2[:, :, j] += 1.0
    a, b = vae.decode(z), vae.decode(z2)
    first_changed = 1 + 4 * (j - 1)  # first pixel frame made from latent frame j
    assert torch.equal(a[:, :, :first_changed], b[:, :, :first_changed])
    assert (a[:, :, first_changed] - b[:, :, first_changed]).abs().max() > 1e-4


# ---- chunked == full ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shortcut", [False, True])
def test_chunked_encode_and_decode_equal_one_pass(shortcut):
    torch.manual_seed(1)
    vae = CausalVideoVAE(**PRESETS["tiny"], linear_shortcut=shortcut).eval()
    x = video(17, 16, 24)
    with torch.no_grad():
        full_moments = vae._encode_chunk(x)  # one pass over the whole clip
        full_pixels = vae._decode_chunk(full_moments[:, :16]).clamp(-1, 1)
    for enc_frames, dec_latents in [(4, 1), (8, 2), (12, 3)]:
        vae.set_chunk_sizes(encode_frames=enc_frames, decode_latents=dec_latents)
        post = vae.encode(x)
        assert (post.mean - full_moments[:, :16]).abs().max() <= CHUNK_TOL
        assert (post.logvar - full_moments[:, 16:].clamp(-30, 20)).abs().max() <= CHUNK_TOL
        assert (vae.decode(full_moments[:, :16]) - full_pixels).abs().max() <= CHUNK_TOL


def test_streaming_encoder_and_decoder_match_whole_clip(vae):
    x = video(17, 16, 16)
    whole = vae.encode_latents(x)
    enc = vae.streaming_encoder()
    parts = [enc.encode_latents(x[:, :, a:b]) for a, b in [(0, 3), (3, 7), (7, 8), (8, 17)]]
    assert [p.shape[2] for p in parts] == [1, 1, 0, 3]  # latent frames complete as frames arrive
    assert enc.pending_frames == 0
    assert (torch.cat(parts, dim=2) - whole).abs().max() <= CHUNK_TOL

    pixels = vae.decode_latents(whole)
    dec = vae.streaming_decoder()
    outs = [dec.decode(whole[:, :, a:b]) for a, b in [(0, 1), (1, 3), (3, 5)]]
    assert [o.shape[2] for o in outs] == [1, 8, 8]  # latent frame 0 -> 1 frame, later ones -> 4
    assert (torch.cat(outs, dim=2) - pixels).abs().max() <= CHUNK_TOL


def test_differentiable_pass_matches_inference_path(vae):
    x = video(9, 16, 16)
    reconstruction, posterior = vae(x, sample_posterior=False)  # autograd on: the plain path
    assert reconstruction.requires_grad
    assert (posterior.mean - vae.encode(x).mean).abs().max() <= CHUNK_TOL
    assert (reconstruction.clamp(-1, 1) - vae.decode(posterior.mean.detach())).abs().max() <= CHUNK_TOL


# ---- tiling ----------------------------------------------------------------------------------------------


def test_tiled_is_close_to_full():
    """Tiles see less context than the whole frame, so tiling is approximate. Stated tolerance, for
    64-pixel tiles overlapping by 32 on a 128x96 clip (a random tiny VAE, whose receptive field is
    larger than a tile): decoded pixels differ from the untiled decode by < 0.02 on average (1% of
    the [-1, 1] range) and < 0.3 at worst; latents by < 25% of their mean magnitude on average."""
    torch.manual_seed(0)
    vae = CausalVideoVAE(**PRESETS["tiny"]).eval()
    x = clip_tensor(5, 96, 128)
    full_post = vae.encode(x).mean
    full_pixels = vae.decode(full_post)
    vae.enable_tiling(tile_size=64, overlap=32)
    tiled_post = vae.encode(x).mean
    tiled_pixels = vae.decode(full_post)
    vae.disable_tiling()
    assert tiled_post.shape == full_post.shape and tiled_pixels.shape == full_pixels.shape
    assert (tiled_post - full_post).abs().mean() < 0.25 * full_post.abs().mean()
    assert (tiled_pixels - full_pixels).abs().mean() < 0.02
    assert (tiled_pixels - full_pixels).abs().max() < 0.3
    # a frame no larger than a tile is not tiled at all: exact
    vae.enable_tiling(tile_size=128, overlap=32)
    assert torch.equal(vae.encode(x).mean, full_post)
    vae.disable_tiling()
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.enable_tiling(tile_size=30, overlap=8)


def test_tile_blending_weights_sum_to_one_in_overlaps():
    from vae3d.streaming import ramp, tile_starts

    assert tile_starts(100, 40, 30) == [0, 30, 60]
    assert tile_starts(40, 40, 30) == [0]
    total = torch.zeros(100)
    for s in tile_starts(100, 40, 30):
        total[s:s + 40] += ramp(40, s, 100, 10)
    assert torch.allclose(total, torch.ones(100))  # ramps of two neighbours add up to 1 across the overlap
    assert ramp(40, 0, 40, 10).eq(1).all()  # a lone tile is not faded at the frame edges


# ---- the linear shortcut ---------------------------------------------------------------------------------


def _pca_round_trip(fit: list[torch.Tensor], x: torch.Tensor, k: int, s: int, t: int) -> torch.Tensor:
    """The principal-component code written out with numpy: blocks of t frames x s x s pixels
    (frame 0 as t copies of itself, back as the mean of its block), top-k components."""
    def blocks(v):  # (3, T, H, W) -> (N, D)
        v = np.concatenate([np.repeat(v[:, :1], t, axis=1), v[:, 1:]], axis=1)
        c, T, H, W = v.shape
        v = v.reshape(c, T // t, t, H // s, s, W // s, s).transpose(1, 3, 5, 0, 2, 4, 6)
        return v.reshape(-1, c * t * s * s), (T // t, H // s, W // s)

    data = np.concatenate([blocks(v.double().numpy())[0] for v in fit])
    mean = data.mean(0)
    top = np.linalg.svd(data - mean, full_matrices=False)[2][:k].T
    b, (nt, nh, nw) = blocks(x.double().numpy())
    r = ((b - mean) @ top @ top.T + mean).reshape(nt, nh, nw, 3, t, s, s).transpose(3, 0, 4, 1, 5, 2, 6)
    r = r.reshape(3, nt * t, nh * s, nw * s)
    return torch.from_numpy(np.concatenate([r[:, :t].mean(1, keepdims=True), r[:, t:]], axis=1)).float()


def test_a_fitted_linear_shortcut_starts_the_vae_as_the_principal_component_code():
    torch.manual_seed(0)
    vae = CausalVideoVAE(**PRESETS["tiny"], linear_shortcut=True).eval()  # blocks of 4 x 8 x 8 pixels
    fit = [torch.from_numpy(moving_square(9, 32, 48, seed=i)).permute(3, 0, 1, 2).float() / 127.5 - 1
           for i in range(6)]
    kept = vae.fit_linear_shortcut(iter(fit))  # any iterable of clips; a generator in training
    assert 0.5 < float(kept) <= 1.0
    x = clip_tensor(9, 32, 48)
    expected = _pca_round_trip(fit, x[0], 16, 8, 4).clamp(-1, 1)
    assert (vae.decode(vae.encode(x).mean)[0] - expected).abs().max() < 1e-4  # the conv paths add nothing yet
    # latents of the fitted clips come out centred with unit variance, the posterior's noise at 1%
    posterior = vae.encode(torch.stack(fit))
    z = vae.normalize_latents(posterior.mean).transpose(0, 1).flatten(1)
    assert z.mean(1).abs().max() < 1e-3 and (z.std(1, unbiased=False) - 1).abs().max() < 1e-3
    assert torch.allclose(posterior.std / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1),
                          torch.full_like(posterior.std, 0.01), rtol=1e-4)
    # the zeroed last layers still learn: the convolutional paths get gradients from the first step
    reconstruction, post = vae(x, sample_posterior=False)
    (reconstruction - x).abs().mean().backward()
    assert vae.decoder.conv_out.weight.grad.abs().sum() > 0
    assert vae.encoder.conv_out.weight.grad.abs().sum() > 0


def test_a_linear_encoder_skips_its_zero_convolutional_path_with_the_same_latents(monkeypatch):
    torch.manual_seed(0)
    vae = CausalVideoVAE(**PRESETS["tiny"], linear_shortcut=True).eval()
    vae.fit_linear_shortcut([clip_tensor(9, 32, 32)[0]])
    x = clip_tensor(13, 32, 48)
    with torch.no_grad():
        assert vae.encoder_is_linear()
        monkeypatch.setattr(vae, "encoder_is_linear", lambda: False)
        full = vae.encode(x)
        monkeypatch.undo()
        monkeypatch.setattr(vae.encoder, "forward", lambda *a, **k: pytest.fail("the zero path was run"))
        fast = vae.encode(x)
        vae.set_chunk_sizes(encode_frames=4)  # chunk by chunk: the shortcut alone carries the clip
        chunked = vae.encode(x)
        monkeypatch.undo()
    for other in (fast, chunked):
        assert other.mean.shape == full.mean.shape == (1, 16, 4, 4, 6)
        assert torch.equal(other.mean, full.mean) and torch.equal(other.logvar, full.logvar)
    # while the encoder trains, or once its path is no longer zero, the path runs
    assert not vae.encoder_is_linear()  # gradients on, weights trainable
    with torch.no_grad():
        vae.encoder.conv_out.weight[0, 0, 0, 0, 0] = 1e-3
        assert not vae.encoder_is_linear()
    assert not CausalVideoVAE(**PRESETS["tiny"]).encoder_is_linear()


def test_fitting_needs_a_shortcut_and_enough_pixel_blocks():
    with pytest.raises(ValueError, match="no linear shortcut"):
        CausalVideoVAE(**PRESETS["tiny"]).fit_linear_shortcut([video(5, 16, 16)[0]])
    with pytest.raises(ValueError, match="more than 16 pixel blocks"):
        CausalVideoVAE(**PRESETS["tiny"], linear_shortcut=True).fit_linear_shortcut([video(5, 16, 16)[0]])


# ---- latents scaling, save / load ------------------------------------------------------------------------


def test_latent_normalization_round_trip(vae, tmp_path):
    mean, std = torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16)
    scaled = CausalVideoVAE(**PRESETS["tiny"], latents_mean=mean.tolist(), latents_std=std.tolist())
    raw = torch.randn(1, 16, 2, 3, 3) * std.view(1, 16, 1, 1, 1) + mean.view(1, 16, 1, 1, 1)
    z = scaled.normalize_latents(raw)
    assert torch.allclose(scaled.denormalize_latents(z), raw, atol=1e-5)
    assert torch.allclose(z, (raw - mean.view(1, 16, 1, 1, 1)) / std.view(1, 16, 1, 1, 1))
    scaled.set_latent_stats(torch.zeros(16), torch.full((16,), 3.0))
    assert scaled.config.latents_std == [3.0] * 16
    with pytest.raises(ValueError, match="16"):
        scaled.set_latent_stats(torch.zeros(4), torch.ones(4))


def test_channel_sensitivity_reads_which_latent_channels_the_decoder_uses():
    torch.manual_seed(0)
    vae = CausalVideoVAE(**PRESETS["tiny"]).eval()
    z = vae.encode_latents(clip_tensor(frames=5, height=16, width=16))
    before = vae.channel_sensitivity(z, generator=torch.Generator().manual_seed(0))
    assert before.shape == (16,) and bool((before > 0).all())
    with torch.no_grad():
        vae.post_quant_conv.weight[:, 3] = 0  # the decoder no longer reads channel 3 ...
        vae.post_quant_conv.weight[:, 5] *= 4  # ... and reads channel 5 four times as strongly
    after = vae.channel_sensitivity(z, generator=torch.Generator().manual_seed(0))
    assert after[3] == 0
    assert after[5] > 4 * before[5]
    with pytest.raises(ValueError, match="scale"):
        vae.channel_sensitivity(z, scale=0)


@pytest.mark.parametrize("shortcut", [False, True])
def test_save_load_round_trip(tmp_path, shortcut):
    torch.manual_seed(3)
    vae = CausalVideoVAE(**PRESETS["tiny"], latents_mean=[0.1] * 16, latents_std=[2.0] * 16,
                         linear_shortcut=shortcut).eval()
    x = video(5, 16, 16)
    before = vae.decode_latents(vae.encode_latents(x))
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = CausalVideoVAE.from_pretrained(tmp_path / "vae").eval()
    assert loaded.config.latents_std == [2.0] * 16
    assert torch.equal(loaded.decode_latents(loaded.encode_latents(x)), before)


# ---- bad input --------------------------------------------------------------------------------------------


def test_bad_video_input(vae):
    with pytest.raises(ValueError, match="4 channels"):
        vae.encode(torch.zeros(1, 4, 5, 16, 16))
    bad = video(5, 16, 16)
    bad[0, 0, 2, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        vae.encode(bad)
    bad[0, 0, 2, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        vae.streaming_encoder().encode(bad)
    with pytest.raises(ValueError, match=r"6 frames.*1 \+ 4k.*5 or 9"):
        vae.encode(video(6, 16, 16))
    with pytest.raises(ValueError, match=r"30x20.*multiples of 8.*24x16 or 32x24"):
        vae.encode(video(5, 20, 30))
    with pytest.raises(ValueError, match="16 channels|latents have 8"):
        vae.decode(torch.zeros(1, 8, 2, 2, 2))
    with pytest.raises(ValueError, match="NaN or Inf"):
        vae.decode(torch.full((1, 16, 2, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.set_chunk_sizes(encode_frames=6)


def test_padding_then_crop_gives_back_the_input_size(vae):
    x = video(7, 20, 30)
    padded, (t, h, w) = vae.pad_video(x)
    assert padded.shape == (1, 3, 9, 24, 32) and (t, h, w) == (7, 20, 30)
    assert torch.equal(padded[:, :, :7, :20, :30], x)
    assert vae.decode(vae.encode(padded).mean)[:, :, :t, :h, :w].shape == x.shape


def test_missing_or_mismatched_weights_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CausalVideoVAE.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        CausalVideoVAE.from_pretrained(tmp_path / "empty")
    vae = CausalVideoVAE(**PRESETS["tiny"])
    vae.save_pretrained(tmp_path / "vae")
    config_path = tmp_path / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["base_channels"] = 16  # weights were saved for 8
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match"):
        CausalVideoVAE.from_pretrained(tmp_path / "vae")
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        CausalVideoVAE.from_pretrained(tmp_path / "vae")


# ---- Wan 2.1 layout ------------------------------------------------------------------------------------


def test_same_function_as_wan_vae_after_key_mapping():
    from diffusers import AutoencoderKLWan

    from vae3d.wan import from_wan

    torch.manual_seed(0)
    wan = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1).eval()
    with torch.no_grad():
        for name, p in wan.named_parameters():
            if name.endswith("gamma"):
                p.add_(0.2 * torch.randn_like(p))
    ours = from_wan(wan).eval()
    x = video(9, 16, 24)
    with torch.no_grad():
        wan_mean = wan.encode(x).latent_dist.mean
        wan_pixels = wan.decode(wan_mean).sample
    assert (ours.encode(x).mean - wan_mean).abs().max() < 1e-4
    assert (ours.decode(wan_mean) - wan_pixels).abs().max() < 1e-4


# ---- training ------------------------------------------------------------------------------------------


def test_tiny_vae_overfits_one_clip():
    """120 Adam steps on one 5-frame 32x32 clip reach > 25 dB PSNR (about 20-40 s on 2 CPU cores)."""
    torch.manual_seed(0)
    vae = CausalVideoVAE(**PRESETS["tiny"])
    x = clip_tensor(5, 32, 32)
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(120):
        reconstruction, posterior = vae(x, sample_posterior=False)
        loss = (reconstruction - x).square().mean() + 1e-6 * posterior.kl().mean() / x[0].numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval()
    mse = (vae.decode(vae.encode(x).mode()) - x).square().mean().item()
    psnr = 10 * math.log10(4.0 / mse)
    assert psnr > 25.0, psnr
