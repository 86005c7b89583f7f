"""The `spacetime` command: help, version, info, and how bad input is reported."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import moving_square
from pipelines import cli
from pipelines.video_io import write_video


def run_cli(*args):
    """Run the real command in a fresh interpreter, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ["generate", "animate", "extend", "reconstruct", "train", "finetune", "cache-latents",
                 "eval", "bench", "info"]:
        assert name in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("spacetime-video ")


def test_info_describes_a_real_mp4(tmp_path, capsys):
    path = write_video(tmp_path / "clip.mp4", moving_square(17, 64, 96), fps=16)
    assert cli.main(["info", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "video"
    assert (info["frames"], info["fps"], info["width"], info["height"]) == (17, 16.0, 96, 64)
    assert info["codec"] == "h264" and info["duration_s"] == pytest.approx(17 / 16, abs=0.01)


def test_info_describes_an_image(tmp_path, capsys):
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "still.jpg")
    assert cli.main(["info", str(tmp_path / "still.jpg")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["kind"], info["width"], info["height"], info["format"]) == ("image", 20, 10, "JPEG")


@pytest.mark.parametrize("content", [None, b"not a video at all", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64])
def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path, content):
    path = tmp_path / "input.mp4"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run_cli("info", path)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "input.mp4" in lines[0] and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    code, _, err = run_cli("--debug", "info", tmp_path / "missing.mp4")
    assert code != 0 and "Traceback" in err and "missing.mp4" in err


def test_a_mistyped_option_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["generate", "--frames", "abc", "a red ball"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--frames: invalid int value: 'abc'" in err and "spacetime generate --help" in err


def test_a_path_the_system_refuses_is_a_one_line_error(monkeypatch, capsys):
    from pipelines.commands import info

    def refuse(args):
        raise OSError(36, "File name too long", args.path)

    monkeypatch.setattr(info, "run", refuse)
    assert cli.main(["info", "a" * 300 + ".png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spacetime info: error: [Errno 36] File name too long: 'aaa") and err.count("\n") == 1


def test_bench_refuses_an_unknown_name(monkeypatch, tmp_path, capsys):
    from pipelines.commands import bench

    (tmp_path / "bench_fast.py").write_text("print('| ours | ref |')\n")
    monkeypatch.setattr(bench, "TOOLS", tmp_path)
    assert cli.main(["bench", "--list"]) == 0
    assert capsys.readouterr().out.split() == ["fast"]
    assert cli.main(["bench", "slow"]) == 2
    assert "unknown benchmark slow; choose from fast" in capsys.readouterr().err
