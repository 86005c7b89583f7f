"""Video and image I/O: round trips, frame selection, stills, atomic writes, overwrite protection."""

import os

import av
import numpy as np
import pytest
from PIL import Image

from conftest import moving_square
from pipelines.errors import UserError
from pipelines.video_io import (
    VideoWriter,
    check_writable,
    contact_sheet,
    frames_to_tensor,
    probe,
    read_image,
    read_video,
    resize_and_crop,
    select_indices,
    sidecar_path,
    tensor_to_frames,
    write_contact_sheet,
    write_video,
)


@pytest.mark.parametrize("size", [(32, 48), (33, 47)])
def test_mp4_round_trip_keeps_frames_and_size(tmp_path, size):
    clip = moving_square(9, *size)
    path = write_video(tmp_path / "clip.mp4", clip, fps=12)
    video = read_video(path)
    assert video.frames.shape == clip.shape
    assert video.fps == pytest.approx(12)
    # H.264 is lossy, but a clean encode stays close to the source
    assert np.abs(video.frames.astype(int) - clip).mean() < 6
    info = probe(path)
    assert (info["frames"], info["width"], info["height"], info["codec"]) == (9, size[1], size[0], "h264")


def test_png_folder_round_trip_is_lossless(tmp_path):
    clip = moving_square(5)
    out = write_video(f"{tmp_path}/frames/", clip, fps=8)
    assert out.is_dir() and len(list(out.glob("frame_*.png"))) == 5
    assert np.array_equal(read_video(out).frames, clip)


@pytest.mark.parametrize("ext", [".gif", ".webp"])
def test_gif_and_webp_are_readable(tmp_path, ext):
    clip = moving_square(6)
    path = write_video(tmp_path / f"clip{ext}", clip, fps=10)
    video = read_video(path)
    assert video.frames.shape == clip.shape
    assert video.fps == pytest.approx(10, rel=0.05)
    assert np.abs(video.frames.astype(int) - clip).mean() < 20  # palette / lossy compression


def test_frame_selection_by_count_stride_and_fps(tmp_path):
    clip = moving_square(24)
    clip[:, 0, 0] = np.arange(24)[:, None] * 10  # frame index stamped in a corner pixel
    path = write_video(f"{tmp_path}/f/", clip, fps=24)
    assert read_video(path, num_frames=5).num_frames == 5
    assert np.array_equal(read_video(path, stride=4).frames[:, 0, 0, 0], np.arange(0, 24, 4) * 10)
    video = read_video(path, fps=8, num_frames=4, start=2)
    assert video.fps == pytest.approx(8)
    assert np.array_equal(video.frames[:, 0, 0, 0], np.array([2, 5, 8, 11]) * 10)
    indices, fps = select_indices(100, 30.0, fps=12.0, num_frames=5)
    assert indices == [0, 2, 5, 8, 10] and fps == pytest.approx(12)


def test_asking_for_too_many_frames_says_how_many_there_are(tmp_path):
    path = write_video(f"{tmp_path}/f/", moving_square(5), fps=8)
    with pytest.raises(UserError, match="has 5 frames"):
        read_video(path, num_frames=9)


def test_stills_are_converted_to_rgb_uint8(tmp_path):
    gray = np.linspace(0, 255, 12 * 16).reshape(12, 16).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    img = read_image(tmp_path / "gray.png")
    assert img.shape == (12, 16, 3) and img.dtype == np.uint8 and np.array_equal(img[..., 0], gray)

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    img = read_image(tmp_path / "rgba.png")
    assert tuple(img[0, 0]) == (200, 0, 0) and tuple(img[7, 7]) == (255, 255, 255)

    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    img = read_image(tmp_path / "deep.png")
    assert img.dtype == np.uint8 and img[7, 7, 0] == round(63000 / 65535 * 255)

    Image.fromarray(moving_square(1)[0]).convert("P").save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png").shape == (32, 48, 3)


def test_tensor_conversion_round_trips_and_resize_covers_then_crops():
    clip = moving_square(3, 32, 48)
    x = frames_to_tensor(clip)
    assert x.shape == (1, 3, 3, 32, 48) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(tensor_to_frames(x), clip)
    out = resize_and_crop(clip, 16, 16)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8


def test_interrupted_write_leaves_no_file_under_the_final_name(tmp_path):
    target = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(target, fps=8) as writer:
            writer.write(moving_square(4))
            raise RuntimeError("simulated crash in the middle of generation")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too


def test_output_appears_only_when_complete(tmp_path):
    target = tmp_path / "clip.mp4"
    writer = VideoWriter(target, fps=8)
    writer.write(moving_square(4))
    assert not target.exists()
    writer.close()
    assert read_video(target).num_frames == 4


def test_existing_output_is_not_overwritten_without_permission(tmp_path):
    target = tmp_path / "clip.gif"
    write_video(target, moving_square(3), fps=8)
    before = target.read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        write_video(target, moving_square(5), fps=8)
    assert target.read_bytes() == before
    write_video(target, moving_square(5), fps=8, overwrite=True)
    assert read_video(target).num_frames == 5
    frames_dir = write_video(f"{tmp_path}/frames/", moving_square(3), fps=8)
    with pytest.raises(UserError, match="--overwrite"):
        write_video(frames_dir, moving_square(3), fps=8)


