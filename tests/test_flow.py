"""Rectified flow: schedule equals diffusers', timestep sampling, loss masking, samplers, guidance."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from video_dit import flow


@pytest.mark.parametrize("steps", [1, 4, 30, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 0.7])
def test_sigmas_equal_diffusers(steps, shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    ours = flow.sigmas(steps, shift)
    assert ours.shape == (steps + 1,)
    assert ours[-1] == 0
    assert torch.allclose(ours, scheduler.sigmas.float(), atol=1e-6, rtol=0)


def test_shift_grows_with_tokens():
    assert flow.shift_for_tokens(256) == pytest.approx(math.exp(0.5))
    assert flow.shift_for_tokens(4096) == pytest.approx(math.exp(1.15))
    values = [flow.shift_for_tokens(n) for n in (64, 256, 1024, 4096, 16384)]
    assert values == sorted(values) and len(set(values)) == len(values)
    # a larger shift keeps more of the schedule at high noise
    assert (flow.sigmas(10, values[-1])[1:-1] > flow.sigmas(10, values[0])[1:-1]).all()
    with pytest.raises(ValueError, match="num_tokens"):
        flow.shift_for_tokens(0)


def test_timestep_sampling():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_timesteps(20000, mean=0.0, std=1.0, generator=g)
    assert ((t > 0) & (t < 1)).all()
    assert t.median().item() == pytest.approx(0.5, abs=0.02)
    t_late = flow.sample_timesteps(20000, mean=1.0, std=1.0, generator=g)
    assert t_late.median().item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.02)
    u = flow.sample_timesteps(20000, mode="uniform", generator=g)
    assert u.mean().item() == pytest.approx(0.5, abs=0.01) and u.std().item() == pytest.approx(12**-0.5, abs=0.01)
    # logit-normal concentrates in the middle compared with uniform
    assert ((t > 0.25) & (t < 0.75)).float().mean() > ((u > 0.25) & (u < 0.75)).float().mean() + 0.1
    a = flow.sample_timesteps(5, generator=torch.Generator().manual_seed(7))
    b = flow.sample_timesteps(5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="uniform"):
        flow.sample_timesteps(3, mode="cosine")


def test_a_uniform_share_covers_the_low_noise_levels_a_large_shift_leaves_out():
    shifted = flow.sample_timesteps(20000, shift=8.0, generator=torch.Generator().manual_seed(0))
    assert (shifted < 0.3).float().mean() < 0.005  # shift 8 almost never trains where sampling ends
    mixed = flow.sample_timesteps(20000, shift=8.0, uniform_share=0.25, generator=torch.Generator().manual_seed(0))
    assert (mixed < 0.3).float().mean().item() == pytest.approx(0.25 * 0.3, abs=0.01)
    assert ((mixed > 0) & (mixed < 1)).all()
    # without a share nothing extra is drawn: runs written before it existed draw the same timesteps
    g = torch.Generator().manual_seed(3)
    assert torch.equal(flow.sample_timesteps(7, shift=8.0, generator=g),
                       flow.apply_shift(torch.sigmoid(torch.randn(7, generator=torch.Generator().manual_seed(3))), 8.0))
    with pytest.raises(ValueError, match="uniform_share"):
        flow.sample_timesteps(3, uniform_share=1.5)


def test_sample_space_loss_is_the_clean_samples_error():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 2, 4, 4, generator=g)

    def predicts_zero(x, t, **c):  # a clean-sample model that says 0: its velocity is x_t / t
        return x / t[:, None, :, None, None]

    out = flow.training_losses(predicts_zero, x0, sample_space=True, generator=torch.Generator().manual_seed(1))
    assert out["loss"].item() == pytest.approx((x0 ** 2).mean().item(), rel=1e-5)  # whatever the timesteps
    velocity = flow.training_losses(predicts_zero, x0, generator=torch.Generator().manual_seed(1))
    assert velocity["loss"].item() > out["loss"].item()  # the velocity's error weighs each by 1 / t^2


class Oracle:
    """The exact velocity field of a one-point data set: v = (x_t - x0) / t (where t > 0)."""

    def __init__(self, x0, wrong_on_given=False):
        self.x0, self.wrong_on_given, self.calls = x0, wrong_on_given, []

    def __call__(self, x, t, **cond):
        self.calls.append((x.clone(), t.clone(), cond))
        tt = t[:, None, :, None, None]
        v = (x - self.x0) / tt.clamp(min=1e-8)
        if self.wrong_on_given:
            v = torch.where(tt == 0, torch.full_like(v, 100.0), v)
        return v


def test_loss_is_zero_for_the_exact_velocity_and_ignores_given_frames():
    x0 = torch.randn(2, 3, 4, 5, 6)
    given = torch.tensor([[True, False, False, False], [True, True, False, False]])
    out = flow.training_losses(Oracle(x0, wrong_on_given=True), x0, {}, given_mask=given)
    assert out["loss"].item() < 1e-8
    assert out["loss_per_sample"].shape == (2,) and out["timesteps"].shape == (2,)
    # without the mask the given frames would count
    model = Oracle(x0, wrong_on_given=True)
    flow.training_losses(model, x0, {}, given_mask=given)
    x_t, t, _ = model.calls[-1]
    assert torch.equal(t[given], torch.zeros(3))  # given frames fed clean at t = 0
    assert torch.equal(x_t[:, :, 0], x0[:, :, 0])
    assert (t[~given] > 0).all()


def test_given_frames_count_with_their_weight():
    """With given_weight the given frames' error joins the loss, weighted, in the weighted mean."""
    x0 = torch.randn(2, 3, 4, 5, 6)
    given = torch.tensor([[True, False, False, False], [True, True, False, False]])

    def wrong_on_given(x, t, **c):  # exact on sampled frames, off by 1 (in x0) on given ones
        v = Oracle(x0)(x, t)
        return v - (t == 0.05)[:, None, :, None, None].float() / 0.05

    out = flow.training_losses(wrong_on_given, x0, given_mask=given, context_noise=0.05, given_weight=0.5,
                               sample_space=True)
    assert out["loss"].item() == pytest.approx(0.5 * 3 / (0.5 * 3 + 5), rel=1e-4)  # 3 given frames, 5 sampled
    assert flow.training_losses(wrong_on_given, x0, given_mask=given, context_noise=0.05,
                                sample_space=True)["loss"].item() < 1e-8
    with pytest.raises(ValueError, match="given_weight=-1"):
        flow.training_losses(wrong_on_given, x0, given_mask=given, given_weight=-1)


