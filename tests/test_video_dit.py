"""VideoDiT: shapes, zero at init, patchify, RoPE, errors, save/load, checkpointing, overfitting."""

import contextlib
import json

import pytest
import torch

from video_dit import PRESETS, VideoDiT, flow, patchify, unpatchify
from video_dit.attention import attention
from video_dit.model import apply_rope, given_reference, rope_frequencies

CONFIGS = [("full", "cross"), ("factorized", "cross"), ("full", "joint")]


def tiny(attention="full", text_conditioning="cross", text_dims=(8,), **kwargs):
    return VideoDiT(
        in_channels=4, attention=attention, text_conditioning=text_conditioning, text_dims=text_dims,
        **{**PRESETS["tiny"], **kwargs},
    )


def perturb(model, scale=0.05, seed=0):
    """Give every parameter a random nudge, so zero-initialised paths carry signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def text(batch=2, lengths=(5,), dims=(8,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, d, generator=g) for n, d in zip(lengths, dims)]


@contextlib.contextmanager
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("shape,patch", [((2, 4, 3, 6, 10), (1, 2, 2)), ((1, 3, 4, 6, 9), (2, 3, 3)), ((1, 2, 5, 7, 3), (1, 1, 1))])
def test_patchify_unpatchify_inverse(shape, patch):
    x = torch.randn(shape)
    tokens = patchify(x, patch)
    grid = (shape[2] // patch[0], shape[3] // patch[1], shape[4] // patch[2])
    assert tokens.shape == (shape[0], grid[0] * grid[1] * grid[2], shape[1] * patch[0] * patch[1] * patch[2])
    assert torch.equal(unpatchify(tokens, patch, grid), x)
    # frame-major token order: the first H'W' tokens come from the first temporal patch only
    x2 = x.clone()
    x2[:, :, patch[0]:] = 0
    assert torch.equal(patchify(x2, patch)[:, : grid[1] * grid[2]], tokens[:, : grid[1] * grid[2]])


@pytest.mark.parametrize("attn,cond", CONFIGS)
def test_fresh_model_outputs_exactly_zero(attn, cond):
    model = tiny(attn, cond, text_dims=(8, 12))
    x = torch.randn(2, 4, 3, 6, 10)
    v = model(x, torch.rand(2), text(lengths=(5, 7), dims=(8, 12)))
    assert v.shape == x.shape
    assert torch.count_nonzero(v) == 0


def test_sample_prediction_returns_the_velocity_of_its_clean_estimate():
    """prediction="sample": the last layer draws x0 and the model returns (x_t - x0) / max(t, 0.05)
    with each latent frame's own t, also inside a temporal patch; a fresh model's x0 is zero."""
    x = torch.randn(2, 4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    ctx = text()
    t = torch.tensor([[0.3, 0.8, 0.01, 1.0], [0.5, 0.5, 0.05, 0.2]])
    floor = t.clamp(min=0.05)[:, None, :, None, None]
    assert torch.allclose(tiny(prediction="sample")(x, t, ctx), x / floor)
    velocity = perturb(tiny())
    sample = tiny(prediction="sample")
    sample.load_state_dict(velocity.state_dict())
    x0 = velocity(x, t, ctx)  # the same last layer, read as a clean estimate
    assert torch.allclose(sample(x, t, ctx), (x - x0) / floor, atol=1e-5)
    pair = tiny(prediction="sample", patch_size=(2, 2, 2))  # frames 0.3 and 0.8 share a patch, each keeps its t
    assert torch.allclose(pair(x, t, ctx), x / floor)
    per_patch = torch.tensor([[0.8, 1.0], [0.5, 0.2]])  # one t per temporal patch: each of its frames gets it
    assert torch.allclose(pair(x, per_patch, ctx), x / per_patch.repeat_interleave(2, dim=1)[:, None, :, None, None])
    half = tiny(prediction="sample")
    half.load_state_dict(velocity.state_dict())
    half = half.to(torch.bfloat16)  # bf16 weights: the velocity is still formed in fp32, returned in bf16
    xb = x.bfloat16()
    out = half(xb, t, [c.bfloat16() for c in ctx])
    assert out.dtype == torch.bfloat16
    above = (t > 0.05)[:, None, :, None, None].expand_as(x)  # at t <= 0.05, bf16's rounding of x0 is amplified 20x
    assert torch.allclose(out.float()[above], sample(xb.float(), t, ctx)[above], rtol=0.05, atol=0.1)
    with pytest.raises(ValueError, match="prediction='noise'"):
        tiny(prediction="noise")


@pytest.mark.parametrize("attn,cond", CONFIGS)
def test_odd_sizes_and_per_frame_timesteps(attn, cond):
    model = perturb(tiny(attn, cond, patch_size=(1, 1, 1)))
    x = torch.randn(2, 4, 3, 5, 7)  # odd T, H, W
    ctx = text()
    t = torch.tensor([0.3, 0.8])
    v_scalar = model(x, t, ctx)
    v_frames = model(x, t[:, None].expand(2, 3), ctx)
    assert v_scalar.shape == x.shape and torch.isfinite(v_scalar).all()
    assert torch.allclose(v_scalar, v_frames, atol=1e-6)
    # a different timestep on one frame changes the prediction
    t_mixed = t[:, None].repeat(1, 3)
    t_mixed[:, 0] = 0.0
    assert not torch.allclose(model(x, t_mixed, ctx), v_frames, atol=1e-4)


def test_temporal_patch_and_any_grid():
    model = perturb(tiny(patch_size=(2, 2, 2)))
    for t, h, w in [(2, 2, 2), (4, 6, 10), (6, 10, 4)]:
        x = torch.randn(1, 4, t, h, w)
        assert model(x, torch.rand(1), text(batch=1)).shape == x.shape
    # per-latent-frame timesteps with a temporal patch: one per latent frame is accepted
    assert model(torch.randn(1, 4, 4, 2, 2), torch.rand(1, 4), text(batch=1)).shape == (1, 4, 4, 2, 2)


@pytest.mark.parametrize("attn", ["full", "factorized"])
def test_every_frame_sees_every_other(attn):
    """Full and factorized attention both mix information across frames and positions."""
    model = perturb(tiny(attn, text_dims=()), scale=0.2)
    x = torch.randn(1, 4, 3, 4, 4)
    x2 = x.clone()
    x2[:, :, 2, 3, 3] += 1.0  # last frame, last position
    t = torch.full((1,), 0.5)
    dv = model(x2, t) - model(x, t)
    assert dv[:, :, 0, 0, 0].abs().max() > 0  # reaches the first frame, first position


def test_factorized_spatial_attention_stays_in_its_frame():
    """With the temporal gates closed, a factorized model never mixes frames; a full one does."""
    x = torch.randn(1, 4, 3, 4, 4)
    x2 = x.clone()
    x2[:, :, 2] += 1.0
    for attn, mixes in [("factorized", False), ("full", True)]:
        model = perturb(tiny(attn, text_dims=()), scale=0.2)
        if attn == "factorized":
            with torch.no_grad():  # zero the temporal attention's gate (modulation index 8)
                model.time_proj.weight.view(9, -1, model.config.hidden_size)[8] = 0
                model.time_proj.bias.view(9, -1)[8] = 0
                for block in model.blocks:
                    block.modulation[..., 8, :] = 0
        t = torch.full((1,), 0.5)
        changed = (model(x2, t) - model(x, t))[:, :, 0].abs().max() > 1e-6
        assert bool(changed) == mixes


def test_rope_depends_only_on_relative_position():
    d = 12
    freqs = rope_frequencies(d, (6, 5, 4))  # (120, 6)
    assert freqs.shape == (120, d // 2)
    q = torch.randn(1, 1, 1, d).expand(1, 120, 1, d)
    k = torch.randn(1, 1, 1, d).expand(1, 120, 1, d)
    rq, rk = apply_rope(q, freqs)[0, :, 0], apply_rope(k, freqs)[0, :, 0]
    idx = lambda t, h, w: (t * 5 + h) * 4 + w  # noqa: E731
    a = rq[idx(1, 1, 1)] @ rk[idx(2, 3, 2)]
    b = rq[idx(3, 2, 0)] @ rk[idx(4, 4, 1)]  # same offset (1, 2, 1)
    c = rq[idx(3, 2, 0)] @ rk[idx(4, 4, 2)]  # different offset
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3)
    # rotation keeps norms
    assert torch.allclose(rq.norm(dim=-1), q[0, :, 0].norm(dim=-1), atol=1e-5)


def test_attention_key_mask_matches_reference():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 3, 8, generator=g) for _ in range(3))
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = attention(q, k, v, mask)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / 8**0.5
    scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    ref = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    assert torch.allclose(out, ref, atol=1e-5)
    # masked keys have no influence
    k2 = k.clone()
    k2[0, 2] += 10
    assert torch.allclose(attention(q, k2, v, mask), out, atol=1e-6)


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("attn,cond", CONFIGS)
def test_text_changes_output_and_padding_does_not(attn, cond, pooled):
    model = perturb(tiny(attn, cond, pooled_text=pooled))
    x, t = torch.randn(1, 4, 2, 4, 4), torch.full((1,), 0.7)
    a, b = text(batch=1, seed=1), text(batch=1, seed=2)
    assert not torch.allclose(model(x, t, a), model(x, t, b), atol=1e-4)
    padded = [torch.cat([a[0], torch.randn(1, 3, 8)], dim=1)]
    mask = [torch.tensor([[True] * 5 + [False] * 3])]
    assert torch.allclose(model(x, t, a), model(x, t, padded, mask), atol=1e-5)


def test_pooled_text_path_starts_silent_and_then_carries_the_prompt():
    """A trained model that gains the pooled path (its other weights copied) computes what it did;
    once the path's weights move, the prompt reaches the output through it alone."""
    plain = perturb(tiny(text_dims=(8, 6)))
    pooled = tiny(text_dims=(8, 6), pooled_text=True)
    missing, unexpected = pooled.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == [f"pooled_text_embedder.linear_{i}.{p}" for i in (1, 2) for p in ("bias", "weight")]
    assert not unexpected
    x, t = torch.randn(2, 4, 2, 4, 4), torch.full((2,), 0.6)
    ctx = text(batch=2, lengths=(3, 4), dims=(8, 6))
    assert torch.equal(plain(x, t, ctx), pooled(x, t, ctx))
    perturb(pooled.pooled_text_embedder, seed=3)
    for block in pooled.blocks:  # cut cross-attention: only the pooled path sees the text now
        block.attn2.to_out.weight.data.zero_()
        block.attn2.to_out.bias.data.zero_()
    other = text(batch=2, lengths=(3, 4), dims=(8, 6), seed=5)
    assert not torch.allclose(pooled(x, t, ctx), pooled(x, t, other), atol=1e-4)


