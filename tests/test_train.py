"""The training loop on one process: given-frame masks, LR schedule, loss, exact resume, checkpoints."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pipelines import train as training
from pipelines.config import GivenFrames, load_config
from pipelines.errors import UserError
from train_helpers import cli, losses, tiny_config, write_latent_cache


@pytest.fixture
def cache(tmp_path):
    return write_latent_cache(tmp_path / "cache")


def test_given_mask_draws_each_pattern_with_its_probability():
    probs = GivenFrames(none=0.1, first=0.2, prefix=0.3, first_last=0.4)
    mask = training.draw_given_mask(20000, 5, probs, torch.Generator().manual_seed(0))
    none = ~mask.any(1)
    first = mask[:, 0] & ~mask[:, 1:].any(1)
    first_last = mask[:, 0] & mask[:, -1] & ~mask[:, 1:-1].any(1)
    prefix = mask[:, 0] & mask[:, 1] & ~mask[:, -1]  # prefixes of 2..4 frames (k = 1 looks like "first")
    assert (none | first | first_last | prefix).all()
    assert none.float().mean() == pytest.approx(0.1, abs=0.01)
    # k is uniform in [1, 4]: a quarter of the prefixes are one frame long and count as "first"
    assert first.float().mean() == pytest.approx(0.2 + 0.3 / 4, abs=0.015)
    assert prefix.float().mean() == pytest.approx(0.3 * 3 / 4, abs=0.015)
    assert first_last.float().mean() == pytest.approx(0.4, abs=0.015)
    lengths = mask[prefix].sum(1)
    assert set(lengths.tolist()) == {2, 3, 4}


def test_given_mask_fits_short_clips():
    probs = GivenFrames(none=0.0, first=0.0, prefix=0.0, first_last=1.0)
    assert not training.draw_given_mask(64, 1, probs).any()  # an image: nothing can be given
    two = training.draw_given_mask(64, 2, GivenFrames(none=0.0, first=0.0, prefix=0.5, first_last=0.5))
    assert two[:, 0].all() and not two[:, 1].any()  # never all frames given


def test_lr_warms_up_then_follows_cosine_to_the_floor():
    f = [training.lr_factor(s, 4, 20, "cosine", 0.1) for s in range(21)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4] == pytest.approx(1.0) and f[20] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[4:], f[5:]))
    assert training.lr_factor(15, 4, 20, "constant", 0.1) == 1.0


def test_loss_falls_and_the_final_model_loads(tmp_path, cache):
    from video_dit import VideoDiT

    cfg = load_config(tiny_config(tmp_path, cache, steps=16, save_every=8, ema_decay=0.0))
    run = training.train(cfg)
    seq = losses(run)
    assert sorted(seq) == list(range(1, 17))
    first, last = sum(seq[s] for s in (1, 2, 3)) / 3, sum(seq[s] for s in (14, 15, 16)) / 3
    assert last < 0.8 * first
    model = VideoDiT.from_pretrained(run / "model")
    trained = load_file(run / "checkpoints" / "step_00000016" / "model.safetensors")
    assert torch.equal(model.state_dict()["final_layer.linear.weight"], trained["final_layer.linear.weight"])
    saved = json.loads((run / "checkpoints" / "step_00000016" / "state.json").read_text())
    assert saved["config"]["steps"] == 16 and (run / "config.yaml").is_file()


@pytest.mark.parametrize("key", ["motion_weight", "given_loss_weight"])
def test_loss_weights_reach_the_loss(tmp_path, cache, key):
    """dit.motion_weight and dit.given_loss_weight reweight the loss the loop optimises: same seed and
    data (each clip given its first frame), another first loss."""
    dit = {"given": {"none": 0.0, "first": 1.0, "prefix": 0.0, "first_last": 0.0}, "context_noise": 0.1}
    plain = losses(training.train(load_config(tiny_config(tmp_path, cache, out="plain", steps=1, save_every=1,
                                                          dit=dit))))
    weighted = losses(training.train(load_config(tiny_config(tmp_path, cache, out="weighted", steps=1, save_every=1,
                                                             dit={**dit, key: 2.0}))))
    assert weighted[1] != pytest.approx(plain[1], rel=1e-4)


def test_reference_only_trains_a_model_with_the_reference_and_is_refused_for_one_without(tmp_path, cache):
    """dit.reference_only changes what a given_reference model is shown (its losses move once the
    model has taken a step); a model.init folder built without the path is refused up front."""
    from video_dit import PRESETS, VideoDiT

    dit = {"given": {"none": 0.0, "first": 1.0, "prefix": 0.0, "first_last": 0.0}}
    extra = dict(steps=3, save_every=3, model={"args": {"given_reference": True}})
    plain = losses(training.train(load_config(tiny_config(tmp_path, cache, out="plain", dit=dit, **extra))))
    hidden = losses(training.train(load_config(tiny_config(tmp_path, cache, out="hidden", **extra,
                                                           dit={**dit, "reference_only": 1.0}))))
    assert hidden[3] != pytest.approx(plain[3], rel=1e-4)
    folder = tmp_path / "plain_model"
    VideoDiT(in_channels=4, text_dims=(), **PRESETS["tiny"]).save_pretrained(folder)
    cfg = load_config(tiny_config(tmp_path, cache, out="init", model={"init": str(folder)},
                                  dit={"reference_only": 0.5}))
    with pytest.raises(UserError, match="dit.reference_only=0.5 needs a DiT with a given-frame reference path"):
        training.train(cfg)


def test_channel_weight_is_read_off_the_vae_and_kept_on_resume(tmp_path, cache, capsys):
    """dit.channel_weight weighs the loss by the decoder's sensitivity per latent channel, measured
    on the same clips in a new and in a resumed run: a resumed run goes on exactly."""
    from vae3d import PRESETS, CausalVideoVAE

    vae_dir = tmp_path / "vae"
    CausalVideoVAE(**{**PRESETS["tiny"], "latent_channels": 4}).save_pretrained(vae_dir)
    extra = dict(steps=2, save_every=1, model={"vae": str(vae_dir)})
    plain = losses(training.train(load_config(tiny_config(tmp_path, cache, out="plain", **extra))))
    weighted = dict(extra, dit={"channel_weight": 1.0})
    straight = losses(training.train(load_config(tiny_config(tmp_path, cache, out="straight", **weighted))))
    assert straight[1] != pytest.approx(plain[1], rel=1e-4)
    assert "latent channel weights (decoder sensitivity ^ 1, 8 clips)" in capsys.readouterr().out
    cfg = load_config(tiny_config(tmp_path, cache, out="resumed", **weighted))
    training.train(cfg, stop_at=1)
    assert losses(training.train(cfg, resume=tmp_path / "resumed")) == straight


def test_resume_continues_exactly(tmp_path, cache):
    extra = dict(optim={"grad_accum": 2}, steps=6, save_every=3)
    straight = training.train(load_config(tiny_config(tmp_path, cache, out="straight", **extra)))
    cfg = load_config(tiny_config(tmp_path, cache, out="resumed", **extra))
    training.train(cfg, stop_at=3)  # as if killed after the checkpoint at step 3
    assert sorted(losses(tmp_path / "resumed")) == [1, 2, 3]
    resumed = training.train(cfg, resume=tmp_path / "resumed")
    assert losses(resumed) == losses(straight)  # every step's loss, bit for bit
    a = load_file(straight / "checkpoints" / "step_00000006" / "ema.safetensors")
    b = load_file(resumed / "checkpoints" / "step_00000006" / "ema.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_takes_the_learning_rate_of_its_config(tmp_path, cache):
    cfg = load_config(tiny_config(tmp_path, cache, optim={"lr": 1e-3, "warmup_steps": 2}, steps=6, save_every=3))
    training.train(cfg, stop_at=3)
    lower = load_config(tiny_config(tmp_path, cache, optim={"lr": 1e-4, "warmup_steps": 2}, steps=6, save_every=3))
    run = training.train(lower, resume=tmp_path / "run")
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "lr" in r}
    factors = {s: training.lr_factor(s - 1, 2, 6, cfg.optim.schedule, cfg.optim.min_lr_ratio) for s in lrs}
    assert lrs[3] == pytest.approx(1e-3 * factors[3])  # logged: the rate each step ran with
    assert [lrs[s] for s in (4, 5, 6)] == pytest.approx([1e-4 * factors[s] for s in (4, 5, 6)])


def test_a_run_killed_while_saving_leaves_the_previous_checkpoint(tmp_path, cache, monkeypatch):
    cfg = load_config(tiny_config(tmp_path, cache, steps=6, save_every=3))
    real = training.ShardedEMA.save
    calls = []

    def crash_on_second_save(self, folder):
        calls.append(folder)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while saving")
        real(self, folder)

    monkeypatch.setattr(training.ShardedEMA, "save", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg)
    monkeypatch.undo()
    run = tmp_path / "run"
    assert training.find_checkpoint(run).name == "step_00000003"
    assert (run / "checkpoints" / ".tmp_step_00000006").is_dir()  # the half-written one is never picked
    resumed = training.train(cfg, resume=run)
    assert sorted(losses(resumed))[-1] == 6


def test_keeps_only_the_last_checkpoints(tmp_path, cache):
    run = training.train(load_config(tiny_config(tmp_path, cache, steps=5, save_every=1, keep_last=2)))
    assert [p.name for p in training.list_checkpoints(run)] == ["step_00000004", "step_00000005"]


def test_a_new_run_refuses_a_folder_that_holds_another_run(tmp_path, cache):
    config = tiny_config(tmp_path, cache, steps=6, save_every=3)
    training.train(load_config(config))
    run = tmp_path / "run"
    code, err = cli("train", config, "--steps", 3)
    assert code == 2 and f"{run} already holds a run" in err and f"--resume {run}" in err and "--overwrite" in err
    assert [p.name for p in training.list_checkpoints(run)] == ["step_00000003", "step_00000006"]  # untouched
    code, err = cli("train", config, "--steps", 3, "--overwrite")
    assert code == 0, err
    assert [p.name for p in training.list_checkpoints(run)] == ["step_00000003"]  # the old run is gone
    assert sorted(losses(run)) == [1, 2, 3] and training.read_state(run / "checkpoints" / "step_00000003")["config"]["steps"] == 3


def test_export_of_a_damaged_checkpoint_is_a_one_line_error(tmp_path, cache):
    run = training.train(load_config(tiny_config(tmp_path, cache, steps=3, save_every=3)))
    state = run / "checkpoints" / "step_00000003" / "state.json"
    for text, says in (("{}", "lacks or mistypes step, world_size, config"), ("{oops", "is not readable JSON")):
        state.write_text(text)
        code, err = cli("train", "--export", state.parent, "--out", tmp_path / "exported")
        assert code == 2 and f"{state} {says}" in err and err.count("\n") == 1
    code, err = cli("train", "--export", tmp_path / "nowhere", "--out", tmp_path / "exported")
    assert code == 2 and err.startswith(f"spacetime train: error: --export {tmp_path / 'nowhere'}: no such folder")
    assert not (tmp_path / "exported").exists()


def test_resume_from_a_folder_that_is_not_a_checkpoint(tmp_path, cache):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="not a checkpoint"):
        training.find_checkpoint(tmp_path / "nothing")
    code, err = cli("train", tiny_config(tmp_path, cache), "--resume", tmp_path / "nothing")
    assert code == 2 and "not a checkpoint" in err
    assert not (tmp_path / "run").exists()  # refused before any training


def test_empty_data_folder_is_refused_before_training(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    config = tiny_config(tmp_path, cache)
    code, err = cli("train", config, "--set", "data.latent_cache=null", "--data", tmp_path / "empty")
    assert code == 2 and "empty" in err
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_captions_naming_missing_files_are_refused(tmp_path, cache):
    from conftest import moving_square
    from pipelines.video_io import write_video

    data = tmp_path / "clips"
    data.mkdir()
    write_video(data / "a.mp4", moving_square(9, 32, 32), 8.0)
    (data / "captions.csv").write_text("path,caption\na.mp4,a square\nmissing.mp4,a ghost\n")
    code, err = cli("train", tiny_config(tmp_path, cache), "--set", "data.latent_cache=null", "--data", data)
    assert code == 2 and "missing.mp4" in err


def test_a_dit_trained_with_a_vae_folder_yields_a_model_folder_that_generates(tmp_path, cache):
    from pipelines.pipeline import SpacetimePipeline
    from vae3d import PRESETS, CausalVideoVAE

    vae_dir = tmp_path / "vae"
    CausalVideoVAE(**{**PRESETS["tiny"], "latent_channels": 4}).save_pretrained(vae_dir)
    run = training.train(load_config(tiny_config(tmp_path, cache, steps=2, save_every=2,
                                                 model={"vae": str(vae_dir)})))
    pipe = SpacetimePipeline.from_pretrained(run / "pipeline")
    assert (pipe.config.native_frames, pipe.config.height, pipe.config.width) == (9, 32, 32)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red square", num_inference_steps=1, generator=torch.Generator().manual_seed(0), guidance_scale=1.0)
    assert out.frames[0].shape == (9, 32, 32, 3)
    # any checkpoint of the run exports as a model folder too, with the same settings
    checkpoint = run / "checkpoints" / "step_00000002"
    code, err = cli("train", "--export", checkpoint, "--out", tmp_path / "dit", "--pipeline", tmp_path / "model")
    assert code == 0, err
    again = SpacetimePipeline.from_pretrained(tmp_path / "model")
    assert dict(again.config) == dict(pipe.config)
    assert again("a red square", num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                 guidance_scale=1.0).frames[0].tolist() == out.frames[0].tolist()
    code, err = cli("train", "--export", checkpoint, "--out", tmp_path / "dit", "--pipeline", tmp_path / "model")
    assert code == 2 and "exists; pass --overwrite" in err


def test_warm_start_copies_what_fits_into_a_model_of_another_patch_size(tmp_path, cache):
    from video_dit import VideoDiT

    source = training.train(load_config(tiny_config(tmp_path, cache, out="source", steps=2, save_every=2)))
    sections = {"model": {"kind": "dit", "preset": "tiny", "text_encoders": [], "warm_start": str(source / "model"),
                          "args": {"patch_size": [1, 1, 1]}}}
    run = training.train(load_config(tiny_config(tmp_path, cache, out="warm", steps=1, save_every=1, ema_decay=0.0,
                                                 optim={"lr": 1e-12}, **sections)))
    before, after = VideoDiT.from_pretrained(source / "model"), VideoDiT.from_pretrained(run / "model")
    assert after.patch != before.patch
    old, new = before.state_dict(), after.state_dict()
    same = [k for k in new if k in old and new[k].shape == old[k].shape]
    assert len(same) >= len(new) - 3  # all but the patch embedding and the output layer
    for key in same:  # a learning rate of 1e-12 leaves the copied weights as they were
        assert torch.allclose(new[key], old[key], atol=1e-6), key
    assert new["patch_embedding.weight"].shape != old["patch_embedding.weight"].shape


def test_warm_start_refuses_a_model_with_nothing_in_common_and_a_second_init(tmp_path, cache):
    from video_dit import VideoDiT

    other = tmp_path / "other"
    VideoDiT(in_channels=3, hidden_size=32, depth=1, num_heads=2).save_pretrained(other)
    model = VideoDiT(in_channels=4, hidden_size=64, depth=2, num_heads=4)
    with pytest.raises(UserError, match="none of its tensors fits"):
        training.warm_start(model, str(other))
    with pytest.raises(UserError, match="model.warm_start"):
        load_config(tiny_config(tmp_path, cache, model={"init": str(other), "warm_start": str(other)}))


def test_warm_start_names_its_key_when_the_folder_is_missing(tmp_path):
    from video_dit import VideoDiT

    with pytest.raises(UserError, match=r"model.warm_start=.*no such folder"):
        training.warm_start(VideoDiT(in_channels=4, hidden_size=64, depth=2, num_heads=4), str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"model.warm_start=S"):  # a preset is random weights: nothing to start from
        training.warm_start(VideoDiT(in_channels=4, hidden_size=64, depth=2, num_heads=4), "S")
