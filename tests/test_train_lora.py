"""LoRA through peft: the adapter trains, is saved, loads on a fresh base, merges, and changes the output."""

import pytest
import torch

from pipelines import lora, train as training
from pipelines.config import LoRAConfig, load_config
from pipelines.errors import UserError
from train_helpers import losses, tiny_config, write_latent_cache


def save_base(folder):
    """A tiny DiT whose zero-initialised gates carry small values, as a pretrained model's would."""
    from video_dit import PRESETS, VideoDiT

    torch.manual_seed(1)
    model = VideoDiT(in_channels=4, text_dims=(), **PRESETS["tiny"])
    for p in model.parameters():
        if not p.any():
            p.data.normal_(0.0, 0.05)
    model.save_pretrained(folder)
    return folder


def test_lora_adapter_trains_saves_loads_merges_and_changes_the_output(tmp_path):
    from video_dit import VideoDiT

    base_dir = save_base(tmp_path / "base")
    cache = write_latent_cache(tmp_path / "cache")
    config = tiny_config(tmp_path, cache, model={"init": str(base_dir)}, lora={"rank": 4}, optim={"lr": 1e-2},
                         steps=6, ema_decay=0.0)
    run = training.train(load_config(config))
    assert sorted(losses(run)) == list(range(1, 7))
    assert (run / "lora" / "adapter_model.safetensors").is_file()

    base = VideoDiT.from_pretrained(base_dir).eval()
    merged = VideoDiT.from_pretrained(run / "model").eval()
    adapted = lora.load_adapter(VideoDiT.from_pretrained(base_dir), run / "lora").eval()
    x, t = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        y_base, y_merged, y_adapted = base(x, t), merged(x, t), adapted(x, t)
    assert not torch.allclose(y_base, y_merged, atol=1e-4)  # training changed the output
    torch.testing.assert_close(y_merged, y_adapted, atol=1e-5, rtol=1e-4)  # merging changes nothing else
    # only the targeted projections moved; everything else is the base model's
    b, m = base.state_dict(), merged.state_dict()
    assert torch.equal(b["patch_embedding.weight"], m["patch_embedding.weight"])
    assert torch.equal(b["final_layer.linear.weight"], m["final_layer.linear.weight"])
    assert not torch.equal(b["blocks.0.attn1.to_qkv.weight"], m["blocks.0.attn1.to_qkv.weight"])


def test_lora_trains_only_the_adapters(tmp_path):
    from video_dit import VideoDiT

    model = lora.add_lora(VideoDiT.from_pretrained(save_base(tmp_path / "base")), LoRAConfig(rank=2))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("fc1" in n for n in trainable) and any("to_qkv" in n for n in trainable)
    with pytest.raises(UserError, match="name no linear layer"):
        lora.add_lora(VideoDiT.from_pretrained(tmp_path / "base"), LoRAConfig(rank=2, targets=["query"]))
    with pytest.raises(UserError, match="not a LoRA adapter folder"):
        lora.load_adapter(VideoDiT.from_pretrained(tmp_path / "base"), tmp_path / "base")
