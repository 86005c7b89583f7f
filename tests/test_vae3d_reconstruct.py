"""`spacetime reconstruct`: output size and frames, metrics, and bad input as one-line errors."""

import json

import pytest
import torch

from conftest import moving_square
from pipelines import __version__, cli
from pipelines.errors import UserError
from pipelines.metrics import psnr, ssim
from pipelines.video_io import read_video, write_video
from vae3d import PRESETS, CausalVideoVAE


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "vae"
    CausalVideoVAE(**PRESETS["tiny"]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return write_video(folder / "clip.mp4", moving_square(7, 20, 30), fps=12)


def test_keeps_the_input_frames_and_size_and_reports_metrics(vae_dir, clip_path, tmp_path, capsys):
    out = tmp_path / "recon/"
    assert cli.main(["reconstruct", str(clip_path), "--out", f"{out}/", "--vae", str(vae_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["frames"], result["width"], result["height"]) == (7, 30, 20)  # 7 frames, 30x20: padded, cropped
    written = read_video(out).frames  # PNG frames: lossless, so the metrics can be checked exactly
    source = read_video(clip_path).frames
    assert written.shape == source.shape == (7, 20, 30, 3)
    assert result["psnr"] == pytest.approx(psnr(source, written), abs=1e-3)
    assert result["ssim"] == pytest.approx(ssim(source, written), abs=1e-4)
    assert result["encode_s"] >= 0 and result["decode_s"] >= 0
    sidecar = json.loads((tmp_path / "recon.json").read_text())  # what made the output, beside it
    assert sidecar["task"] == "reconstruct" and sidecar["vae"] == result["vae"] and sidecar["psnr"] == result["psnr"]
    assert sidecar["spacetime_version"] == __version__  # the same key as generate's sidecar


def test_frames_and_size_options(vae_dir, clip_path, tmp_path, capsys):
    out = tmp_path / "small.mp4"
    code = cli.main(["reconstruct", str(clip_path), "--out", str(out), "--vae", str(vae_dir), "--frames", "5",
                     "--size", "16x16"])
    assert code == 0
    assert "PSNR" in capsys.readouterr().out
    assert read_video(out).frames.shape == (5, 16, 16, 3)
    # the output is never overwritten without --overwrite
    assert cli.main(["reconstruct", str(clip_path), "--out", str(out), "--vae", str(vae_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_without_vae_the_installed_default_vae_reconstructs(clip_path, tmp_path, capsys):
    assert cli.main(["reconstruct", str(clip_path), "--out", f"{tmp_path / 'o'}/", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["vae"].replace("\\", "/").endswith("pipelines/default_model/vae")
    assert result["psnr"] > 28  # a moving square on black: the shipped VAE keeps it


def test_without_vae_and_without_installed_model(clip_path, tmp_path, capsys, monkeypatch):
    import pipelines.pipeline

    def none_installed(part=None):
        raise UserError("no default model")

    monkeypatch.setattr(pipelines.pipeline, "default_model_path", none_installed)
    assert cli.main(["reconstruct", str(clip_path), "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert "no default VAE is installed" in err and "--vae" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (["--vae", "/nowhere/vae"], "no such folder"),
    (["--size", "big"], "not WxH"),
    (["--frames", "0"], "1 or more"),
    (["--frames", "50"], "has 7 frames"),
])
def test_bad_input_is_one_line(vae_dir, clip_path, tmp_path, capsys, extra, message):
    args = ["reconstruct", str(clip_path), "--out", str(tmp_path / "o.mp4")]
    if "--vae" not in extra:
        args += ["--vae", str(vae_dir)]
    assert cli.main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_mismatched_weights_folder(vae_dir, clip_path, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(vae_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["latent_channels"] = 8
    (broken / "config.json").write_text(json.dumps(config))
    assert cli.main(["reconstruct", str(clip_path), "--out", str(tmp_path / "o.mp4"), "--vae", str(broken)]) == 2
    assert "do not match" in capsys.readouterr().err