def test_a_file_that_appears_while_writing_is_kept(tmp_path):
    target = tmp_path / "clip.mp4"
    writer = VideoWriter(target, fps=8)
    writer.write(moving_square(4))
    target.write_bytes(b"another program's file")
    with pytest.raises(UserError, match="appeared while it was being written; it was kept"):
        writer.close()
    assert target.read_bytes() == b"another program's file"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary left behind
    with VideoWriter(target, fps=8, overwrite=True) as writer:  # with --overwrite the new clip wins
        writer.write(moving_square(4))
        target.write_bytes(b"again")
    assert read_video(target).num_frames == 4


def test_frames_that_appear_in_the_output_folder_while_writing_are_kept(tmp_path):
    folder = tmp_path / "frames"
    writer = VideoWriter(f"{folder}/", fps=8)
    writer.write(moving_square(3))
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "frame_00000.png")
    with pytest.raises(UserError, match="received PNG frames while this clip was being written"):
        writer.close()
    assert [p.name for p in folder.iterdir()] == ["frame_00000.png"] and read_image(folder / "frame_00000.png").shape == (8, 8, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]  # no temporary left behind


def test_an_existing_sidecar_is_not_overwritten_without_permission(tmp_path):
    sidecar_path(tmp_path / "clip.mp4").write_text("{}")
    with pytest.raises(UserError, match=r"clip\.mp4\.json already exists; pass --overwrite"):
        write_video(tmp_path / "clip.mp4", moving_square(3), fps=8, sidecar={"seed": 1})
    assert not (tmp_path / "clip.mp4").exists()
    write_video(tmp_path / "clip.mp4", moving_square(3), fps=8, sidecar={"seed": 1}, overwrite=True)
    assert '"seed": 1' in sidecar_path(tmp_path / "clip.mp4").read_text()


def test_a_folder_of_frames_of_mixed_sizes_names_the_odd_frame(tmp_path):
    folder = write_video(f"{tmp_path}/frames/", moving_square(3), fps=8)
    Image.new("RGB", (20, 10)).save(folder / "frame_00001.png")
    with pytest.raises(UserError, match=r"frame_00001\.png is 20x10 but frame_00000\.png is 48x32"):
        read_video(folder)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, which takes no new files")
def test_a_folder_that_takes_no_new_files_is_refused_before_any_work():
    with pytest.raises(UserError, match="cannot write /proc/clip.mp4: the folder /proc refuses new files"):
        check_writable("/proc/clip.mp4")


def test_unknown_output_extension_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"\.avi.*use \.mp4"):
        check_writable(tmp_path / "clip.avi")


def test_sidecar_and_contact_sheet(tmp_path):
    clip = moving_square(9)
    out = write_video(tmp_path / "clip.mp4", clip, fps=8, sidecar={"prompt": "a square", "seed": 3})
    assert sidecar_path(out) == tmp_path / "clip.mp4.json"
    assert '"seed": 3' in sidecar_path(out).read_text()
    sheet = contact_sheet(clip, max_frames=8, columns=4)
    assert sheet.shape == (2 * 32 + 2, 4 * 48 + 6, 3)
    assert np.array_equal(sheet[:32, :48], clip[0]) and np.array_equal(sheet[34:, -48:], clip[-1])
    write_contact_sheet(tmp_path / "sheet.png", clip)
    assert read_image(tmp_path / "sheet.png").shape == sheet.shape


def _zero_frame_mp4(path):
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    container.close()


def _corrupt_mp4(path, tmp_path):
    rng = np.random.default_rng(0)
    good = write_video(tmp_path / "good.mp4", rng.integers(0, 255, (40, 64, 64, 3), dtype=np.uint8), fps=8)
    data = bytearray(good.read_bytes())
    data[len(data) // 10 : len(data) // 10 * 4] = rng.integers(0, 255, len(data) // 10 * 3, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["missing", "not_video", "truncated", "corrupt", "zero_frames"])
def test_broken_videos_raise_a_user_error_naming_the_file(tmp_path, case):
    path = tmp_path / f"{case}.mp4"
    if case == "not_video":
        path.write_text("this is text, not a video")
    elif case == "truncated":
        good = write_video(tmp_path / "good.mp4", moving_square(9), fps=8)
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "corrupt":
        _corrupt_mp4(path, tmp_path)
    elif case == "zero_frames":
        _zero_frame_mp4(path)
    with pytest.raises(UserError, match=f"{case}.mp4"):
        read_video(path)


def test_outputs_get_the_usual_file_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        clip = write_video(tmp_path / "clip.mp4", moving_square(3), fps=8, sidecar={"seed": 1})
        frames = write_video(f"{tmp_path}/frames/", moving_square(3), fps=8)
    finally:
        os.umask(umask)
    assert clip.stat().st_mode & 0o777 == 0o644
    assert sidecar_path(clip).stat().st_mode & 0o777 == 0o644
    assert frames.stat().st_mode & 0o777 == 0o755
    assert (frames / "frame_00000.png").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("ext", [".gif", ".webp"])
def test_animations_keep_repeated_frames_and_their_rate(tmp_path, ext):
    # GIF and WebP encoders fold identical neighbours into one longer frame; reading expands them.
    still = np.repeat(moving_square(1), 9, axis=0)
    video = read_video(write_video(tmp_path / f"still{ext}", still, fps=8), num_frames=9)
    assert video.frames.shape == still.shape and video.fps == pytest.approx(8)
    clip = moving_square(4)
    held = np.concatenate([clip[:1], clip[:1], clip[:1], clip[1:]])  # first frame shown 3 times
    video = read_video(write_video(tmp_path / f"held{ext}", held, fps=10))
    assert video.num_frames == 6
    assert np.abs(video.frames[2].astype(int) - clip[0]).mean() < 10
    assert np.abs(video.frames[3].astype(int) - clip[1]).mean() < 10