def test_given_reference_is_the_latest_given_frame_at_or_before_each_frame():
    x = torch.randn(3, 4, 5, 2, 2)
    mask = torch.tensor([[True, False, False, True, False],  # first, then another given frame
                         [False, False, True, False, False],  # frames before the first given get none
                         [False] * 5])
    ref = given_reference(x, mask)
    assert ref.shape == (3, 5, 5, 2, 2)
    for b, sources in enumerate([[0, 0, 0, 3, 3], [None, None, 2, 2, 2], [None] * 5]):
        for frame, source in enumerate(sources):
            if source is None:
                assert not ref[b, :, frame].any()
            else:
                assert torch.equal(ref[b, :4, frame], x[b, :, source]) and bool((ref[b, 4, frame] == 1).all())
    assert torch.equal(given_reference(x, None), torch.zeros(3, 5, 5, 2, 2))
    with pytest.raises(ValueError, match=r"expected \(3, 5\)"):
        given_reference(x, mask[:, :4])


def test_given_reference_path_starts_silent_and_then_carries_the_given_frame():
    """A trained model that gains the reference (its other weights copied) computes what it did,
    mask or not; once the path's weights move, a given frame reaches the frames after it even with
    attention cut, and the frames before it not at all."""
    plain = perturb(tiny())
    model = tiny(given_reference=True)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["reference_embedding.bias", "reference_embedding.weight"] and not unexpected
    x, t, ctx = torch.randn(1, 4, 4, 4, 4), torch.full((1, 4), 0.6), text(batch=1)
    mask = torch.tensor([[False, True, False, False]])
    assert torch.equal(plain(x, t, ctx), model(x, t, ctx, given_mask=mask))
    assert torch.equal(plain(x, t, ctx, given_mask=mask), plain(x, t, ctx))  # others ignore the mask
    perturb(model.reference_embedding, seed=3)
    for block in model.blocks:  # no attention between tokens: only the reference links the frames
        block.attn1.to_out.weight.data.zero_()
        block.attn1.to_out.bias.data.zero_()
    other = x.clone()
    other[:, :, 1] = torch.randn(4, 4, 4)  # another given frame
    a, b = model(x, t, ctx, given_mask=mask), model(other, t, ctx, given_mask=mask)
    assert torch.equal(a[:, :, 0], b[:, :, 0])  # before the given frame: untouched
    assert not torch.allclose(a[:, :, 2:], b[:, :, 2:], atol=1e-4)
    assert not torch.allclose(a, model(x, t, ctx), atol=1e-4)  # no mask: the reference is empty


