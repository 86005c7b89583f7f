"""tools/sample_sheet.py: the README's sheet of a model's samples, one labelled row per sample."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline_tiny import tiny_pipeline
from train_helpers import REPO, load_tool

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_row_is_a_label_then_the_seeded_samples_frames():
    tool = load_tool("sample_sheet")
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    prompts = ("a red circle moves to the right", "a blue square moves down")
    sheet = tool.make_sheet(pipe, seed=3, text_prompts=prompts, pan_prompts=("the camera pans left",),
                            long_prompt="a red circle bounces")
    h, w = pipe.config.height, pipe.config.width
    assert sheet.dtype == np.uint8 and sheet.shape[0] == 4 * h + 3 * 4  # four rows, 4-pixel gaps
    clip = pipe(prompts[1], generator=torch.Generator().manual_seed(3)).frames[0]
    second_row = sheet[h + 4 : 2 * h + 4]
    label = second_row[:, :150]
    assert (label < 128).any() and (label == 255).mean() > 0.5  # dark text on white
    assert np.array_equal(second_row[:, 152 : 152 + w], clip[0])  # the first frame after the label
    assert np.array_equal(second_row[:, -w:], clip[-1])  # the last frame ends the row


def test_an_existing_sheet_is_kept_without_overwrite(tmp_path):
    out = tmp_path / "sheet.png"
    out.write_bytes(b"keep")
    run = subprocess.run([sys.executable, str(REPO / "tools" / "sample_sheet.py"), str(out), "--model",
                          str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert run.returncode == 2 and "exists; pass --overwrite" in run.stderr and len(run.stderr.splitlines()) == 1
    assert out.read_bytes() == b"keep"
