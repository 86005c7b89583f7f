"""Training data: captions, buckets, bad files skipped and counted, one shape per batch, resumable sampling."""

import os
import warnings

import av
import pytest
import torch

from conftest import moving_square
from pipelines.data import (
    Bucket,
    BucketSampler,
    SkippedFileWarning,
    VideoFolder,
    caption_from_name,
    choose_bucket,
    collate,
    make_buckets,
    read_captions,
    scan_folder,
)
from pipelines.errors import UserError
from pipelines.video_io import read_video, write_image, write_video


def write_faststart(path, clip, fps):
    """An mp4 whose header comes first, so cutting its tail leaves a file that opens but fails to decode."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def truncate(path, fraction=0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.fixture
def folder(tmp_path):
    """Two landscape clips, one portrait clip, two images: three buckets at base size 32."""
    root = tmp_path / "data"
    root.mkdir()
    write_video(root / "red_ball.mp4", moving_square(27, 32, 48, seed=1), fps=24)
    write_video(root / "blue_box.mp4", moving_square(12, 32, 48, seed=2), fps=8)
    write_video(root / "tall.mp4", moving_square(10, 48, 32, seed=3), fps=8)
    write_image(root / "still_a.png", moving_square(1, 32, 32, seed=4)[0])
    write_image(root / "still_b.jpg", moving_square(1, 40, 40, seed=5)[0])
    return root


# -- captions ---------------------------------------------------------------------------------------


def test_captions_come_from_manifest_then_sidecar_then_file_name(folder):
    (folder / "captions.csv").write_text('path,caption\nred_ball.mp4,"a red ball, rolling"\n')
    (folder / "blue_box.txt").write_text("  a blue box\nslides  \n")
    samples = {s.path.name: s for s in scan_folder(folder)}
    assert samples["red_ball.mp4"].captions == ["a red ball, rolling"]
    assert samples["red_ball.mp4"].source == "manifest"
    assert samples["blue_box.mp4"].captions == ["a blue box slides"]
    assert samples["still_a.png"].captions == ["still a"]
    assert "blue_box.txt" not in samples and "captions.csv" not in samples
    assert caption_from_name("x/red_ball-bounces.fast.mp4") == "red ball bounces fast"


def test_jsonl_manifest_with_several_captions_and_outside_files(folder, tmp_path):
    outside = tmp_path / "elsewhere" / "clip.mp4"
    outside.parent.mkdir()
    write_video(outside, moving_square(9, 32, 48), fps=8)
    (folder / "captions.jsonl").write_text(
        '{"path": "tall.mp4", "caption": "a tall clip"}\n\n'
        '{"path": "tall.mp4", "text": "the same clip, said again"}\n'
        f'{{"file": "{outside}", "prompt": "from outside"}}\n'
    )
    captions = read_captions(folder / "captions.jsonl")
    assert captions[(folder / "tall.mp4").resolve()] == ["a tall clip", "the same clip, said again"]
    samples = {s.path.name: s for s in scan_folder(folder)}
    assert samples["clip.mp4"].captions == ["from outside"]
    assert len(samples) == 6


def test_manifest_naming_missing_files_is_a_clear_error(folder):
    (folder / "captions.csv").write_text("path,caption\nred_ball.mp4,ok\ngone.mp4,missing\nalso_gone.png,x\n")
    with pytest.raises(UserError, match=r"names 2 file\(s\) that do not exist: gone.mp4 \(line 3\)"):
        VideoFolder(folder, frames=9, base_size=32)


@pytest.mark.parametrize("text, message", [
    ("file_path,words\na.mp4,b\n", "header with a 'path' and a 'caption' column"),
])
def test_bad_csv_header_is_a_clear_error(folder, text, message):
    (folder / "captions.csv").write_text(text)
    with pytest.raises(UserError, match=message):
        scan_folder(folder)


def test_bad_jsonl_line_names_the_line(folder):
    (folder / "captions.jsonl").write_text('{"path": "tall.mp4", "caption": "ok"}\n{not json\n')
    with pytest.raises(UserError, match="line 2: not valid JSON"):
        scan_folder(folder)


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a video")
    with pytest.raises(UserError, match="holds no videos or images"):
        VideoFolder(tmp_path / "empty")
    with pytest.raises(UserError, match="no such data folder"):
        VideoFolder(tmp_path / "nowhere")


# -- buckets ----------------------------------------------------------------------------------------


def test_derived_buckets_fit_the_token_budget_and_the_patch_grid():
    buckets = make_buckets(1280, [1, 17, 33], base_size=256)
    assert {b.frames for b in buckets} == {1, 17, 33}
    for b in buckets:
        assert b.height % 16 == 0 and b.width % 16 == 0
        assert b.tokens() <= 1280 and b.height * b.width <= 256 * 256
    square = {b.frames: b for b in buckets if b.height == b.width}
    assert square[17] == Bucket(17, 256, 256)  # 5 latent frames x 16 x 16 = 1280 tokens exactly
    assert square[33].height < 256  # longer clips get smaller frames under the same budget
    wide = [b for b in buckets if b.frames == 1 and b.aspect > 1.7]
    assert wide and abs(wide[0].aspect - 16 / 9) < 0.04


def test_choose_bucket_takes_the_longest_fitting_clip_then_the_nearest_aspect():
    buckets = [Bucket(1, 32, 32), Bucket(9, 32, 48), Bucket(9, 48, 32), Bucket(17, 32, 48)]
    assert buckets[choose_bucket(buckets, 360, 640, 40, image=False)] == Bucket(17, 32, 48)
    assert buckets[choose_bucket(buckets, 360, 640, 12, image=False)] == Bucket(9, 32, 48)
    assert buckets[choose_bucket(buckets, 640, 360, 12, image=False)] == Bucket(9, 48, 32)
    assert choose_bucket(buckets, 360, 640, 8, image=False) is None
    assert buckets[choose_bucket(buckets, 640, 360, 1, image=True)] == Bucket(1, 32, 32)


@pytest.mark.parametrize("bad", [Bucket(16, 32, 32), Bucket(17, 30, 32)])
def test_bucket_shapes_are_checked(folder, bad):
    with pytest.raises(UserError, match="1 \\+ 4k|multiples of 16"):
        VideoFolder(folder, buckets=[bad])


# -- reading clips -----------------------------------------------------------------------------------


def test_bucketed_batches_have_one_shape_each(folder):
    ds = VideoFolder(folder, frames=9, fps=8.0, base_size=48, aspects=(2 / 3, 1.0, 3 / 2))
    assert len(ds) == 5 and not ds.skipped
    assert len(set(ds.bucket_ids)) == 3  # landscape clips, the portrait clip, the two images
    sampler = BucketSampler(ds, batch_size=2, drop_last=False, seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    seen = []
    for batch in loader:
        bucket = ds.buckets[batch["bucket"]]
        assert batch["video"].shape == (len(batch["path"]), 3, bucket.frames, bucket.height, bucket.width)
        assert {ds.bucket_ids[i] for i in batch["index"]} == {batch["bucket"]}
        assert batch["video"].dtype == torch.float32
        assert -1.0 <= batch["video"].min() and batch["video"].max() <= 1.0
        seen += batch["index"]
    assert sorted(seen) == list(range(5))
    shapes = {ds.buckets[b] for b in ds.bucket_ids}
    assert shapes == {Bucket(9, 32, 48), Bucket(9, 48, 32), Bucket(1, 48, 48)}


def test_images_are_one_frame_clips_or_repeated_stills(folder):
    ds = VideoFolder(folder, frames=9, fps=8.0, base_size=32, image_frames=1)
    item = ds[[s.path.name for s in ds.samples].index("still_b.jpg")]
    assert item["video"].shape == (3, 1, 32, 32)
    ds5 = VideoFolder(folder, frames=9, fps=8.0, base_size=32, image_frames=5)
    item = ds5[[s.path.name for s in ds5.samples].index("still_b.jpg")]
    assert item["video"].shape == (3, 5, 32, 32)
    assert torch.equal(item["video"][:, 0], item["video"][:, 4])


def test_clip_is_sampled_at_the_target_fps_from_a_random_start(folder):
    ds = VideoFolder(folder, frames=5, fps=8.0, base_size=48, aspects=(3 / 2,), seed=7)
    i = [s.path.name for s in ds.samples].index("red_ball.mp4")  # 27 frames at 24 fps
    assert ds.strides[i] == 3
    every_frame = read_video(folder / "red_ball.mp4").frames
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[i]
        assert item["fps"] == pytest.approx(8.0) and item["stride"] == 3
        assert 0 <= item["start"] <= 27 - (4 * 3 + 1)
        starts.add(item["start"])
        again = ds[i]
        assert again["start"] == item["start"] and torch.equal(again["video"], item["video"])
        assert ds.buckets[item["bucket"]] == Bucket(5, 32, 48)
        start = item["start"]  # only the clip's frames are decoded, and they are the right ones
        assert torch.equal(item["video"], ds_tensor(every_frame[start : start + 13 : 3]))
    assert len(starts) > 1  # windows do not all start at frame 0
    fixed = VideoFolder(folder, frames=5, fps=8.0, base_size=48, aspects=(3 / 2,), random_offset=False)
    assert {fixed[i]["start"] for _ in range(2)} == {0}


def ds_tensor(frames):
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


# -- bad files ---------------------------------------------------------------------------------------


def test_corrupt_and_short_clips_are_skipped_with_one_warning_and_counted(folder):
    (folder / "garbage.mp4").write_bytes(os.urandom(2000))  # not a video at all
    write_video(folder / "cut_header.mp4", moving_square(12, 32, 48), fps=8)
    truncate(folder / "cut_header.mp4")  # index at the end: the file no longer opens
    write_faststart(folder / "cut_data.mp4", moving_square(24, 32, 48), fps=8)
    truncate(folder / "cut_data.mp4", 0.85)  # opens and says 24 frames, but the frames are gone
    write_video(folder / "too_short.mp4", moving_square(5, 32, 48), fps=8)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.warns(SkippedFileWarning) as record:
        ds = VideoFolder(folder, frames=9, fps=8.0, base_size=32)
    names = sorted(os.path.basename(str(w.message).split(":")[0].split()[-1]) for w in record)
    assert names == ["broken.png", "cut_header.mp4", "garbage.mp4", "too_short.mp4"]
    assert "too short" in ds.skipped[str(folder / "too_short.mp4")]
    # the file that opens but does not decode is found while reading: None, one warning, counted
    loader = torch.utils.data.DataLoader(ds, batch_sampler=BucketSampler(ds, 1, drop_last=False), collate_fn=collate)
    with pytest.warns(SkippedFileWarning) as record:
        batches = list(loader)
        batches += list(loader)  # a second epoch does not warn again
    assert len(record) == 1 and "cut_data.mp4" in str(record[0].message)
    empty = [b for b in batches if b["video"] is None]
    assert len(empty) == 2 and all(b["path"] == [] for b in empty)
    assert {p for b in batches for p in b["skipped"]} == {str(folder / "cut_data.mp4")}
    assert sum(b["video"] is not None for b in batches) == 2 * 5
    assert len(ds.skipped) == 5
    assert ds.summary() == "5 files used, 5 skipped (4 unreadable, 1 too short)"


def test_skips_in_dataloader_workers_reach_the_batches(folder):
    write_faststart(folder / "cut_data.mp4", moving_square(24, 32, 48), fps=8)
    truncate(folder / "cut_data.mp4", 0.85)
    ds = VideoFolder(folder, frames=9, fps=8.0, base_size=32)
    sampler = BucketSampler(ds, batch_size=1, shuffle=False)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        batches = list(loader)
    for batch in batches:
        ds.skipped.update(batch["skipped"])
    assert list(ds.skipped) == [str(folder / "cut_data.mp4")]
    assert [b["sampler_state"]["position"] for b in batches] == list(range(1, len(ds) + 1))
    assert ds.summary() == "5 files used, 1 skipped (1 unreadable)"


def test_a_folder_of_only_bad_files_is_an_error(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(os.urandom(500))
    with pytest.warns(SkippedFileWarning), pytest.raises(UserError, match="no usable files"):
        VideoFolder(tmp_path, frames=9, base_size=32)


def test_collate_refuses_mixed_shapes():
    items = [{"video": torch.zeros(3, 1, 16, 16), "caption": "a", "path": "a", "index": 0, "bucket": 0,
              "fps": 8.0, "start": 0, "stride": 1, "epoch": 0, "position": None},
             {"video": torch.zeros(3, 1, 16, 32), "caption": "b", "path": "b", "index": 1, "bucket": 1,
              "fps": 8.0, "start": 0, "stride": 1, "epoch": 0, "position": None}]
    with pytest.raises(ValueError, match="BucketSampler"):
        collate(items)
    batch = collate([items[0], None])
    assert batch["video"].shape == (1, 3, 1, 16, 16) and batch["caption"] == ["a"]


# -- the sampler --------------------------------------------------------------------------------------


class Buckets:
    """A stand-in data set: only what BucketSampler reads."""

    def __init__(self, bucket_ids):
        self.bucket_ids = bucket_ids


def plain(batches):
    return [[int(i) for i in b] for b in batches]


def test_sampler_batches_come_from_one_bucket_and_cover_the_epoch():
    ids = [i % 3 for i in range(31)]
    sampler = BucketSampler(Buckets(ids), batch_size=4, seed=1)
    batches = plain(sampler)
    assert all(len({ids[i] for i in b}) == 1 and len(b) == 4 for b in batches)
    assert len(batches) == len(sampler) == 2 + 2 + 2  # buckets of 11, 10, 10 items; remainders dropped
    assert len({i for b in batches for i in b}) == 24
    keep = BucketSampler(Buckets(ids), batch_size=4, seed=1, drop_last=False)
    assert sorted(i for b in keep.batches(0) for i in b) == list(range(31))


def test_sampler_is_deterministic_per_seed_and_epoch():
    ids = [i % 2 for i in range(40)]
    a, b = BucketSampler(Buckets(ids), 4, seed=5), BucketSampler(Buckets(ids), 4, seed=5)
    assert plain(a) == plain(b)  # epoch 0 on both
    assert a.epoch == 1 and plain(a) != plain(BucketSampler(Buckets(ids), 4, seed=5))  # epoch 1 differs
    c = BucketSampler(Buckets(ids), 4, seed=5)
    c.set_epoch(1)
    assert plain(c) == a.batches(1)
    assert plain(BucketSampler(Buckets(ids), 4, shuffle=False)) == [list(range(0, 40, 2))[k:k + 4] for k in range(0, 20, 4)] + [list(range(1, 40, 2))[k:k + 4] for k in range(0, 20, 4)]


def test_sampler_shards_across_ranks_with_equal_counts():
    ids = [i % 3 for i in range(50)]
    shards = [BucketSampler(Buckets(ids), 3, seed=2, rank=r, world_size=3).batches(0) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    flat = [i for s in shards for b in s for i in b]
    assert len(flat) == len(set(flat))
    padded = [BucketSampler(Buckets(ids), 4, rank=r, world_size=4, drop_last=False).batches(0) for r in range(4)]
    assert len({len(s) for s in padded}) == 1
    assert {i for s in padded for b in s for i in b} == set(range(50))


def test_resumed_sampler_continues_with_exactly_the_remaining_batches():
    ids = [i % 4 for i in range(64)]
    full = BucketSampler(Buckets(ids), 2, seed=9)
    full.set_epoch(3)
    expected = plain(full)
    run = BucketSampler(Buckets(ids), 2, seed=9)
    run.set_epoch(3)
    seen = []
    for batch in run:
        seen.append([int(i) for i in batch])
        if len(seen) == 5:
            break
    state = run.state_dict()
    assert (state["epoch"], state["position"]) == (3, 5)
    resumed = BucketSampler(Buckets(ids), 2, seed=9)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # a training loop's set_epoch at the top of the epoch keeps the position
    assert seen + plain(resumed) == expected
    assert (resumed.epoch, resumed.position) == (4, 0)


def test_resume_from_a_batch_sampler_state_through_the_loader(folder):
    ds = VideoFolder(folder, frames=9, fps=8.0, base_size=32)
    sampler = BucketSampler(ds, batch_size=1, seed=4)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    first = [b["path"] for b in loader]
    sampler2 = BucketSampler(ds, batch_size=1, seed=4)
    loader2 = torch.utils.data.DataLoader(ds, batch_sampler=sampler2, collate_fn=collate)
    it = iter(loader2)
    state = [next(it)["sampler_state"] for _ in range(2)][-1]
    assert state == {"epoch": 0, "position": 2}
    sampler3 = BucketSampler(ds, batch_size=1, seed=4)
    sampler3.load_state_dict(state)
    rest = [b["path"] for b in torch.utils.data.DataLoader(ds, batch_sampler=sampler3, collate_fn=collate)]
    assert first[2:] == rest


def test_several_lengths_each_file_takes_the_longest_it_can_fill(folder):
    ds = VideoFolder(folder, frames=[5, 9, 13], fps=8.0, base_size=48)
    length = {s.path.name: ds.buckets[b].frames for s, b in zip(ds.samples, ds.bucket_ids)}
    # red_ball: 27 frames at 24 fps -> 9 at 8 fps; blue_box 12 at 8 fps; tall 10 at 8 fps
    assert length == {"red_ball.mp4": 9, "blue_box.mp4": 9, "tall.mp4": 9, "still_a.png": 1, "still_b.jpg": 1}
    native = VideoFolder(folder, frames=[5, 9, 13], fps=None, base_size=48)
    length = {s.path.name: native.buckets[b].frames for s, b in zip(native.samples, native.bucket_ids)}
    assert length["red_ball.mp4"] == 13 and length["blue_box.mp4"] == 9
    assert native[[s.path.name for s in native.samples].index("red_ball.mp4")]["stride"] == 1
