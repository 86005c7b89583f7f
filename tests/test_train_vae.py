"""VAE training: crops at native scale, the discriminator's own optimizer, exact resume, latent statistics."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import moving_square
from pipelines import train as training
from pipelines.config import load_config
from pipelines.data import Bucket, VideoFolder
from pipelines.video_io import write_video
from train_helpers import losses, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for i in range(4):
        write_video(folder / f"clip{i}.gif", moving_square(9, 48, 64, seed=i), 8.0)
    return folder


def vae_config(tmp_path, clips, out="run", **top):
    sections = {
        "model": {"kind": "vae", "preset": "tiny"},
        "data": {"root": str(clips), "frames": 9, "buckets": [[9, 32, 32]], "crop": "random", "batch_size": 2},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "vae": {"disc_weight": 0.5, "disc_start": 1, "disc_lr": 1e-3},
    }
    return load_config(write_config(tmp_path, sections, out, **{"steps": 4, "save_every": 2, **top}))


def test_random_crops_are_windows_of_the_original_pixels(clips):
    from pipelines.video_io import read_video

    data = VideoFolder(clips, frames=9, buckets=[Bucket(9, 32, 32)], crop="random", spatial_multiple=8)
    full = torch.from_numpy(read_video(clips / "clip0.gif").frames).permute(3, 0, 1, 2).float() / 127.5 - 1
    corners = set()
    for epoch in range(6):
        data.set_epoch(epoch)
        crop = data[0]["video"]  # (3, 9, 32, 32)
        hits = [(y, x) for y in range(48 - 31) for x in range(64 - 31)
                if torch.allclose(full[:, :, y : y + 32, x : x + 32], crop, atol=1e-6)]
        assert hits, "a random crop must be an unscaled window of the clip"
        corners.add(hits[0])
    assert len(corners) > 1  # the window moves between epochs
    scaled = VideoFolder(clips, frames=9, buckets=[Bucket(9, 32, 32)], spatial_multiple=8)[0]["video"]
    assert not torch.allclose(scaled, full[:, :, :32, :32])  # "center" scales the whole frame down


def test_vae_run_trains_the_discriminator_resumes_exactly_and_measures_latent_stats(tmp_path, clips):
    accum = {"grad_accum": 2}  # two micro-batches per step, for the VAE and its discriminator alike
    straight = training.train(vae_config(tmp_path, clips, out="straight", optim=accum))
    cfg = vae_config(tmp_path, clips, out="resumed", optim=accum)
    training.train(cfg, stop_at=2)  # the discriminator has trained for a step when this is saved
    resumed = training.train(cfg, resume=tmp_path / "resumed")
    assert sorted(losses(straight)) == [1, 2, 3, 4]
    assert losses(resumed) == losses(straight)  # discriminator state included, bit for bit

    from vae3d.losses import PatchDiscriminator3D

    first = load_file(straight / "checkpoints" / "step_00000002" / "discriminator.safetensors")
    last = load_file(straight / "checkpoints" / "step_00000004" / "discriminator.safetensors")
    assert first.keys() == PatchDiscriminator3D().state_dict().keys()
    moments = load_file(straight / "checkpoints" / "step_00000002" / "discriminator.optimizer.safetensors")
    assert moments and any(v.abs().sum() > 0 for v in moments.values())  # it had stepped before the save
    assert any(not torch.equal(first[k], last[k]) for k in first)  # it is stepped after disc_start
    again = load_file(resumed / "checkpoints" / "step_00000004" / "discriminator.safetensors")
    assert all(torch.equal(last[k], again[k]) for k in last)

    from vae3d import CausalVideoVAE

    vae = CausalVideoVAE.from_pretrained(straight / "model")
    assert vae.config.latents_mean is not None and len(vae.config.latents_std) == vae.config.latent_channels
    data = VideoFolder(clips, frames=9, buckets=[Bucket(9, 32, 32)], crop="random", spatial_multiple=8)
    z = torch.cat([vae.encode_latents(data[i]["video"][None]) for i in range(len(data))])
    per_channel = z.transpose(0, 1).flatten(1)
    assert per_channel.mean(1).abs().max() < 0.5 and per_channel.std(1).sub(1).abs().max() < 0.5


def test_a_discriminator_that_is_off_saves_nothing(tmp_path, clips):
    run = training.train(vae_config(tmp_path, clips, vae={"disc_weight": 0.0}, steps=2, save_every=2))
    assert not (run / "checkpoints" / "step_00000002" / "discriminator.safetensors").exists()
    assert np.isfinite(list(losses(run).values())).all()


def test_a_clip_that_fails_in_a_worker_is_skipped_and_counted_in_the_run_summary(tmp_path, clips):
    import json
    import shutil
    import warnings

    from pipelines.data import SkippedFileWarning
    from test_data import truncate, write_faststart

    data = tmp_path / "data"
    shutil.copytree(clips, data)
    write_faststart(data / "cut_data.mp4", moving_square(24, 32, 48), fps=8)
    truncate(data / "cut_data.mp4", 0.85)  # opens and says 24 frames, but the frames are gone
    cfg = vae_config(tmp_path, data, vae={"disc_weight": 0.0}, data={"num_workers": 1, "batch_size": 1},
                     steps=6, save_every=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        run = training.train(cfg)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records[-1]["data"] == "4 files used, 1 skipped (1 unreadable)"
    assert sorted(losses(run)) == list(range(1, 7))  # the run went on to its last step


def test_a_decoder_only_run_keeps_the_latent_space_and_its_statistics(tmp_path, clips):
    from vae3d import CausalVideoVAE

    shortcut = {"kind": "vae", "preset": "tiny", "args": {"linear_shortcut": True}}
    base = training.train(vae_config(tmp_path, clips, out="base", model=shortcut, vae={"disc_weight": 0.0}, steps=2,
                                     save_every=2))
    cfg = vae_config(tmp_path, clips, out="decoder", model={"kind": "vae", "init": str(base / "model")},
                     vae={"disc_weight": 0.0, "train_encoder": False, "first_frame_weight": 3.0},
                     steps=3, save_every=3)
    run = training.train(cfg)
    before = CausalVideoVAE.from_pretrained(base / "model").state_dict()
    after = CausalVideoVAE.from_pretrained(run / "model")
    for name, value in after.state_dict().items():
        kept = name.startswith(("encoder.", "quant_conv.", "shortcut.encode_map."))
        assert torch.equal(value, before[name]) == kept, name  # the encoder is frozen, the decoder learns
    original = CausalVideoVAE.from_pretrained(base / "model").config
    assert after.config.latents_mean == original.latents_mean and after.config.latents_std == original.latents_std

    from pipelines.errors import UserError

    with pytest.raises(UserError, match="vae.train_encoder"):  # no trained encoder and no shortcut to fit
        training.train(vae_config(tmp_path, clips, out="no_init", vae={"train_encoder": False}))
    with pytest.raises(UserError, match="vae.train_encoder"):  # a preset name is no trained encoder
        training.train(vae_config(tmp_path, clips, out="preset", model={"kind": "vae", "init": "tiny"},
                                  vae={"train_encoder": False}))
    whole = vae_config(tmp_path, clips, out="decoder", model={"kind": "vae", "init": str(base / "model")},
                       vae={"disc_weight": 0.0}, steps=4, save_every=3)
    with pytest.raises(UserError, match="vae.train_encoder=false"):  # the optimizer holds other weights
        training.train(whole, resume=run)


def test_a_new_vae_with_a_linear_shortcut_starts_as_the_code_fitted_to_its_clips(tmp_path, clips, capfd):
    from vae3d import CausalVideoVAE

    model = {"kind": "vae", "preset": "tiny", "args": {"linear_shortcut": True}}
    cfg = vae_config(tmp_path, clips, out="pca", model=model, vae={"disc_weight": 0.0}, steps=2, save_every=1,
                     optim={"lr": 1e-12, "warmup_steps": 1}, ema_decay=0.9)
    run = training.train(cfg, stop_at=1)  # one step of a negligible rate: the weights are the fit
    assert "linear shortcut fitted to 4 clips" in capfd.readouterr().out
    training.export_checkpoint(run / "checkpoints" / "step_00000001", tmp_path / "step1")  # EMA: fitted too
    vae = CausalVideoVAE.from_pretrained(tmp_path / "step1")
    v = vae.shortcut.decode_map.weight  # (block, 16): orthonormal principal directions
    assert torch.allclose(v.T @ v, torch.eye(16), atol=1e-4)
    assert torch.allclose(vae.shortcut.encode_map.weight, v.T, atol=1e-6)
    assert vae.decoder.conv_out.weight.abs().max() < 1e-6  # the convolutions start from zero output
    assert min(vae.config.latents_std) > 0
    training.train(cfg, resume=run)  # a resumed run keeps its weights: nothing is fitted again
    assert "linear shortcut fitted" not in capfd.readouterr().out
    training.export_checkpoint(run / "checkpoints" / "step_00000002", tmp_path / "step2")
    assert CausalVideoVAE.from_pretrained(tmp_path / "step2").config.latents_std == vae.config.latents_std


def test_colour_augment_permutes_each_clips_channels_and_keeps_its_pixels(clips):
    plain = VideoFolder(clips, frames=9, buckets=[Bucket(9, 32, 32)], crop="random", spatial_multiple=8)
    mixed = VideoFolder(clips, frames=9, buckets=[Bucket(9, 32, 32)], crop="random", spatial_multiple=8,
                        colour_augment=True)
    orders = set()
    for epoch in range(8):
        plain.set_epoch(epoch)
        mixed.set_epoch(epoch)
        a, b = plain[1]["video"], mixed[1]["video"]  # the same window, channels reordered
        order = next(p for p in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
                     if torch.equal(a[list(p)], b))
        orders.add(order)
    assert len(orders) > 2  # it varies with the epoch

    from pipelines.errors import UserError

    with pytest.raises(UserError, match="data.colour_augment"):
        load_config(None, ["data.root=x", "data.colour_augment=true"])  # a DiT's captions would be wrong


def test_latent_statistics_of_a_colour_augmented_run_are_measured_on_the_true_colours(tmp_path, clips):
    import shutil

    from vae3d import CausalVideoVAE

    run = training.train(vae_config(tmp_path, clips, out="colour", vae={"disc_weight": 0.0},
                                    data={"colour_augment": True}, steps=2, save_every=2))
    stored = CausalVideoVAE.from_pretrained(run / "model").config
    copy = tmp_path / "copy"
    shutil.copytree(run / "model", copy)
    plain = VideoFolder(clips, frames=9, buckets=[Bucket(9, 32, 32)], crop="random", spatial_multiple=8)
    mean, std = training.measure_latent_stats(copy, plain)
    assert stored.latents_mean == pytest.approx(mean, abs=1e-5) and stored.latents_std == pytest.approx(std, abs=1e-5)


def test_a_new_decoder_only_vae_keeps_its_fitted_linear_code_as_the_encoder(tmp_path, clips):
    from vae3d import CausalVideoVAE

    model = {"kind": "vae", "preset": "tiny", "args": {"linear_shortcut": True}}
    cfg = vae_config(tmp_path, clips, out="fixed", model=model, vae={"disc_weight": 0.0, "train_encoder": False},
                     steps=3, save_every=1)
    run = training.train(cfg)
    fitted = load_file(run / "checkpoints" / "step_00000001" / "model.safetensors")
    trained = CausalVideoVAE.from_pretrained(run / "model")
    changed = set()
    for name, value in trained.state_dict().items():
        if not torch.equal(value, fitted[name]):
            changed.add(name.split(".")[0] if not name.startswith("shortcut.") else ".".join(name.split(".")[:2]))
    assert changed and not changed & {"encoder", "quant_conv", "shortcut.encode_map"}
    assert trained.config.latents_std is not None  # the fit's statistics, kept