def test_loss_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 2, 4, 4, generator=g)
    zero = lambda x, t, **c: torch.zeros_like(x)  # noqa: E731
    out = flow.training_losses(zero, x0, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    t = torch.sigmoid(torch.randn(2, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    assert torch.allclose(out["timesteps"], t)
    assert out["loss"].item() == pytest.approx(((noise - x0) ** 2).mean().item(), rel=1e-5)


def test_loss_weight_is_a_weighted_mean():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 2, 4, 4, generator=g)
    zero = lambda x, t, **c: torch.zeros_like(x)  # noqa: E731
    weight = 1 + 3 * torch.rand(2, 1, 2, 4, 4, generator=g)
    out = flow.training_losses(zero, x0, loss_weight=weight, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    torch.randn(2, generator=g)  # the timesteps
    err = (torch.randn(x0.shape, generator=g) - x0) ** 2 * weight
    assert out["loss"].item() == pytest.approx((err.sum() / weight.expand_as(x0).sum()).item(), rel=1e-5)
    uniform = flow.training_losses(zero, x0, loss_weight=torch.full((1, 1, 1, 1, 1), 5.0), generator=torch.Generator().manual_seed(1))
    plain = flow.training_losses(zero, x0, generator=torch.Generator().manual_seed(1))
    assert uniform["loss"].item() == pytest.approx(plain["loss"].item(), rel=1e-6)  # a constant weight changes nothing
    for bad in (torch.ones(2), torch.ones(2, 1, 3, 4, 4)):
        with pytest.raises(ValueError, match="broadcasts to the latents"):
            flow.training_losses(zero, x0, loss_weight=bad)


def test_channel_weight_follows_the_decoder_sensitivity_at_mean_one():
    sensitivity = torch.tensor([400.0, 25.0, 4.0, 1.0])
    assert flow.channel_loss_weight(sensitivity, 0.0).flatten().tolist() == [1.0] * 4
    half = flow.channel_loss_weight(sensitivity, 0.5)
    assert half.shape == (1, 4, 1, 1, 1) and half.mean().item() == pytest.approx(1.0)
    assert (half.flatten() / half.flatten()[-1]).tolist() == pytest.approx([20.0, 5.0, 2.0, 1.0])
    whole = flow.channel_loss_weight(sensitivity, 1.0).flatten()
    assert (whole / whole[-1]).tolist() == pytest.approx(sensitivity.tolist())
    with pytest.raises(ValueError, match="power"):
        flow.channel_loss_weight(sensitivity, -1.0)
    unread = flow.channel_loss_weight(torch.tensor([3.0, 0.0, 1.0]), 0.5).flatten()
    assert unread[1] == 0 and unread.mean().item() == pytest.approx(1.0)
    for bad in ([0.0, 0.0], [1.0, -1.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="not all 0"):
            flow.channel_loss_weight(torch.tensor(bad), 0.5)


def test_channel_weight_moves_the_loss_between_channels():
    """A model exact in channel 0 and off by 1 in channel 1: the plain loss is 0.5; with (almost)
    all the weight on channel 0 it is (almost) 0, and with it on channel 1, 1."""
    x0 = torch.randn(2, 2, 3, 4, 4, generator=torch.Generator().manual_seed(0))

    def model(x, t, **kw):
        v = (x - x0) / t[:, None, :, None, None]  # the exact velocity noise - x0
        return v + torch.tensor([0.0, 1.0]).view(1, 2, 1, 1, 1)

    def loss(weight):
        return flow.training_losses(model, x0, loss_weight=weight, generator=torch.Generator().manual_seed(1))["loss"]

    assert loss(None).item() == pytest.approx(0.5, rel=1e-4)
    assert loss(flow.channel_loss_weight(torch.tensor([1.0, 1e-9]), 1.0)).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(flow.channel_loss_weight(torch.tensor([1e-9, 1.0]), 1.0)).item() == pytest.approx(1.0, rel=1e-4)


def test_motion_weight_finds_the_moving_object():
    """A square moves over a still textured background: its elements weigh most; a pan and a
    single frame are weighted evenly over the frame."""
    g = torch.Generator().manual_seed(0)
    background = torch.randn(1, 4, 1, 16, 16, generator=g).expand(1, 4, 5, 16, 16).clone()
    clip = background.clone()
    for f in range(5):
        clip[:, :, f, 6:9, 2 + 2 * f : 5 + 2 * f] = 3.0
    weight = flow.motion_loss_weight(clip, strength=2.0)
    assert weight.shape == (1, 1, 5, 16, 16) and weight.min().item() >= 1.0
    on_object = weight[0, 0, 2, 6:9, 6:9]
    assert on_object.min().item() == pytest.approx(1 + 2 * flow.MOTION_WEIGHT_CAP)
    assert weight[0, 0, 2, 12:, :].max().item() == 1.0  # background far from the path
    pan = torch.stack([torch.roll(background[:, :, 0], f, dims=-1) for f in range(5)], dim=2)
    pan_weight = flow.motion_loss_weight(pan, strength=2.0)
    blocks = torch.nn.functional.avg_pool2d(pan_weight[0, :, 1:4].mean(dim=1), 8)  # four 8x8 quarters
    assert blocks.std().item() < 0.1 * (blocks.mean().item() - 1)  # spread over the frame
    assert torch.equal(flow.motion_loss_weight(clip[:, :, :1], 2.0), torch.ones(1, 1, 1, 16, 16))
    still = background + 1e-4 * torch.randn(background.shape, generator=g)  # noise is not motion
    assert flow.motion_loss_weight(still, 2.0).max().item() < 1.05


def test_motion_weight_of_two_frames_does_not_depend_on_the_sign_of_the_change():
    """With an even number of frames the median is the mean of the middle two: a dark object moving
    gets the same weight as a bright one."""
    clip = torch.zeros(1, 2, 2, 1, 3)
    clip[:, :, 0, 0, 0] = 1.0  # the object moves from the left cell to the right one
    clip[:, :, 1, 0, 2] = 1.0
    bright, dark = flow.motion_loss_weight(clip, 1.0), flow.motion_loss_weight(-clip, 1.0)
    assert torch.equal(bright, dark)
    assert bright[0, 0, :, 0, 1].tolist() == [1.0, 1.0]  # the cell it never visits
    assert bright[0, 0, 0, 0, 0] == bright[0, 0, 1, 0, 2] > 1.0
    with pytest.raises(ValueError, match="strength=-1"):
        flow.motion_loss_weight(clip, -1)


def test_context_noise_level_for_given_frames():
    x0 = torch.randn(1, 2, 3, 4, 4)
    model = Oracle(x0)
    flow.training_losses(model, x0, given_mask=torch.tensor([[True, False, False]]), context_noise=0.1)
    x_t, t, _ = model.calls[-1]
    assert t[0, 0].item() == pytest.approx(0.1)
    assert not torch.equal(x_t[:, :, 0], x0[:, :, 0])


@pytest.mark.parametrize("steps", [30, 35, 70, 200])
def test_sampled_frames_never_sit_at_the_context_level(steps):
    # 35 steps at shift 5/3 put a sigma at 0.0507 and 70 at exactly 0.05, the level a model trained
    # with context noise 0.05 reads as "given": those move to the edge of the band, the rest stay
    x0 = torch.randn(1, 2, 3, 4, 4)
    given = torch.randn_like(x0)
    mask = torch.tensor([[True, False, False]])
    model = Oracle(x0)
    out = flow.sample(model, torch.randn_like(x0), num_steps=steps, shift=5 / 3, given=given, given_mask=mask,
                      context_noise=0.05)
    sampled = torch.stack([t[0, 1:] for _, t, _ in model.calls])
    assert ((sampled - 0.05).abs() >= flow.CONTEXT_BAND - 1e-6).all()
    assert torch.allclose(torch.stack([t[0, 0] for _, t, _ in model.calls]), torch.tensor(0.05))
    assert torch.allclose(out[:, :, 1:], x0[:, :, 1:], atol=1e-4)
    plain = flow.sigmas(steps, 5 / 3).tolist()
    moved = flow.clear_of_context(plain, 0.05)
    assert all(a >= b for a, b in zip(moved, moved[1:]))  # still a schedule
    assert sum(a != b for a, b in zip(plain, moved)) == (0 if steps == 30 else 1)


def test_text_to_video_keeps_clear_of_the_context_level_too():
    x0 = torch.randn(1, 2, 3, 4, 4)
    model = Oracle(x0)
    flow.sample(model, torch.randn_like(x0), num_steps=70, shift=5 / 3, context_noise=0.05)
    assert all(((t - 0.05).abs() >= flow.CONTEXT_BAND - 1e-6).all() for _, t, _ in model.calls)
    assert flow.clear_of_context([1.0, 0.003, 0.0], 0.0) == [1.0, 0.003, 0.0]  # clean context: nothing moves


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sampler_follows_the_straight_path(method):
    x0 = torch.randn(1, 2, 3, 4, 4)
    noise = torch.randn_like(x0)
    out = flow.sample(Oracle(x0), noise, num_steps=4, method=method, shift=3.0)
    assert torch.allclose(out, x0, atol=1e-4)


def test_given_frames_come_back_unchanged_and_condition_the_rest():
    x0 = torch.randn(2, 2, 4, 4, 4)
    given = torch.randn_like(x0)
    mask = torch.tensor([[True, False, False, False], [True, False, False, True]])
    model = Oracle(x0)
    out = flow.sample(model, torch.randn_like(x0), num_steps=3, given=given, given_mask=mask, context_noise=0.05)
    assert torch.equal(out[0, :, 0], given[0, :, 0])
    assert torch.equal(out[1, :, [0, 3]], given[1, :, [0, 3]])
    assert torch.allclose(out[0, :, 1:], x0[0, :, 1:], atol=1e-4)
    first = model.calls[0][0]
    for x_t, t, _ in model.calls:  # every step saw the given frames at the context noise level,
        assert torch.allclose(t[mask], torch.full((3,), 0.05))  # with one fixed draw of noise
        assert torch.equal(x_t[0, :, 0], first[0, :, 0])
    drawn = (first[0, :, 0] - 0.95 * given[0, :, 0]) / 0.05
    assert 0.5 < drawn.std().item() < 1.5


def test_classifier_free_guidance_batches_and_combines():
    class TextModel:
        calls = 0

        def __call__(self, x, t, text_states, text_masks):
            TextModel.calls += 1
            assert text_masks[0].dtype == torch.bool
            # velocity = mean of the valid text tokens, broadcast
            m = text_masks[0].float()[..., None]
            mean = (text_states[0] * m).sum(1) / m.sum(1)
            return mean[:, :1, None, None, None].expand_as(x).clone()

    cond = dict(text_states=[torch.full((1, 3, 2), 2.0)], text_masks=[torch.ones(1, 3, dtype=torch.bool)])
    uncond = dict(text_states=[torch.zeros(1, 1, 2)], text_masks=[torch.ones(1, 1, dtype=torch.bool)])
    noise = torch.zeros(1, 1, 2, 2, 2)
    out = flow.sample(TextModel(), noise, cond, uncond, guidance=4.0, num_steps=2)
    # v = 0 + 4 * (2 - 0) = 8, integrated from t=1 to t=0: x = 0 - 8
    assert torch.allclose(out, torch.full_like(noise, -8.0))
    assert TextModel.calls == 2  # one batched call per step
    out1 = flow.sample(TextModel(), noise, cond, uncond, guidance=1.0, num_steps=2)
    assert torch.allclose(out1, torch.full_like(noise, -2.0))


def test_guidance_applies_only_inside_its_interval():
    """Guidance between two noise levels: steps outside take the prompt's own velocity, in one
    unbatched call; the interval (0, 1) is plain guidance."""
    seen = []

    class TextModel:
        def __call__(self, x, t, text_states, text_masks):
            seen.append((float(t.flatten()[0]), x.shape[0]))
            return text_states[0][:, :1, :1, None, None].expand_as(x).clone()

    cond = dict(text_states=[torch.full((1, 1, 1), 2.0)], text_masks=[torch.ones(1, 1, dtype=torch.bool)])
    uncond = dict(text_states=[torch.zeros(1, 1, 1)], text_masks=[torch.ones(1, 1, dtype=torch.bool)])
    noise = torch.zeros(1, 1, 2, 2, 2)
    schedule = flow.sigmas(4)
    out = flow.sample(TextModel(), noise, cond, uncond, guidance=4.0, num_steps=4, guidance_interval=(0.4, 1.0))
    guided = [s >= 0.4 for s in schedule[:4].tolist()]
    assert [batch == 2 for _, batch in seen] == guided and any(guided) and not all(guided)
    # guided steps move at 4 * 2 = 8, the others at 2, each over its own step length
    expected = -sum((8.0 if g else 2.0) * float(a - b) for g, a, b in zip(guided, schedule[:4], schedule[1:]))
    assert torch.allclose(out, torch.full_like(noise, expected))
    seen.clear()
    plain = flow.sample(TextModel(), noise, cond, uncond, guidance=4.0, num_steps=4, guidance_interval=(0.0, 1.0))
    assert torch.allclose(plain, torch.full_like(noise, -8.0)) and all(batch == 2 for _, batch in seen)
    for bad in [(0.5, 0.5), (-0.1, 1.0), (0.2, 1.5), (0.3,), "high"]:
        with pytest.raises(ValueError, match="guidance_interval"):
            flow.sample(TextModel(), noise, cond, uncond, guidance_interval=bad)


def test_a_model_with_the_given_reference_is_handed_the_mask_and_others_are_not():
    from video_dit import PRESETS, VideoDiT

    class Spy(torch.nn.Module):  # a wrapper holding the model, as DeepSpeed and DDP do
        def __init__(self, module):
            super().__init__()
            self.module, self.masks = module, []

        def forward(self, x, t, given_mask=None, **cond):
            self.masks.append(given_mask)
            return self.module(x, t, given_mask=given_mask, **cond)

    dit = VideoDiT(in_channels=2, text_dims=(3,), given_reference=True, **PRESETS["tiny"])
    spy = Spy(dit)
    assert flow.takes_given_mask(spy) and flow.takes_given_mask(dit)
    assert not flow.takes_given_mask(VideoDiT(in_channels=2, text_dims=(3,), **PRESETS["tiny"]))
    x0 = torch.randn(2, 2, 3, 4, 4)
    mask = torch.tensor([[True, False, False], [True, True, False]])
    cond = dict(text_states=[torch.randn(2, 4, 3)], text_masks=[torch.ones(2, 4, dtype=torch.bool)])
    uncond = dict(text_states=[torch.zeros(2, 1, 3)], text_masks=[torch.ones(2, 1, dtype=torch.bool)])
    flow.sample(spy, torch.randn_like(x0), cond, uncond, guidance=3.0, num_steps=2, given=x0, given_mask=mask)
    assert len(spy.masks) == 2 and all(torch.equal(m, torch.cat([mask, mask])) for m in spy.masks)  # both halves
    spy.masks.clear()
    flow.sample(spy, torch.randn_like(x0), cond, num_steps=1, given=x0, given_mask=mask)
    flow.training_losses(spy, x0, cond, given_mask=mask, context_noise=0.05)
    assert all(torch.equal(m, mask) for m in spy.masks) and len(spy.masks) == 2
    spy.masks.clear()
    flow.sample(spy, torch.randn_like(x0), cond, uncond, num_steps=1)  # text-to-video: no mask
    assert spy.masks == [None]
    # any other callable keeps the plain (x, t, **cond) signature
    flow.sample(lambda x, t, **kw: torch.zeros_like(x), torch.randn_like(x0), cond, uncond, num_steps=1, given=x0,
                given_mask=mask)


def _clean(x, t, v):
    return x - flow._broadcast(t) * v


def test_guidance_rescale_matches_the_prompt_spread_over_the_sampled_frames():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, 5)
    t = torch.tensor([[0.05, 0.6, 0.6, 0.6], [0.6, 0.6, 0.6, 0.6]])
    cond = torch.randn_like(x)
    guided = 3.0 * cond + torch.randn_like(x)  # a wider spread than the prompt's own
    sampled = torch.tensor([[False, True, True, True], [True, True, True, True]])
    assert flow.rescale_guidance(x, t, guided, cond, 0.0, sampled) is guided
    full = flow.rescale_guidance(x, t, guided, cond, 1.0, sampled)
    x0_full, x0_cond, x0_guided = _clean(x, t, full), _clean(x, t, cond), _clean(x, t, guided)
    # one factor per clip: the frames being sampled take the conditional estimate's spread
    assert torch.allclose(x0_full[0, :, 1:].std(unbiased=False), x0_cond[0, :, 1:].std(unbiased=False), rtol=1e-4)
    assert torch.allclose(x0_full[1].std(unbiased=False), x0_cond[1].std(unbiased=False), rtol=1e-4)
    factor = x0_full[0] / x0_guided[0]
    assert torch.allclose(factor, factor.flatten()[0].expand_as(factor), rtol=1e-4)
    # strength mixes the scaled and the plain estimate linearly
    half = flow.rescale_guidance(x, t, guided, cond, 0.5, sampled)
    assert torch.allclose(_clean(x, t, half), 0.5 * (x0_full + x0_guided), atol=1e-5)


def test_guidance_rescale_leaves_clean_given_frames_alone():
    x = torch.randn(1, 2, 3, 2, 2)
    t = torch.tensor([[0.0, 0.5, 0.5]])  # a given frame at context noise 0
    guided, cond = 4.0 * torch.randn_like(x), torch.randn_like(x)
    out = flow.rescale_guidance(x, t, guided, cond, 1.0, torch.tensor([[False, True, True]]))
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :, 0], guided[:, :, 0])


def test_sampler_applies_guidance_rescale():
    class Model:  # the prompt predicts clean latents of spread 1, the empty prompt of spread 0
        def __call__(self, x, t, text_states, text_masks):
            target = torch.where(text_states[0][:, :1, :1, None, None] > 0, pattern, torch.zeros_like(pattern))
            return (x - target) / flow._broadcast(t).clamp(min=1e-3)

    pattern = torch.randn(1, 2, 3, 4, 4)
    pattern = (pattern - pattern.mean()) / pattern.std()
    cond = dict(text_states=[torch.ones(1, 1, 2)], text_masks=[torch.ones(1, 1, dtype=torch.bool)])
    uncond = dict(text_states=[torch.zeros(1, 1, 2)], text_masks=[torch.ones(1, 1, dtype=torch.bool)])
    noise = torch.randn_like(pattern)
    plain = flow.sample(Model(), noise, cond, uncond, guidance=4.0, num_steps=6)
    rescaled = flow.sample(Model(), noise, cond, uncond, guidance=4.0, num_steps=6, guidance_rescale=1.0)
    assert plain.std() > 3.0  # guidance 4 overshoots the prompt's estimate four times over
    assert torch.allclose(rescaled, pattern, atol=1e-3)  # rescaled, it lands on it
    with pytest.raises(ValueError, match="between 0 and 1"):
        flow.sample(Model(), noise, cond, uncond, guidance_rescale=1.5)


def test_guidance_rescale_takes_its_statistics_from_the_sampled_frames_only():
    # The prompt and the empty prompt agree on every frame but the given one; rescaling must then
    # leave the sampled frames as plain guidance makes them.
    pattern = torch.randn(1, 2, 3, 4, 4)
    offset = torch.zeros_like(pattern)
    offset[:, :, 0] = 5.0 * torch.randn(1, 2, 4, 4)

    class Model:
        def __call__(self, x, t, text_states, text_masks):
            target = torch.where(text_states[0][:, :1, :1, None, None] > 0, pattern, pattern + offset)
            return (x - target) / flow._broadcast(t).clamp(min=1e-3)

    cond = dict(text_states=[torch.ones(1, 1, 2)], text_masks=[torch.ones(1, 1, dtype=torch.bool)])
    uncond = dict(text_states=[torch.zeros(1, 1, 2)], text_masks=[torch.ones(1, 1, dtype=torch.bool)])
    noise, given = torch.randn_like(pattern), torch.randn_like(pattern)
    mask = torch.tensor([[True, False, False]])
    kwargs = dict(guidance=4.0, num_steps=4, given=given, given_mask=mask, context_noise=0.05)
    plain = flow.sample(Model(), noise, cond, uncond, **kwargs)
    rescaled = flow.sample(Model(), noise, cond, uncond, guidance_rescale=1.0, **kwargs)
    assert torch.allclose(rescaled, plain, atol=1e-5)
    assert torch.equal(rescaled[:, :, 0], given[:, :, 0])
    over_all = flow.sample(Model(), noise, cond, uncond, guidance_rescale=1.0, **{**kwargs, "given_mask": None})
    assert not torch.allclose(over_all[:, :, 1:], plain[:, :, 1:], atol=1e-3)  # the given frame's spread would count


def test_guidance_rescale_leaves_an_estimate_without_spread_alone():
    x = torch.full((1, 1, 2, 2, 2), 0.7)
    t = torch.full((1, 2), 0.5)
    guided = torch.zeros_like(x)  # clean estimate 0.7 everywhere: no spread to rescale
    assert torch.allclose(flow.rescale_guidance(x, t, guided, torch.randn_like(x), 1.0), guided)


def test_callback_sees_every_step_and_can_replace_latents():
    x0 = torch.randn(1, 1, 1, 2, 2)
    seen = []

    def callback(step, sigma, latents):
        seen.append((step, sigma))
        return latents * 0 if step == 2 else None

    out = flow.sample(Oracle(x0), torch.randn_like(x0), num_steps=3, callback_on_step_end=callback)
    assert [s for s, _ in seen] == [0, 1, 2] and seen[-1][1] == 0.0
    assert torch.equal(out, torch.zeros_like(out))


def test_bad_arguments():
    x = torch.zeros(1, 1, 2, 2, 2)
    with pytest.raises(ValueError, match="euler"):
        flow.sample(Oracle(x), x, method="rk4")
    with pytest.raises(ValueError, match=r"expected \(1, 2\)"):
        flow.sample(Oracle(x), x, given=x, given_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected \(1, 2\)"):
        flow.training_losses(Oracle(x), x, given_mask=torch.ones(2, 2, dtype=torch.bool))


def test_reference_only_hides_given_frames_from_the_main_input_but_not_from_the_reference():
    """reference_only: in the chosen samples the model's main input shows the given frames as noise
    at timestep 1, the reference it is handed holds them as given, and frames being made see the
    same noise as without it; at share 0 the draws, inputs and loss are those of a run without it."""
    from video_dit import PRESETS, VideoDiT

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = VideoDiT(in_channels=2, text_dims=(), given_reference=True, prediction="sample",
                                   **PRESETS["tiny"])
            with torch.no_grad():  # trained-looking weights (a new model's last layer outputs zeros)
                for p in self.module.parameters():
                    p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
            self.calls = []

        def forward(self, x, t, given_mask=None, reference=None, **cond):
            self.calls.append((x.clone(), t.clone(), reference))
            return self.module(x, t, given_mask=given_mask, reference=reference, **cond)

    x0 = torch.randn(4, 2, 3, 4, 4)
    mask = torch.tensor([[True, False, False], [True, True, False], [False] * 3, [True, False, False]])
    spy = Spy()
    runs = {}
    for share in (0.0, 1.0):
        out = flow.training_losses(spy, x0, given_mask=mask, context_noise=0.05, reference_only=share,
                                   generator=torch.Generator().manual_seed(7))
        runs[share] = (out["loss"], *spy.calls[-1])
    loss0, x_plain, t_plain, ref_plain = runs[0.0]
    loss1, x_hidden, t_hidden, reference = runs[1.0]
    assert ref_plain is None and torch.equal(reference, x_plain)  # the reference reads the given frames as given
    assert torch.equal(t_hidden[mask], torch.ones(int(mask.sum())))  # hidden: fed at timestep 1...
    assert not torch.allclose(x_hidden[:, :, 0][mask[:, 0]], x_plain[:, :, 0][mask[:, 0]], atol=0.5)  # ...as noise
    assert torch.equal(x_hidden.transpose(1, 2)[~mask], x_plain.transpose(1, 2)[~mask])  # frames to make: as before
    assert torch.equal(t_hidden[~mask], t_plain[~mask])
    assert not torch.equal(loss0, loss1)  # the model's view of the given frames changed what it made
    again = flow.training_losses(spy, x0, given_mask=mask, context_noise=0.05,
                                 generator=torch.Generator().manual_seed(7))
    assert torch.equal(again["loss"], loss0)
    with pytest.raises(ValueError, match="reference_only=1.5"):
        flow.training_losses(spy, x0, given_mask=mask, reference_only=1.5)
    with pytest.raises(ValueError, match="given_reference=True"):
        flow.training_losses(lambda x, t, **c: torch.zeros_like(x), x0, given_mask=mask, reference_only=0.5)
