"""`spacetime finetune`: a folder of a few clips -> a model folder that `spacetime generate` loads."""

import torch

from conftest import moving_square
from pipeline_tiny import save_tiny_model
from pipelines.video_io import write_video
from train_helpers import cli


def test_finetune_a_folder_of_clips_into_a_model_that_generates(tmp_path, capsys):
    from pipelines.pipeline import SpacetimePipeline

    base = save_tiny_model(tmp_path / "base")
    data = tmp_path / "clips"
    data.mkdir()
    for i in range(3):
        write_video(data / f"clip{i}.mp4", moving_square(13, 32, 32, seed=i), 8.0)
        (data / f"clip{i}.txt").write_text(f"a square of colour {i} slides right")
    out = tmp_path / "mine"
    code, err = cli("finetune", "--data", data, "--out", out, "--base", base, "--steps", 3, "--lora-rank", 4,
                    "--lr", 1e-2)
    assert code == 0, err
    plan = capsys.readouterr().out
    assert "clips: 3" in plan and "9x32x32: 3" in plan and "steps: 3" in plan and "estimated time" in plan
    tuned = SpacetimePipeline.from_pretrained(out)
    original = SpacetimePipeline.from_pretrained(base)
    a, b = original.transformer.state_dict(), tuned.transformer.state_dict()
    assert a.keys() == b.keys()
    assert not torch.equal(a["blocks.0.attn1.to_qkv.weight"], b["blocks.0.attn1.to_qkv.weight"])
    assert torch.equal(a["patch_embedding.weight"], b["patch_embedding.weight"])  # LoRA left the rest alone
    assert (out / "lora" / "adapter_model.safetensors").is_file()
    code, err = cli("generate", "a square slides right", "--model", out, "--steps", 2, "--out", tmp_path / "clip.mp4")
    assert code == 0, err
    assert (tmp_path / "clip.mp4").is_file()
    code, err = cli("finetune", "--data", data, "--out", out, "--base", base, "--steps", 3)
    assert code == 2 and "already holds a model" in err
    (out / "model_index.json").unlink()  # as if the fine-tune had stopped before writing its model
    code, err = cli("finetune", "--data", data, "--out", out, "--base", base, "--steps", 3)
    assert code == 2 and "holds an unfinished fine-tune (step_00000003); continue it with --resume" in err
    code, err = cli("finetune", "--data", data, "--out", out, "--base", base, "--steps", 2, "--overwrite")
    assert code == 0, err  # started over: the earlier run's checkpoints are gone
    assert [p.name for p in (out / "training" / "checkpoints").iterdir()] == ["step_00000002"]


def test_finetune_refuses_an_empty_folder(tmp_path):
    base = save_tiny_model(tmp_path / "base")
    (tmp_path / "empty").mkdir()
    code, err = cli("finetune", "--data", tmp_path / "empty", "--out", tmp_path / "mine", "--base", base)
    assert code == 2 and "empty" in err
    assert not (tmp_path / "mine" / "training" / "log.jsonl").exists()