def test_refiner_starts_silent_then_draws_across_patch_borders():
    """A trained model that gains the refiner (its other weights copied) computes what it did; once
    the refiner's weights move, a change of the input inside one patch reaches the output of the
    next patch even with every token kept to itself."""
    plain = perturb(tiny(patch_size=(1, 2, 2)))
    model = tiny(patch_size=(1, 2, 2), refiner_width=8, refiner_blocks=1)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith("refiner.") for k in missing) and not unexpected
    x, t, ctx = torch.randn(1, 4, 2, 8, 8), torch.full((1,), 0.5), text(batch=1)
    assert torch.equal(plain(x, t, ctx), model(x, t, ctx))
    perturb(model.refiner, seed=4)
    for block in model.blocks:  # no attention between tokens: only the refiner links the patches
        block.attn1.to_out.weight.data.zero_()
        block.attn1.to_out.bias.data.zero_()
    other = x.clone()
    other[:, :, :, 3, 3] += 1.0  # the corner pixel of the patch at rows 2-3, columns 2-3
    a, b = model(x, t, ctx), model(other, t, ctx)
    assert not torch.allclose(a[:, :, :, 4, 4], b[:, :, :, 4, 4], atol=1e-5)  # the next patch, diagonally
    refiner = model.refiner
    model.refiner = None  # without it, the patch at rows 4-5, columns 4-5 does not see the change
    assert torch.equal(model(x, t, ctx)[:, :, :, 4:6, 4:6], model(other, t, ctx)[:, :, :, 4:6, 4:6])
    model.refiner = refiner
    with pytest.raises(ValueError, match="refiner_width"):
        tiny(refiner_width=12)


