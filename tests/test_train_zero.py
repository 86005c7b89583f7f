"""DeepSpeed ZeRO-2 and ZeRO-3 over gloo, two processes started by `spacetime train --nproc 2`."""

import json

import pytest
import torch

from train_helpers import REPO, cli, losses, spacetime, tiny_config, write_latent_cache

pytest.importorskip("deepspeed")


@pytest.mark.parametrize("stage", [2, 3])
def test_two_process_zero_run_learns_and_exports(tmp_path, stage):
    from video_dit import VideoDiT

    cache = write_latent_cache(tmp_path / "cache")
    config = tiny_config(tmp_path, cache, steps=8, save_every=4)
    result = spacetime("train", config, "--deepspeed", REPO / f"configs/deepspeed/zero{stage}.json", "--nproc", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    seq = losses(run)
    assert sorted(seq) == list(range(1, 9))
    assert (seq[7] + seq[8]) / 2 < 0.85 * (seq[1] + seq[2]) / 2
    checkpoint = run / "checkpoints" / "step_00000008"
    assert (checkpoint / "zero").is_dir() and {p.name for p in checkpoint.glob("rank*.safetensors")} == {
        "rank0.safetensors", "rank1.safetensors"}
    # the run exported its EMA weights; exporting the raw weights again works from the CLI
    model = VideoDiT.from_pretrained(run / "model")
    assert model.config.hidden_size == 64
    code, err = cli("train", "--export", checkpoint, "--no-ema", "--out", tmp_path / "raw")
    assert code == 0, err
    raw_model = VideoDiT.from_pretrained(tmp_path / "raw")
    x, t = torch.randn(1, 4, 3, 4, 4), torch.full((1,), 0.5)
    with torch.no_grad():
        out_ema, out_raw = model(x, t), raw_model(x, t)
    assert out_raw.abs().sum() > 0 and not torch.allclose(out_ema, out_raw)  # trained, and EMA differs
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["world_size"] == 2 and state["config"]["deepspeed"].endswith(f"zero{stage}.json")
    # resumed (DeepSpeed's pickled states, loaded tensors-only) for two more steps
    result = spacetime("train", config, "--deepspeed", REPO / f"configs/deepspeed/zero{stage}.json", "--nproc", 2,
                       "--resume", run, "--steps", 10)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(losses(run)) == list(range(1, 11)) and (run / "checkpoints" / "step_00000010").is_dir()


def test_checkpoint_pickles_load_tensors_only(tmp_path):
    from pipelines.distributed import tensors_only_unpickling
    from pipelines.errors import UserError

    marker = tmp_path / "code_ran"

    class Payload:  # unpickling it would call open(marker, "w")
        def __reduce__(self):
            return open, (str(marker), "w")

    torch.save({"w": torch.ones(2), "x": Payload()}, tmp_path / "evil.pt")
    with tensors_only_unpickling(), pytest.raises(UserError, match="evil.pt: refused to load"):
        torch.load(tmp_path / "evil.pt", weights_only=False)  # as DeepSpeed calls it
    assert not marker.exists()
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    with tensors_only_unpickling():
        assert torch.load(tmp_path / "plain.pt", weights_only=False)["w"].sum() == 2
    assert torch.load is not None and "tensors_only" not in torch.load.__qualname__  # restored on exit


def test_zero_config_that_does_not_fit_the_world_size(tmp_path):
    cache = write_latent_cache(tmp_path / "cache")
    bad = tmp_path / "zero2_bs3.json"
    bad.write_text(json.dumps({"train_batch_size": 3, "zero_optimization": {"stage": 2}}))
    code, err = cli("train", tiny_config(tmp_path, cache), "--deepspeed", bad, "--nproc", 2)
    assert code == 2
    assert "train_batch_size=3" in err and "2 process(es)" in err
    assert not (tmp_path / "run").exists()
    hpz = tmp_path / "zero3_hpz.json"
    hpz.write_text(json.dumps({"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 3}}))
    code, err = cli("train", tiny_config(tmp_path, cache), "--deepspeed", hpz, "--nproc", 2)
    assert code == 2 and "zero_hpz_partition_size=3" in err
