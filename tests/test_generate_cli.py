"""`spacetime generate / animate / extend` on a tiny model folder: outputs, sidecars, bad input."""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import moving_square
from pipeline_tiny import save_tiny_model
from pipelines import cli
from pipelines.video_io import read_image, read_video, write_video


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", context_latent_frames=2)


@pytest.fixture(autouse=True)
def load_each_model_once(monkeypatch):
    """Each CLI run loads its model folder (the first time for real); later runs on the same
    folder reuse it, which keeps these tests fast."""
    from pipelines.commands import sampling

    real = sampling.load_pipeline

    def cached(model, device, dtype):
        key = (str(model), device, dtype)
        if key not in _loaded:
            _loaded[key] = real(model, device, dtype)
        return _loaded[key]

    monkeypatch.setattr(sampling, "load_pipeline", cached)


_loaded: dict = {}


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def frames_of(folder):
    return np.stack([read_image(p) for p in sorted(folder.glob("frame_*.png"))])


def test_generate_writes_the_clip_the_sidecar_and_the_preview(model, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    code, stdout, stderr = run(capsys, "generate", "a red circle moves to the right", "--model", model,
                               "--out", out, "--seed", 7, "--preview", "--steps", 2)
    assert code == 0, stderr
    assert read_video(out).num_frames == 9
    sidecar = json.loads((tmp_path / "clip.mp4.json").read_text())
    assert sidecar["prompt"] == "a red circle moves to the right" and sidecar["seed"] == 7
    assert (sidecar["frames"], sidecar["width"], sidecar["height"], sidecar["steps"]) == (9, 32, 32, 2)
    assert sidecar["task"] == "generate" and sidecar["model"] == str(model)
    assert sidecar["guidance_rescale"] == 0.0  # the model folder's
    assert sidecar["guidance_interval"] == [0.0, 1.0]  # the folder's: every step
    assert sidecar["guidance"] == 3.0  # the folder's
    assert Image.open(tmp_path / "clip.png").size[0] > 32
    last = stdout.strip().splitlines()[-1]
    assert str(out) in last and re.search(r"in \d+\.\d s$", last)


def test_guidance_rescale_flag_reaches_the_sampler_and_the_sidecar(model, tmp_path, capsys):
    clips = {}
    for rescale in ("0", "0.7"):
        out = f"{tmp_path}/r{rescale}/"
        code, _, err = run(capsys, "generate", "a blue square", "--model", model, "--out", out, "--seed", 3,
                           "--steps", 2, "--guidance-rescale", rescale)
        assert code == 0, err
        clips[rescale] = frames_of(tmp_path / f"r{rescale}")
        assert json.loads((tmp_path / f"r{rescale}.json").read_text())["guidance_rescale"] == float(rescale)
    assert not np.array_equal(clips["0"], clips["0.7"])
    code, _, err = run(capsys, "generate", "a blue square", "--model", model, "--out", f"{tmp_path}/bad/",
                       "--guidance-rescale", "2")
    assert code == 2 and "--guidance-rescale 2; use a strength from 0 (off) to 1" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_guidance_interval_flag_reaches_the_sampler_and_the_sidecar(model, tmp_path, capsys):
    clips = {}
    for name, interval in (("all", ("0", "1")), ("high", ("0.5", "1"))):
        code, _, err = run(capsys, "generate", "a blue square", "--model", model, "--out", f"{tmp_path}/{name}/",
                           "--seed", 3, "--steps", 3, "--guidance-interval", *interval)
        assert code == 0, err
        clips[name] = frames_of(tmp_path / name)
        assert json.loads((tmp_path / f"{name}.json").read_text())["guidance_interval"] == [float(v) for v in interval]
    assert not np.array_equal(clips["all"], clips["high"])
    code, _, err = run(capsys, "generate", "a blue square", "--model", model, "--out", f"{tmp_path}/bad/",
                       "--guidance-interval", "0.8", "0.2")
    assert code == 2 and "--guidance-interval 0.8 0.2; use two noise levels 0 <= LOW < HIGH <= 1" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_same_seed_same_frames_and_refusal_to_overwrite(model, tmp_path, capsys):
    a, b = f"{tmp_path}/a/", f"{tmp_path}/b/"
    for folder in (a, b):
        code, _, err = run(capsys, "generate", "a blue square", "--model", model, "--out", folder, "--seed", 11)
        assert code == 0, err
    a, b = tmp_path / "a", tmp_path / "b"
    assert np.array_equal(frames_of(a), frames_of(b)) and len(frames_of(a)) == 9
    code, _, err = run(capsys, "generate", "a blue square", "--model", model, "--out", f"{a}/", "--seed", 12)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert np.array_equal(frames_of(a), frames_of(b))  # untouched
    code, _, err = run(capsys, "generate", "a blue square", "--model", model, "--out", f"{a}/", "--seed", 12,
                       "--overwrite")
    assert code == 0, err
    assert not np.array_equal(frames_of(a), frames_of(b))


def test_without_seed_one_is_drawn_printed_and_recorded(model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run(capsys, "generate", "A Red Circle, moving!", "--model", model)
    assert code == 0, stderr
    seed = int(re.search(r"seed (\d+)", stderr).group(1))
    outputs = list((tmp_path / "outputs").glob("*-a-red-circle-moving.mp4"))
    assert len(outputs) == 1 and re.fullmatch(r"\d{8}-\d{6}-a-red-circle-moving\.mp4", outputs[0].name)
    assert json.loads((outputs[0].parent / (outputs[0].name + ".json")).read_text())["seed"] == seed


def test_long_video_and_rounding_notices(model, tmp_path, capsys):
    code, _, err = run(capsys, "generate", "a circle", "--model", model, "--out", f"{tmp_path}/long/", "--frames", 24,
                       "--size", "30x33", "--seed", 1)
    assert code == 0, err
    assert "frames 24 rounded to 25" in err and "size 30x33 rounded to 32x32" in err and "windows" in err
    assert frames_of(tmp_path / "long").shape == (25, 32, 32, 3)


def test_animate_accepts_awkward_stills(model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 65535, (50, 70), dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(rng.integers(0, 256, (21, 33, 4), dtype=np.uint8), "RGBA").save(tmp_path / "alpha.png")
    for name in ("deep.png", "alpha.png"):
        out = tmp_path / f"{name}.mp4"
        code, _, err = run(capsys, "animate", tmp_path / name, "it wakes up", "--model", model, "--out", out,
                           "--seed", 0)
        assert code == 0, err
        assert read_video(out).num_frames == 9


def test_the_sidecar_records_the_guidance_an_animation_was_made_with(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "tiny", given_guidance_scale=1.5)
    Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(tmp_path / "still.png")
    for flags, expected in (([], 1.5), (["--guidance", "2"], 2.0)):
        out = tmp_path / f"a{len(flags)}.mp4"
        code, _, err = run(capsys, "animate", tmp_path / "still.png", "it wakes up", "--model", model, "--out", out,
                           "--steps", 1, *flags)
        assert code == 0, err
        sidecar = json.loads((tmp_path / f"a{len(flags)}.mp4.json").read_text())
        assert sidecar["guidance"] == expected  # the scale the clip was made with


def test_extend_keeps_the_input_and_adds_frames(model, tmp_path, capsys):
    clip = moving_square(9, 32, 32)
    write_video(f"{tmp_path}/input/", clip, fps=8)
    code, _, err = run(capsys, "extend", tmp_path / "input", "the square keeps going", "--frames", 8,
                       "--model", model, "--out", f"{tmp_path}/longer/", "--seed", 0)
    assert code == 0, err
    frames = frames_of(tmp_path / "longer")
    assert frames.shape[0] == 17 and np.array_equal(frames[:9], clip)


@pytest.mark.parametrize("args, words", [
    (["generate", "", "--model", "{model}"], "prompt is empty"),
    (["generate", "x", "--model", "{model}", "--size", "big"], "is not WxH"),
    (["generate", "x", "--model", "{model}", "--frames", "0"], "--frames 0"),
    (["generate", "x", "--model", "{tmp}/nowhere"], "not found"),
    (["generate", "x", "--model", "{model}", "--out", "{tmp}/clip.avi"], "cannot write '.avi'"),
    (["animate", "{tmp}/missing.png", "x", "--model", "{model}"], "missing.png: no such file"),
    (["extend", "{tmp}/short/", "x", "--frames", "4", "--model", "{model}"], "extending needs at least 5"),
    (["extend", "{tmp}/short/", "x", "--model", "{model}"], "required"),
    (["generate", "x", "--model", "{model}", "--steps", "0"], "--steps 0"),
])
def test_bad_input_is_one_line_and_exit_2(model, tmp_path, capsys, args, words):
    write_video(f"{tmp_path}/short/", moving_square(3, 32, 32), fps=8)
    args = [a.format(model=model, tmp=tmp_path) for a in args]
    if words == "required":  # argparse's own message for a missing option
        with pytest.raises(SystemExit) as exit_info:
            cli.main(args)
        assert exit_info.value.code == 2 and "--frames" in capsys.readouterr().err
        return
    code, _, err = run(capsys, *args)
    assert code == 2 and words in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bf16_runs_and_cuda_without_a_gpu_is_refused(model, tmp_path, capsys):
    import torch

    code, _, err = run(capsys, "generate", "a circle", "--model", model, "--out", tmp_path / "bf16.mp4",
                       "--dtype", "bf16", "--seed", 0)
    assert code == 0, err
    assert json.loads((tmp_path / "bf16.mp4.json").read_text())["dtype"] == "bf16"
    if not torch.cuda.is_available():
        code, _, err = run(capsys, "generate", "a circle", "--model", model, "--out", tmp_path / "gpu.mp4",
                           "--device", "cuda")
        assert code == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1


def test_a_model_folder_missing_a_part_is_one_line(model, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    shutil.rmtree(broken / "vae")
    code, _, err = run(capsys, "generate", "x", "--model", broken, "--out", tmp_path / "x.mp4")
    assert code == 2 and "missing vae/config.json, vae/diffusion_pytorch_model.safetensors" in err
    assert len(err.strip().splitlines()) == 1


def test_info_on_a_model_folder_reports_size_flops_and_native_settings(model, capsys):
    assert cli.main(["info", str(model), "--frames", "9", "--size", "32x32"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] > 0 and info["flops_per_step"]["gflops"] > 0
    assert info["model_index"]["_class_name"] == "SpacetimePipeline"
    given = info["flops_per_step"]
    assert cli.main(["info", str(model)]) == 0  # no --frames / --size: the model's native clip (9 x 32x32)
    assert json.loads(capsys.readouterr().out)["flops_per_step"] == given
    assert cli.main(["info", str(model), "--size", "0x0"]) == 2
    assert cli.main(["info", str(model), "--frames", "-5"]) == 2
    assert "--size '0x0'" in capsys.readouterr().err


def test_info_on_a_model_folder_with_a_mistyped_config_names_the_file(model, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    config = broken / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "hidden_size": "256"}))
    assert cli.main(["info", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{config} does not describe a VideoDiT that can be built" in err and err.count("\n") == 1
