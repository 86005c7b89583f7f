"""SpacetimePipeline: text-to-video, image-to-video, extension, interpolation, model folders, bad input."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import moving_square
from pipeline_tiny import HEIGHT, NATIVE_FRAMES, WIDTH, tiny_pipeline, with_settings
from pipelines.errors import UserError
from pipelines.pipeline import SpacetimePipeline, default_model_path
from pipelines.video_io import frames_to_tensor, read_image, resize_and_crop


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(context_latent_frames=1)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- text-to-video -----------------------------------------------------------------------------


def test_text_to_video_shape_and_determinism_by_seed(pipe):
    a = pipe("a red circle moves to the right", generator=seeded(3))
    b = pipe("a red circle moves to the right", generator=seeded(3))
    c = pipe("a red circle moves to the right", generator=seeded(4))
    assert a.frames.shape == (1, NATIVE_FRAMES, HEIGHT, WIDTH, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    assert a.seed == 3 and a.fps == 8.0 and a.notices == []


def test_prompt_and_guidance_change_the_clip(pipe):
    a = pipe("a red circle", output_type="latent", generator=seeded(0)).frames
    b = pipe("a blue square", output_type="latent", generator=seeded(0)).frames
    c = pipe("a red circle", guidance_scale=1.0, output_type="latent", generator=seeded(0)).frames
    d = pipe("a red circle", negative_prompt="blurry", output_type="latent", generator=seeded(0)).frames
    assert not torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


def test_guidance_rescale_changes_the_clip_and_defaults_to_the_folder(pipe, tmp_path):
    plain = pipe("a red circle", output_type="latent", generator=seeded(0)).frames
    rescaled = pipe("a red circle", guidance_rescale=0.7, output_type="latent", generator=seeded(0)).frames
    assert not torch.equal(plain, rescaled)
    assert torch.equal(plain, pipe("a red circle", guidance_rescale=0.0, output_type="latent", generator=seeded(0)).frames)
    with pytest.raises(UserError, match=r"guidance_rescale=1.5; use a strength from 0 \(off\) to 1"):
        pipe("a red circle", guidance_rescale=1.5)
    folder = tmp_path / "model"
    pipe.register_to_config(guidance_rescale=0.7)
    try:
        pipe.save_pretrained(folder)
    finally:
        pipe.register_to_config(guidance_rescale=0.0)
    loaded = SpacetimePipeline.from_pretrained(folder)
    assert loaded.config.guidance_rescale == 0.7
    assert torch.equal(loaded("a red circle", output_type="latent", generator=seeded(0)).frames, rescaled)
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    del index["guidance_rescale"]  # folders written before the setting existed: plain guidance
    path.write_text(json.dumps(index))
    assert SpacetimePipeline.from_pretrained(folder).config.guidance_rescale == 0.0


def test_given_guidance_guides_image_to_video_and_extension(pipe, tmp_path):
    still = moving_square(1, 32, 32)[0]

    def latents(p, **kwargs):
        return p("the square slides", output_type="latent", generator=seeded(0), **kwargs).frames

    assert pipe.guidance_scales() == (3.0, 3.0)  # the folder has none: guidance_scale throughout
    folder = with_settings(pipe, given_guidance_scale=1.5)
    assert folder.guidance_scales() == (3.0, 1.5)
    assert folder.guidance_scales(4.0) == (4.0, 4.0)  # a guidance passed holds for every window
    assert folder.guidance_scales(4.0, 2.0) == (4.0, 2.0) and pipe.guidance_scales(None, 2.0) == (3.0, 2.0)
    # image-to-video, also over several windows, and extension run at the given guidance
    for frames in (9, 17):
        assert torch.equal(latents(folder, image=still, num_frames=frames),
                           latents(pipe, image=still, num_frames=frames, guidance_scale=1.5))
    assert not torch.equal(latents(folder, image=still), latents(pipe, image=still))
    clip = moving_square(9, 32, 32)
    assert torch.equal(latents(folder, video=clip, num_frames=8), latents(pipe, video=clip, num_frames=8,
                                                                           guidance_scale=1.5))
    # text-to-video keeps guidance_scale, in every window of a long clip too
    assert torch.equal(latents(folder), latents(pipe))
    assert torch.equal(latents(folder, num_frames=17), latents(pipe, num_frames=17))
    with pytest.raises(UserError, match=r"given_guidance=-1; use 1 \(none\) or more"):
        pipe("a red circle", given_guidance_scale=-1)
    folder.save_pretrained(tmp_path / "model")
    assert SpacetimePipeline.from_pretrained(tmp_path / "model").config.given_guidance_scale == 1.5
    path = tmp_path / "model" / "model_index.json"
    index = json.loads(path.read_text())
    del index["given_guidance_scale"]  # folders written before the setting existed
    path.write_text(json.dumps(index))
    assert SpacetimePipeline.from_pretrained(tmp_path / "model").guidance_scales() == (3.0, 3.0)
    index["given_guidance_scale"] = "low"
    path.write_text(json.dumps(index))
    with pytest.raises(UserError, match="given_guidance_scale.*a number >= 0, or null for guidance_scale"):
        SpacetimePipeline.from_pretrained(tmp_path / "model")


def test_without_a_generator_a_seed_is_drawn_and_reproduces_the_clip(pipe):
    first = pipe("a red circle", output_type="latent")
    again = pipe("a red circle", output_type="latent", generator=seeded(first.seed))
    assert torch.equal(first.frames, again.frames)


def test_output_types_agree(pipe):
    np_frames = pipe("a circle", generator=seeded(1)).frames
    pt = pipe("a circle", output_type="pt", generator=seeded(1)).frames
    pil = pipe("a circle", output_type="pil", generator=seeded(1)).frames
    latents = pipe("a circle", output_type="latent", generator=seeded(1)).frames
    assert pt.shape == (1, 3, NATIVE_FRAMES, HEIGHT, WIDTH) and pt.min() >= -1 and pt.max() <= 1
    assert np.array_equal(np.asarray(pil[0][4]), np_frames[0, 4])
    assert np.array_equal(((pt[0].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy(), np_frames[0])
    assert latents.shape == (1, pipe.transformer.config.in_channels, 3, HEIGHT // 8, WIDTH // 8)
    # Streaming decode (window by window) matches one pass of the VAE.
    assert np.abs(np_frames.astype(int) - pipe.decode_latents(latents).astype(int)).max() <= 1


def test_callback_on_step_end_sees_every_step_and_can_replace_latents(pipe):
    seen = []

    def record(p, step, sigma, kwargs):
        seen.append((step, round(float(sigma), 6), tuple(kwargs["latents"].shape)))
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == 1 else {}

    out = pipe("a circle", num_inference_steps=2, output_type="latent", generator=seeded(0),
               callback_on_step_end=record)
    assert [s for s, _, _ in seen] == [0, 1] and seen[-1][1] == 0.0
    assert torch.count_nonzero(out.frames) == 0  # the last step's replacement is what comes out


# ---- requests the model cannot take as asked ---------------------------------------------------


def test_frames_and_size_are_rounded_with_a_notice(pipe):
    out = pipe("a circle", num_frames=8, height=30, width=41, generator=seeded(0))
    assert out.frames.shape == (1, 9, 32, 48, 3)
    assert any("frames 8 rounded to 9" in n for n in out.notices)
    assert any("41x30 rounded to 48x32" in n for n in out.notices)
    assert pipe.check_inputs("x", num_frames=1).num_frames == 1  # a still is a one-frame clip


@pytest.mark.parametrize("kwargs, words", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt="x", num_frames=0), "frames=0"),
    (dict(prompt="x", height=0, width=32), "size 32x0"),
    (dict(prompt="x", num_inference_steps=0), "steps=0"),
    (dict(prompt="x", output_type="gif"), "output_type"),
])
def test_requests_that_cannot_be_made_are_refused_in_one_line(pipe, kwargs, words):
    with pytest.raises(UserError) as err:
        pipe(**kwargs, generator=seeded(0))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_prompt_longer_than_the_encoder_takes_is_truncated_and_said(pipe):
    encoder = pipe.text_encoder.encoders[0]
    long_prompt = " ".join(["red circle"] * encoder.max_length)
    out = pipe(long_prompt, output_type="latent", generator=seeded(0))
    assert any("prompt truncated" in n and str(encoder.max_length) in n for n in out.notices)
    assert out.frames.shape[2] == 3


# ---- image-to-video ----------------------------------------------------------------------------


def test_image_to_video_first_latent_frame_is_the_encoded_still_exactly(pipe):
    still = moving_square(1, 48, 64)[0]
    out = pipe("the square slides", image=still, output_type="latent", generator=seeded(0))
    expected = pipe.vae.encode_latents(frames_to_tensor(resize_and_crop(still, WIDTH, HEIGHT)))
    assert torch.equal(out.frames[:, :, :1], expected.float())
    assert out.frames.shape[2] == 3


def test_image_to_video_first_frame_reproduces_the_still_through_the_vae(pipe):
    still = moving_square(1, 32, 32)[0]
    frames = pipe("the square slides", image=still, generator=seeded(0)).frames[0]
    direct = pipe.decode_latents(pipe.encode_frames(still, WIDTH, HEIGHT))[0, 0]
    assert np.abs(frames[0].astype(int) - direct.astype(int)).max() <= 1


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "odd", "P"])
def test_awkward_stills_are_accepted(pipe, tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "L":
        img = Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L")
    elif mode == "RGBA":
        img = Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA")
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (36, 36), dtype=np.uint16))
    elif mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (33, 35, 3), dtype=np.uint8)).convert("P")
    else:
        img = Image.fromarray(rng.integers(0, 256, (7, 103, 3), dtype=np.uint8))
    path = tmp_path / "still.png"
    img.save(path)
    out = pipe("it moves", image=str(path), output_type="latent", generator=seeded(0))
    expected = pipe.encode_frames(read_image(path), WIDTH, HEIGHT)
    assert torch.equal(out.frames[:, :, :1], expected)


def test_interpolation_holds_the_first_and_last_stills(pipe):
    first, last = moving_square(1, 32, 32, seed=1)[0], moving_square(1, 32, 32, seed=2)[0]
    out = pipe("from one to the other", image=first, last_image=last, output_type="latent", generator=seeded(0))
    assert torch.equal(out.frames[:, :, :1], pipe.encode_frames(first, WIDTH, HEIGHT))
    assert torch.equal(out.frames[:, :, -1:], pipe.encode_frames(last, WIDTH, HEIGHT))
    assert not torch.equal(out.frames[:, :, 1:2], out.frames[:, :, :1])


def test_a_transformer_with_the_given_reference_sees_the_still_through_it(pipe, tmp_path):
    """Image-to-video, extension and a model folder with a reference DiT: its reference path is what
    changes the clip once the still is given, and text-to-video (no given frame) is left alone."""
    from video_dit import VideoDiT

    base = pipe.transformer
    dit = VideoDiT(**{**dict(base.config), "given_reference": True}).eval()
    dit.load_state_dict(base.state_dict(), strict=False)
    silent = with_settings(pipe, context_latent_frames=1)
    silent.register_modules(transformer=dit)
    still = moving_square(1, 32, 32)[0]
    before = silent("the square slides", image=still, output_type="latent", generator=seeded(0)).frames
    plain = pipe("the square slides", image=still, output_type="latent", generator=seeded(0)).frames
    assert torch.allclose(before, plain, atol=1e-5)  # a silent reference: the base model's clip
    torch.nn.init.normal_(dit.reference_embedding.weight, std=0.5)
    after = silent("the square slides", image=still, output_type="latent", generator=seeded(0)).frames
    assert torch.equal(after[:, :, :1], before[:, :, :1]) and not torch.allclose(after, before, atol=1e-3)
    t2v = [p("the square slides", output_type="latent", generator=seeded(0)).frames for p in (silent, pipe)]
    assert torch.allclose(*t2v, atol=1e-5)
    extended = silent("more", video=moving_square(9, 32, 32), num_frames=8, generator=seeded(0))
    assert extended.frames.shape[1] == 17
    silent.save_pretrained(tmp_path / "model")
    loaded = SpacetimePipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer.config.given_reference
    again = loaded("the square slides", image=still, output_type="latent", generator=seeded(0)).frames
    assert torch.allclose(again, after, atol=1e-5)


# ---- extension ---------------------------------------------------------------------------------


def test_extension_keeps_the_input_frames_and_continues(pipe):
    clip = moving_square(11, 32, 32)
    out = pipe("the square keeps going", video=clip, num_frames=8, generator=seeded(0))
    assert out.frames.shape == (1, 11 + 8, 32, 32, 3) and out.num_frames == 19
    assert np.array_equal(out.frames[0, :11], clip)
    # The new frames continue from the latents of the input's last frames.
    latents = pipe("the square keeps going", video=clip, num_frames=8, output_type="latent", generator=seeded(0))
    q = pipe.prefix_latent_frames(len(clip))  # the input's last 1 + 4(q - 1) frames, encoded
    tail = pipe.encode_frames(clip[len(clip) - 1 - 4 * (q - 1):], WIDTH, HEIGHT)
    assert q == 2 and torch.equal(latents.frames[:, :, :q], tail)


def test_extension_frames_are_rounded_to_whole_latent_frames(pipe):
    out = pipe("more", video=moving_square(9, 32, 32), num_frames=6, generator=seeded(0))
    assert out.frames.shape[1] == 9 + 8 and any("new frames 6 rounded to 8" in n for n in out.notices)


def test_an_input_too_short_to_extend_from_is_refused(pipe):
    pipe = with_settings(pipe, context_latent_frames=2)
    with pytest.raises(UserError, match=r"has 3 frames; extending needs at least 5"):
        pipe("more", video=moving_square(3, 32, 32), num_frames=4, generator=seeded(0))


# ---- model folders -----------------------------------------------------------------------------


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["_class_name"] == "SpacetimePipeline" and index["text_encoders"] == ["minilm"]
    assert (index["native_frames"], index["height"], index["width"]) == (NATIVE_FRAMES, HEIGHT, WIDTH)
    assert index["vae"] == ["vae3d", "CausalVideoVAE"] and index["transformer"] == ["video_dit", "VideoDiT"]
    loaded = SpacetimePipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    a = pipe("a red circle", generator=seeded(5)).frames
    b = loaded("a red circle", generator=seeded(5)).frames
    assert np.array_equal(a, b)


def test_a_model_folder_from_separately_saved_parts(pipe, tmp_path):
    pipe.vae.save_pretrained(tmp_path / "vae")
    pipe.transformer.save_pretrained(tmp_path / "dit")
    assembled = SpacetimePipeline.from_parts(tmp_path / "vae", tmp_path / "dit", ["default"], native_frames=9,
                                             height=32, width=32, num_inference_steps=1, guidance_scale=3.0,
                                             context_latent_frames=1)
    assembled.set_progress_bar_config(disable=True)
    a = pipe("a red circle", output_type="latent", generator=seeded(2)).frames
    assert torch.equal(a, assembled("a red circle", output_type="latent", generator=seeded(2)).frames)
    with pytest.raises(UserError, match="missing config.json"):
        SpacetimePipeline.from_parts(tmp_path, tmp_path / "dit")


def test_a_model_folder_missing_a_part_lists_what_is_expected(pipe, tmp_path):
    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserError) as err:
        SpacetimePipeline.from_pretrained(folder)
    message = str(err.value)
    assert "missing transformer/diffusion_pytorch_model.safetensors" in message
    assert "vae/config.json" in message and "model_index.json" in message and "\n" not in message


def test_a_model_folder_with_wrong_weights_is_refused_in_one_line(pipe, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = sorted(state)[0]
    state[key] = torch.zeros(*state[key].shape, 2)
    save_file(state, weights)
    with pytest.raises(UserError, match=rf"tensor {key} has shape"):
        SpacetimePipeline.from_pretrained(folder)
    with pytest.raises(UserError, match="not found"):
        SpacetimePipeline.from_pretrained(tmp_path / "nowhere")
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        SpacetimePipeline.from_pretrained(folder)



def test_a_model_folder_from_a_newer_format_or_another_class_is_refused(pipe, tmp_path):
    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    assert index["format"] == 1
    path.write_text(json.dumps({**index, "format": 2, "spacetime_version": "9.0.0"}))
    with pytest.raises(UserError, match=r"format 2, written by spacetime-video 9\.0\.0; .* reads format 1"):
        SpacetimePipeline.from_pretrained(folder)
    path.write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(UserError, match="describes a StableDiffusionPipeline, not a spacetime-video model"):
        SpacetimePipeline.from_pretrained(folder)
    for key, value, says in (("height", "64", "a whole number of pixels"), ("fps", None, "a positive number"),
                             ("context_noise", 2, "a number in [0, 1]"), ("shift", -1, "or null for automatic"),
                             ("guidance_rescale", -0.5, "a number in [0, 1]")):
        path.write_text(json.dumps({**index, key: value}))
        with pytest.raises(UserError, match=rf"model_index.json: {key}={json.dumps(value)}; expected .*{re.escape(says)}"):
            SpacetimePipeline.from_pretrained(folder)
    del index["format"]  # folders written before the field existed still load
    path.write_text(json.dumps(index))
    SpacetimePipeline.from_pretrained(folder)

def test_no_default_model_is_a_clear_one_line_error():
    try:
        path = default_model_path()
    except UserError as err:
        assert str(err).startswith("no default model is installed in this version; pass --model DIR")
    else:
        assert (path / "model_index.json").is_file()