def test_refiner_frames_are_refined_each_on_its_own():
    """The refiner works within a frame: what ties frames together stays attention's job."""
    model = perturb(tiny(refiner_width=8, refiner_blocks=1))
    for block in model.blocks:
        block.attn1.to_out.weight.data.zero_()
        block.attn1.to_out.bias.data.zero_()
    x, t, ctx = torch.randn(1, 4, 3, 4, 4), torch.full((1,), 0.5), text(batch=1)
    other = x.clone()
    other[:, :, 0] = torch.randn(4, 4, 4)
    a, b = model(x, t, ctx), model(other, t, ctx)
    assert torch.equal(a[:, :, 1:], b[:, :, 1:]) and not torch.equal(a[:, :, 0], b[:, :, 0])


def test_given_reference_learns_to_hold_a_still_faster():
    """The point of the reference: continuing a still clip from its first frame. The same tiny model
    and steps, with and without it: with it the loss on held-out stills ends far lower."""
    def still_clips(n, g):
        return torch.randn(n, 4, 1, 4, 4, generator=g).expand(-1, -1, 4, -1, -1).contiguous()

    mask = torch.tensor([[True, False, False, False]]).expand(16, -1)
    losses = {}
    for reference in (False, True):
        torch.manual_seed(0)
        model = tiny(text_dims=(), prediction="sample", given_reference=reference)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        g = torch.Generator().manual_seed(0)
        with one_thread():
            for _ in range(150):
                loss = flow.training_losses(model, still_clips(16, g), given_mask=mask, context_noise=0.05,
                                            uniform_share=1.0, sample_space=True, generator=g)["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                g = torch.Generator().manual_seed(99)
                losses[reference] = flow.training_losses(model, still_clips(16, g), given_mask=mask,
                                                         context_noise=0.05, uniform_share=1.0, sample_space=True,
                                                         generator=g)["loss"].item()
    assert losses[True] < 0.1 * losses[False], losses


def test_unconditional_model_has_no_text_layers():
    model = tiny(text_dims=(), pooled_text=True)
    assert model.pooled_text_embedder is None
    assert not any("attn2" in name or "text_embedders" in name for name, _ in model.named_parameters())
    assert model(torch.randn(1, 4, 1, 4, 4), torch.rand(1)).shape == (1, 4, 1, 4, 4)


def test_bad_inputs_name_what_was_expected():
    model = tiny()
    ctx = text(batch=1)
    with pytest.raises(ValueError, match=r"divide by the patch size \(1, 2, 2\)"):
        model(torch.randn(1, 4, 2, 5, 4), torch.rand(1), ctx)
    with pytest.raises(ValueError, match="in_channels=4"):
        model(torch.randn(1, 3, 2, 4, 4), torch.rand(1), ctx)
    with pytest.raises(ValueError, match=r"text_dims=\(8,\)"):
        model(torch.randn(1, 4, 2, 4, 4), torch.rand(1), [torch.randn(1, 5, 16)])
    with pytest.raises(ValueError, match="one per text encoder"):
        model(torch.randn(1, 4, 2, 4, 4), torch.rand(1), None)
    with pytest.raises(ValueError, match="one per latent frame"):
        model(torch.randn(1, 4, 2, 4, 4), torch.rand(1, 3), ctx)
    with pytest.raises(ValueError, match="needs attention='full'"):
        tiny("factorized", "joint")
    with pytest.raises(ValueError, match="flash-attn"):
        if not torch.cuda.is_available():
            model.set_attention_backend("flash")
        else:
            raise ValueError("flash-attn present on this machine")


@pytest.mark.parametrize("attn,cond,pooled", [(*c, False) for c in CONFIGS] + [("full", "cross", True)])
def test_save_load_round_trip(tmp_path, attn, cond, pooled):
    model = perturb(tiny(attn, cond, text_dims=(8, 6), pooled_text=pooled, given_reference=pooled))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    if not pooled:  # a folder saved before the pooled path existed has no such key: it still loads
        config = json.loads((tmp_path / "config.json").read_text())
        del config["pooled_text"], config["given_reference"]
        (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = VideoDiT.from_pretrained(tmp_path)
    assert loaded.config.attention == attn and tuple(loaded.config.text_dims) == (8, 6)
    assert loaded.config.pooled_text == pooled and (loaded.pooled_text_embedder is not None) == pooled
    assert loaded.config.given_reference == pooled and (loaded.reference_embedding is not None) == pooled
    x, t, ctx = torch.randn(1, 4, 2, 4, 4), torch.rand(1), text(batch=1, lengths=(3, 4), dims=(8, 6))
    mask = torch.tensor([[True, False]])
    assert torch.allclose(model(x, t, ctx, given_mask=mask), loaded(x, t, ctx, given_mask=mask), atol=1e-6)


@pytest.mark.parametrize("attn,cond", CONFIGS)
def test_gradient_checkpointing_gives_the_same_gradients(attn, cond):
    model = perturb(tiny(attn, cond))
    x, t, ctx = torch.randn(1, 4, 2, 4, 4), torch.rand(1), text(batch=1)

    def grads():
        model.zero_grad()
        model(x, t, ctx).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    checkpointed = grads()
    model.disable_gradient_checkpointing()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))


