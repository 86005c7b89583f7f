"""The CUDA path: attention (SDPA, or flash-attn when installed) in bf16, the DiT under autocast,
and a whole pipeline run on the GPU. Skipped without a CUDA device."""

import pytest
import torch

from video_dit import PRESETS, VideoDiT
from video_dit.attention import attention, flash_available

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("masked", [False, True])
def test_attention_in_bf16_matches_fp32(masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 64, 4, 32, generator=g) for _ in range(3))
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 40:] = False
    reference = attention(q, k, v, mask=mask if masked else None)
    out = attention(*(t.cuda().bfloat16() for t in (q, k, v)), mask=mask.cuda() if masked else None)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float().cpu(), reference, atol=3e-2, rtol=3e-2)
    if flash_available():
        flash = attention(*(t.cuda().bfloat16() for t in (q, k, v)), mask=mask.cuda() if masked else None,
                          backend="flash")
        torch.testing.assert_close(flash.float().cpu(), reference, atol=3e-2, rtol=3e-2)


def test_dit_under_bf16_autocast_matches_fp32_on_cpu():
    torch.manual_seed(0)
    model = VideoDiT(in_channels=4, text_dims=(16,), **{**PRESETS["tiny"], "hidden_size": 64, "num_heads": 4})
    for p in model.parameters():  # a fresh model outputs zero; give every layer some weight
        torch.nn.init.normal_(p, std=0.02)
    x, t = torch.randn(1, 4, 3, 8, 8), torch.tensor([0.5])
    text, mask = [torch.randn(1, 5, 16)], [torch.ones(1, 5, dtype=torch.bool)]
    reference = model(x, t, text, mask)
    model.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x.cuda(), t.cuda(), [text[0].cuda()], [mask[0].cuda()])
    torch.testing.assert_close(out.float().cpu(), reference, atol=5e-2, rtol=5e-2)


def test_a_pipeline_generates_on_the_gpu():
    from pipeline_tiny import HEIGHT, NATIVE_FRAMES, WIDTH, tiny_pipeline

    pipe = tiny_pipeline().to("cuda")
    out = pipe("a red square moves to the right", generator=torch.Generator().manual_seed(0))
    assert out.frames[0].shape == (NATIVE_FRAMES, HEIGHT, WIDTH, 3)
