"""`spacetime cache-latents`: bad input is refused before any work; a real cache is written and read back."""

import json
from pathlib import Path

import pytest
import torch

from conftest import moving_square
from pipelines import cli
from pipelines.commands.cache_latents import clip_lengths, load_text, load_vae
from pipelines.data import LatentCache, SkippedFileWarning, VideoFolder
from pipelines.errors import UserError
from pipelines.video_io import write_image, write_video


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
    for flags, says in ((["--frames", "0"], "--frames must be 1 or more, got 0"),
                        (["--fps", "-2"], "--fps must be 0 (every frame) or a positive rate, got -2"),
                        (["--captions", str(tmp_path / "none.csv")], "none.csv: no such file")):
        assert cli.main(["cache-latents", "--data", str(tmp_path), "--out", str(tmp_path / "c"), *flags]) == 2
        captured = capsys.readouterr()
        assert says in captured.err and captured.err.count("\n") == 1  # nothing loaded, no progress shown


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    write_video(root / "long_walk.mp4", moving_square(21, 32, 48, seed=1), fps=8)
    write_video(root / "short_hop.mp4", moving_square(11, 32, 48, seed=2), fps=8)
    write_image(root / "still.png", moving_square(1, 32, 32, seed=3)[0])
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    (root / "captions.csv").write_text("path,caption\nlong_walk.mp4,a square walks right\n")
    return root


def test_cache_holds_long_clips_that_match_the_vae_and_text_encoder(data, tmp_path, capsys):
    out = tmp_path / "cache"
    args = ["cache-latents", "--data", str(data), "--out", str(out), "--vae", "tiny", "--frames", "21",
            "--min-frames", "9", "--size", "48", "--batch-size", "2", "--text-encoder", "minilm"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "cached 3 clips" in captured.out and "1 skipped (1 unreadable)" in captured.out
    assert captured.err.count("broken.mp4") == 1  # one warning for the bad file

    cache = LatentCache(out)
    entries = {e["path"]: e for e in cache.entries}
    assert cache.skipped == {str(data / "broken.mp4"): cache.skipped[str(data / "broken.mp4")]}
    shapes = {Path(p).name: e["latent_shape"] for p, e in entries.items()}
    # 21 frames -> 6 latent frames; 11 -> the 9 first -> 3; the still is one latent frame; 8x spatial
    assert shapes == {"long_walk.mp4": [16, 6, 4, 6], "short_hop.mp4": [16, 3, 4, 6], "still.png": [16, 1, 6, 6]}

    # the stored latents are the VAE's latents of the clip from its first frame
    vae = load_vae("tiny", None)[0].eval()
    with pytest.warns(SkippedFileWarning, match="broken.mp4"):
        ds = VideoFolder(data, frames=list(range(9, 22, 4)), fps=8.0, base_size=48, random_offset=False)
    i = [s.path.name for s in ds.samples].index("long_walk.mp4")
    index = [e["path"] for e in cache.entries].index(str(data / "long_walk.mp4"))
    with torch.no_grad():
        expected = vae.encode_latents(ds[i]["video"][None])[0]
    item = cache[index]
    assert torch.allclose(item["latents"], expected, atol=1e-5)
    assert item["caption"] == "a square walks right"

    # ... and the prompt's token states, cut to its own tokens; the null prompt for guidance
    encoders, names = load_text(["minilm"], None)
    assert json.loads((out / "index.json").read_text())["text_encoders"] == names == ["minilm"]
    states, masks = encoders.encode(["a square walks right"])
    n = int(masks[0].sum())
    assert torch.allclose(item["text_states"][0], states[0][0, :n], atol=1e-5) and item["text_masks"][0].all()
    null_states, null_masks = cache.null_text()
    assert null_states[0].shape == (1, 384) and not null_states[0].any() and null_masks[0].all()

    # training takes windows at random latent offsets inside the long clip
    windows = LatentCache(out, latent_frames=3, seed=0)
    offsets = set()
    for epoch in range(12):
        windows.set_epoch(epoch)
        w = windows[index]
        offsets.add(w["offset"])
        assert torch.equal(w["latents"], item["latents"][:, w["offset"] : w["offset"] + 3])
    assert len(offsets) > 2 and max(offsets) <= 3

    # an existing cache is replaced only with --overwrite
    assert cli.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(args[:-2] + ["--overwrite", "--frames", "9", "--text-encoder", "none"]) == 0
    assert {e["latent_shape"][1] for e in LatentCache(out).entries} == {1, 3}
    again = LatentCache(out)
    assert again.null_text() is None and again[0]["text_states"] == []


def test_every_caption_stores_one_entry_per_wording(tmp_path, capsys):
    data = tmp_path / "clips"
    data.mkdir()
    write_video(data / "a.mp4", moving_square(9, 32, 32), fps=8)
    write_video(data / "b.mp4", moving_square(9, 32, 32, seed=1), fps=8)
    (data / "captions.jsonl").write_text(
        '{"path": "a.mp4", "caption": "a square moves right"}\n'
        '{"path": "a.mp4", "caption": "a block travels to the right"}\n'
        '{"path": "b.mp4", "caption": "another square"}\n')
    base = ["cache-latents", "--data", str(data), "--vae", "tiny", "--frames", "9", "--size", "32",
            "--text-encoder", "none"]
    assert cli.main(base + ["--out", str(tmp_path / "one")]) == 0
    assert len(LatentCache(tmp_path / "one")) == 2
    assert cli.main(base + ["--out", str(tmp_path / "every"), "--every-caption"]) == 0
    assert "cached 3 entries (2 clips, one entry per caption)" in capsys.readouterr().out
    every = LatentCache(tmp_path / "every")
    captions = sorted((Path(e["path"]).name, e["caption"]) for e in every.entries)
    assert captions == [("a.mp4", "a block travels to the right"), ("a.mp4", "a square moves right"),
                        ("b.mp4", "another square")]
    first, second = (every[i] for i, e in enumerate(every.entries) if e["path"].endswith("a.mp4"))
    assert torch.equal(first["latents"], second["latents"])
