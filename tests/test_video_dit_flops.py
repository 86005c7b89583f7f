"""FLOPs counter and model-folder description."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from video_dit import PRESETS, VideoDiT, describe
from video_dit.flops import count_flops


@pytest.mark.parametrize("attn,cond,pooled", [("full", "cross", False), ("factorized", "cross", False),
                                              ("full", "joint", False), ("full", "cross", True)])
def test_count_matches_torch_flop_counter(attn, cond, pooled):
    model = VideoDiT(in_channels=4, attention=attn, text_conditioning=cond, text_dims=(8, 12), pooled_text=pooled,
                     given_reference=pooled, refiner_width=8 if pooled else 0, refiner_blocks=1, **PRESETS["tiny"])
    x, text = torch.randn(1, 4, 3, 8, 6), [torch.randn(1, 5, 8), torch.randn(1, 6, 12)]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # the math path's bmm is counted
        model(x, torch.rand(1), text)
    ours = count_flops(model, 3, 8, 6, text_tokens=11)
    assert ours["flops"] == 2 * ours["macs"]
    assert ours["flops"] == pytest.approx(counter.get_total_flops(), rel=1e-3)
    assert ours["tokens"] == 3 * 4 * 3
    if pooled:  # the pooled MLP, counted exactly (its share of the total is below the tolerance above)
        plain = count_flops({**dict(model.config), "pooled_text": False, "given_reference": False, "refiner_width": 0},
                            3, 8, 6, text_tokens=11)
        reference = 36 * 4 * (4 + 1) * 64  # every token's reference latent and flag, embedded
        refiner = 36 * 64 * 4 * 16 + 3 * 64 * 8 + 144 * 9 * 8 * (4 + 4 + 16 + 8 + 8 + 4)  # features, time, convs
        assert ours["parts"]["refiner"] == refiner
        assert ours["macs"] - plain["macs"] == (8 + 12) * 64 + 64 * 64 + reference + refiner


def test_dit_xl_2_reproduces_the_paper():
    """DiT-XL/2 at 256x256 (a 4x32x32 latent, one frame, no text): 118.6 Gflops (multiply-adds)."""
    config = dict(in_channels=4, patch_size=(1, 2, 2), text_dims=(), **PRESETS["XL"])
    assert count_flops(config, 1, 32, 32)["gmacs"] == pytest.approx(118.6, rel=0.02)
    # DiT-B/2 (23.0 Gflops in the paper) and DiT-S/2 (6.1) come out too
    assert count_flops({**config, **PRESETS["B"]}, 1, 32, 32)["gmacs"] == pytest.approx(23.0, rel=0.02)
    assert count_flops({**config, **PRESETS["S"]}, 1, 32, 32)["gmacs"] == pytest.approx(6.1, rel=0.03)


def test_factorized_attention_grows_linearly_in_frames():
    base = dict(in_channels=16, text_dims=(384,), **PRESETS["B"])
    full = [count_flops({**base, "attention": "full"}, t, 32, 32, 64)["parts"]["attention_scores"] for t in (4, 8)]
    fact = [count_flops({**base, "attention": "factorized"}, t, 32, 32, 64)["parts"]["attention_scores"] for t in (4, 8)]
    assert full[1] / full[0] > 3.5 and fact[1] / fact[0] < 2.2


def test_describe_a_model_folder(tmp_path):
    model = VideoDiT(in_channels=4, text_dims=(8,), **PRESETS["tiny"])
    model.save_pretrained(tmp_path / "dit")
    info = describe(tmp_path / "dit", frames=3, height=8, width=8)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["flops_per_step"]["gflops"] == pytest.approx(count_flops(model, 3, 8, 8, 64)["gflops"], abs=1e-3)
    assert info["config"]["hidden_size"] == 64
    json.dumps(info)  # printable as JSON
    # a pipeline folder: transformer/ plus a VAE config giving the pixel -> latent factors
    model.save_pretrained(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "vae").mkdir()
    (tmp_path / "pipe" / "vae" / "config.json").write_text(
        json.dumps({"temporal_downsample": [True, True], "spatial_downsample": [True, True, True]})
    )
    info = describe(tmp_path / "pipe", frames=17, height=64, width=96, pixels=True)
    assert info["latent_size"] == dict(frames=5, height=8, width=12)
    with pytest.raises(ValueError, match="no VideoDiT config"):
        describe(tmp_path)


def test_spacetime_info_on_a_model_folder(tmp_path, capsys):
    from pipelines import cli

    model = VideoDiT(in_channels=4, text_dims=(8,), **PRESETS["tiny"])
    model.save_pretrained(tmp_path / "transformer")
    assert cli.main(["info", str(tmp_path), "--frames", "17", "--size", "64x32"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "VideoDiT" and info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["latent_size"] == dict(frames=5, height=4, width=8)
    assert info["flops_per_step"]["tokens"] == 5 * 2 * 4
