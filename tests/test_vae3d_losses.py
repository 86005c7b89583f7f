"""vae3d.losses: reconstruction + KL, the 3D patch discriminator after its warm-up, mixed batches."""

import pytest
import torch

from vae3d import PRESETS, CausalVideoVAE
from vae3d.losses import DiagonalGaussian, PatchDiscriminator3D, VAELoss


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return CausalVideoVAE(**PRESETS["tiny"])


def batch(frames, size=16, seed=0, b=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, frames, size, size, generator=g) * 2 - 1


def test_reconstruction_and_kl_terms(vae):
    x = batch(5)
    reconstruction, posterior = vae(x, sample_posterior=False)
    l1 = VAELoss("l1", kl_weight=0.5)(x, reconstruction, posterior)
    l2 = VAELoss("l2", kl_weight=0.0)(x, reconstruction, posterior)
    assert torch.allclose(l1["rec"], (reconstruction - x).abs().mean())
    assert torch.allclose(l2["rec"], (reconstruction - x).square().mean())
    kl = posterior.kl().mean() / x[0].numel()  # summed over latents, per pixel element
    assert torch.allclose(l1["kl"], kl)
    assert torch.allclose(l1["loss"], l1["rec"] + 0.5 * kl)
    assert torch.allclose(l2["loss"], l2["rec"])
    assert l1["gan"] == 0 and l1["disc_loss"] == 0
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        VAELoss("l3")


def test_discriminator_joins_after_warm_up_and_gradients_stay_on_their_side(vae):
    torch.manual_seed(0)
    loss_fn = VAELoss("l1", kl_weight=1e-6, disc_weight=0.5, disc_start=10, disc_channels=8, disc_layers=2)
    x = batch(5)
    reconstruction, posterior = vae(x)
    before = loss_fn(x, reconstruction, posterior, step=9)
    assert not loss_fn.discriminator_active(9) and before["gan"] == 0 and before["disc_loss"] == 0
    after = loss_fn(x, reconstruction, posterior, step=10)
    assert loss_fn.discriminator_active(10)
    assert torch.allclose(after["loss"], before["loss"] + 0.5 * after["gan"])
    assert after["disc_loss"] > 0

    vae.zero_grad()
    after["loss"].backward(retain_graph=True)  # the VAE objective never reaches the discriminator
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())
    assert vae.decoder.conv_out.weight.grad is not None

    vae.zero_grad()
    after["disc_loss"].backward()  # the discriminator's hinge loss never reaches the VAE
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in vae.parameters())
    assert all(p.grad is not None for p in loss_fn.discriminator.parameters())


def test_images_and_videos_in_one_batch(vae):
    loss_fn = VAELoss("l2", kl_weight=1e-3, disc_weight=0.1, disc_start=0, disc_channels=8, disc_layers=2)
    images, clips = batch(1, b=2, seed=1), batch(5, seed=2)
    out_images = vae(images, sample_posterior=False)
    out_clips = vae(clips, sample_posterior=False)
    mixed = loss_fn([images, clips], [out_images[0], out_clips[0]], [out_images[1], out_clips[1]], step=5)
    alone_i = loss_fn(images, *out_images, step=5)
    alone_c = loss_fn(clips, *out_clips, step=5)
    wi, wc = images.numel(), clips.numel()
    for key in ("loss", "rec", "kl", "gan", "disc_loss"):
        expected = (wi * alone_i[key] + wc * alone_c[key]) / (wi + wc)
        assert torch.allclose(mixed[key], expected, atol=1e-6), key
    with pytest.raises(ValueError, match="differs"):
        loss_fn(images, out_clips[0], out_clips[1])


def test_patch_discriminator_shapes():
    d = PatchDiscriminator3D(3, 8, 3)
    assert d(torch.zeros(2, 3, 1, 32, 32)).shape[:3] == (2, 1, 1)  # a still works
    assert d(torch.zeros(1, 3, 5, 32, 48)).shape[:3] == (1, 1, 5)
    with pytest.raises(ValueError, match="at least 8x8"):
        d(torch.zeros(1, 3, 5, 4, 4))


def test_one_training_step_lowers_the_loss(vae):
    torch.manual_seed(0)
    model = CausalVideoVAE(**PRESETS["tiny"])
    loss_fn = VAELoss("l1", kl_weight=1e-6)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = batch(5)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(3):
        reconstruction, posterior = model(x, generator=g.manual_seed(0))
        out = loss_fn(x, reconstruction, posterior, step=0)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0]


def test_first_frame_weight_weighs_frame_zero_against_the_others():
    video = torch.zeros(1, 3, 5, 8, 8)
    reconstruction = video.clone()
    reconstruction[:, :, 0] = 1.0  # all of the error in frame 0
    posterior = DiagonalGaussian(torch.zeros(1, 8, 2, 2, 2))
    plain = VAELoss(kl_weight=0.0)(video, reconstruction, posterior)["rec"]
    heavy = VAELoss(kl_weight=0.0, first_frame_weight=4.0)(video, reconstruction, posterior)["rec"]
    assert float(plain) == pytest.approx(1 / 5)  # the plain mean
    assert float(heavy) == pytest.approx(4 / (4 + 4))  # weighted mean of per-frame errors (1, 0, 0, 0, 0)
    still = VAELoss(kl_weight=0.0, first_frame_weight=4.0)(video[:, :, :1], reconstruction[:, :, :1],
                                                          DiagonalGaussian(torch.zeros(1, 8, 1, 2, 2)))["rec"]
    assert float(still) == pytest.approx(1.0)  # a still is its own first frame
    with pytest.raises(ValueError, match="first_frame_weight"):
        VAELoss(first_frame_weight=0)
