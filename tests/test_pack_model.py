"""tools/pack_default_model.py: a model folder stored in float16 loads back as float32 and samples alike."""


import numpy as np
import pytest
import torch
from safetensors import safe_open

from pipeline_tiny import save_tiny_model
from train_helpers import load_tool

pytestmark = pytest.mark.usefixtures("one_thread")



def test_packed_model_is_half_the_size_and_generates_like_the_original(tmp_path):
    from pipelines.pipeline import SpacetimePipeline

    src = tmp_path / "model"
    save_tiny_model(src)
    card = tmp_path / "card.md"
    card.write_text("# a card\n")
    report = load_tool("pack_default_model").pack(src, tmp_path / "packed", card)
    assert report["bytes_after"] < 0.55 * report["bytes_before"]
    assert (tmp_path / "packed" / "README.md").read_text() == "# a card\n"
    for weights in (tmp_path / "packed").rglob("*.safetensors"):
        with safe_open(str(weights), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} <= {"F16", "I64", "BOOL"}

    outs = []
    for folder in (src, tmp_path / "packed"):
        pipe = SpacetimePipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        assert all(p.dtype == torch.float32 for p in pipe.transformer.parameters())
        outs.append(pipe("a red square", num_inference_steps=2, output_type="pt",
                         generator=torch.Generator().manual_seed(0)).frames)
    assert float((outs[0] - outs[1]).abs().max()) < 0.05
    assert not (tmp_path / ".tmp_packed").exists()


def test_settings_set_the_shipped_sampling_defaults_and_bad_ones_are_refused(tmp_path):
    from pipelines.pipeline import SpacetimePipeline

    tool = load_tool("pack_default_model")
    src = save_tiny_model(tmp_path / "model")
    assert tool.parse_setting("given_guidance_scale=2") == ("given_guidance_scale", 2)
    assert tool.parse_setting("shift=null") == ("shift", None)
    assert tool.parse_setting("guidance_interval=[0.3, 1]") == ("guidance_interval", [0.3, 1])
    tool.pack(src, tmp_path / "packed", settings={"given_guidance_scale": 2, "guidance_rescale": 0.5,
                                                   "guidance_interval": [0.3, 1]})
    pipe = SpacetimePipeline.from_pretrained(tmp_path / "packed")
    assert pipe.guidance_scales() == (3.0, 2.0) and pipe.config.guidance_rescale == 0.5
    assert list(pipe.config.guidance_interval) == [0.3, 1.0]
    before = (tmp_path / "packed" / "model_index.json").read_text()
    for settings, words in (({"guidance": 2}, "not a sampling setting; use one of"),
                            ({"guidance_rescale": 3}, "expected a number in \\[0, 1\\]"),
                            ({"guidance_interval": [0.6, 0.2]}, "expected two noise levels")):
        with pytest.raises(SystemExit, match=words):
            tool.pack(src, tmp_path / "packed", settings=settings)
        assert (tmp_path / "packed" / "model_index.json").read_text() == before  # left as it was
        assert not (tmp_path / ".tmp_packed").exists()


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="not a model folder"):
        load_tool("pack_default_model").pack(tmp_path, tmp_path / "packed")


def test_a_vae_folder_packs_alone_and_loads_as_float32_with_its_latent_statistics(tmp_path):
    from pipelines.pipeline import load_part
    from vae3d import PRESETS, CausalVideoVAE

    torch.manual_seed(0)
    vae = CausalVideoVAE(**{**PRESETS["tiny"], "linear_shortcut": True})
    vae.fit_linear_shortcut([torch.rand(3, 9, 32, 32) * 2 - 1 for _ in range(4)])
    vae.save_pretrained(tmp_path / "vae")
    report = load_tool("pack_default_model").pack(tmp_path / "vae", tmp_path / "packed")
    assert report["bytes_after"] < 0.55 * report["bytes_before"]
    packed, _ = load_part("vae", str(tmp_path / "packed"))
    assert all(p.dtype == torch.float32 for p in packed.parameters())
    assert packed.config.latents_std == vae.config.latents_std
    clip = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        z0, z1 = vae.eval().encode_latents(clip), packed.encode_latents(clip)
    assert float((z0 - z1).abs().max()) < 0.02 * float(z0.abs().max())


def test_a_pipeline_ships_a_vae_of_the_same_latent_space_in_place_of_its_own(tmp_path):
    from pipelines.pipeline import load_part
    from vae3d import CausalVideoVAE

    src = tmp_path / "model"
    save_tiny_model(src)
    pack = load_tool("pack_default_model").pack
    vae = CausalVideoVAE.from_pretrained(src / "vae")
    with torch.no_grad():  # a decoder trained on: the same encoder, another decoder
        vae.decoder.conv_out.weight.mul_(-1.0)
    vae.save_pretrained(tmp_path / "decoder_trained")
    pack(src, tmp_path / "packed", vae=tmp_path / "decoder_trained")
    packed, _ = load_part("vae", str(tmp_path / "packed"))
    assert torch.allclose(packed.decoder.conv_out.weight, vae.decoder.conv_out.weight, atol=1e-3)
    assert torch.equal(load_part("transformer", str(tmp_path / "packed"))[0].patch_embedding.weight,
                       load_part("transformer", str(src))[0].patch_embedding.weight.half().float())

    with torch.no_grad():  # another encoder: the DiT would not understand its latents
        vae.encoder.conv_in.weight.add_(0.01)
    vae.save_pretrained(tmp_path / "other_encoder")
    with pytest.raises(SystemExit, match=r"encoder differs .*\(encoder\.conv_in\.weight\)"):
        pack(src, tmp_path / "packed2", vae=tmp_path / "other_encoder")
    vae.register_to_config(latents_std=[2.0] * vae.config.latent_channels)
    vae.save_pretrained(tmp_path / "other_stats")
    with pytest.raises(SystemExit, match=r"config differs .*\(latents_std\)"):
        pack(src, tmp_path / "packed2", vae=tmp_path / "other_stats")
    assert not (tmp_path / "packed2").exists()
