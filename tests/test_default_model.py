"""The default model shipped inside the package: complete, small, stored as float16, and it makes
clips at its native size from the command line without --model (what `make demo` runs)."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pipelines import cli
from pipelines.pipeline import SpacetimePipeline, default_model_path
from pipelines.video_io import read_video

FOLDER = default_model_path()


@pytest.fixture(scope="module")
def pipe():
    pipe = SpacetimePipeline.from_pretrained(FOLDER)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_default_model_is_complete_small_and_at_least_17x64x64():
    index = json.loads((FOLDER / "model_index.json").read_text())
    assert index["text_encoders"] == ["mpnet"]  # an encoder installed with the package, nothing to fetch
    weights = sorted(FOLDER.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {"vae", "transformer"}
    assert sum(w.stat().st_size for w in weights) <= 60e6
    for w in weights:
        with safe_open(str(w), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} <= {"F16", "I64", "BOOL"}
    assert (FOLDER / "README.md").read_text().startswith("# ")  # the model card
    assert index["native_frames"] >= 17 and min(index["height"], index["width"]) >= 64


def test_the_default_model_loads_as_float32_and_samples_reproducibly(pipe):
    assert all(p.dtype == torch.float32 for p in pipe.transformer.parameters())
    assert all(p.dtype == torch.float32 for p in pipe.vae.parameters())
    clips = [pipe("a blue square moves to the left on a white background", num_inference_steps=3,
                  generator=torch.Generator().manual_seed(3)).frames for _ in range(2)]
    c = pipe.config
    assert clips[0].shape == (1, c.native_frames, c.height, c.width, 3) and clips[0].dtype == np.uint8
    assert np.array_equal(clips[0], clips[1])


def test_generate_without_model_uses_the_default_model(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    code = cli.main(["generate", "a red circle moves to the right on a black background", "--out", str(out),
                     "--steps", "3", "--seed", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert str(out) in captured.out.strip().splitlines()[-1]
    clip = read_video(out)
    assert clip.num_frames == 17
    assert json.loads((tmp_path / "clip.mp4.json").read_text())["model"].replace("\\", "/").endswith(
        "pipelines/default_model")
