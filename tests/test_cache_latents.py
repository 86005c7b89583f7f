"""`spacetime cache-latents`: bad input is refused before any work; a real cache is written and read back."""

import pytest

from pipelines import cli
from pipelines.commands.cache_latents import clip_lengths
from pipelines.errors import UserError


def test_clip_lengths_are_every_causal_length_in_range():
    assert clip_lengths(33, None, 4) == [17, 21, 25, 29, 33]
    assert clip_lengths(9, None, 4) == [9]
    assert clip_lengths(9, 1, 4) == [1, 5, 9]
    with pytest.raises(UserError, match="1 \\+ 4k"):
        clip_lengths(32, None, 4)
    with pytest.raises(UserError, match="more than --frames"):
        clip_lengths(9, 17, 4)


def test_bad_folders_are_refused_before_any_work(tmp_path, capsys):
    assert cli.main(["cache-latents", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2
    assert "no such data folder" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert cli.main(["cache-latents", "--data", str(tmp_path), "--out", str(busy), "--overwrite"]) == 2
    assert "holds no latent cache" in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "keep me"