@pytest.mark.parametrize("attn,cond", CONFIGS)
def test_bf16_autocast(attn, cond):
    model = perturb(tiny(attn, cond, pooled_text=attn == "full"))
    x, t, ctx = torch.randn(1, 4, 2, 4, 4), torch.rand(1), text(batch=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = model(x, t, ctx)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    assert torch.allclose(v, model(x, t, ctx), atol=0.1, rtol=0.1)
    bf16 = perturb(tiny(attn, cond, pooled_text=attn == "full")).to(torch.bfloat16)
    assert bf16(x.bfloat16(), t, [c.bfloat16() for c in ctx]).dtype == torch.bfloat16


@pytest.mark.slow
def test_torch_compile_captures_one_graph():
    """torch.compile traces the whole forward without a graph break (inductor codegen is left out:
    it takes minutes on two cores; the trace is what breaks when a model is not compilable)."""
    torch._dynamo.reset()
    model = perturb(tiny(depth=1))
    x, t, ctx = torch.randn(1, 4, 2, 4, 4), torch.rand(1), text(batch=1)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x, t, ctx), model(x, t, ctx), atol=1e-5)


@pytest.mark.parametrize("attn,prediction", [("full", "velocity"), ("factorized", "velocity"), ("full", "sample")])
def test_overfits_one_clip(attn, prediction):
    """Rectified-flow loss on one tiny latent clip falls by at least 10x."""
    torch.manual_seed(0)
    model = tiny(attn, prediction=prediction)
    x0 = torch.randn(1, 4, 3, 4, 4).expand(8, -1, -1, -1, -1)
    cond = dict(text_states=[torch.randn(1, 3, 8).expand(8, -1, -1)])

    def held_out_loss():
        with torch.no_grad():
            return flow.training_losses(model, x0, cond, generator=torch.Generator().manual_seed(123))["loss"].item()

    steps = 200
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    g = torch.Generator().manual_seed(0)
    with one_thread():
        before = held_out_loss()
        for _ in range(steps):
            loss = flow.training_losses(model, x0, cond, generator=g)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        after = held_out_loss()
    assert before / after >= 10, (before, after)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_linear_paths_agree(monkeypatch, native):
    """bf16 products (linear layers and the refiner's convolutions) go to PyTorch's bf16 kernels or, on
    CPUs without bf16 units, to fp32: same answer."""
    import video_dit.model as vm

    model = perturb(tiny(refiner_width=8, refiner_blocks=1)).to(torch.bfloat16)
    x, t, ctx = torch.randn(1, 4, 2, 4, 4, dtype=torch.bfloat16), torch.rand(1), [c.bfloat16() for c in text(batch=1)]
    monkeypatch.setattr(vm, "CPU_BF16_MATMUL", native)
    out = model(x, t, ctx)
    monkeypatch.setattr(vm, "CPU_BF16_MATMUL", not native)
    other = model(x, t, ctx)
    assert out.dtype == other.dtype == torch.bfloat16
    assert torch.allclose(out.float(), other.float(), atol=0.05, rtol=0.05)
    assert model(x, 0.5, ctx).shape == x.shape  # a plain float timestep is accepted too
