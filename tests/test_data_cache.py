"""The latent cache on disk: shards and index, windows at random latent offsets, batches, safe writing."""

import json

import pytest
import torch

from pipelines.data import BucketSampler, LatentCache, LatentCacheWriter, SkippedFileWarning, collate
from pipelines.errors import UserError


def text(lengths, dims=(6, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    states = [torch.randn(n, d, generator=g) for n, d in zip(lengths, dims)]
    masks = [torch.arange(n) < n - 1 for n in lengths]  # the last token is padding
    return states, masks


@pytest.fixture
def clips():
    g = torch.Generator().manual_seed(0)
    return {
        "long.mp4": torch.randn(4, 5, 2, 3, generator=g),
        "mid.mp4": torch.randn(4, 3, 2, 3, generator=g),
        "also_long.mp4": torch.randn(4, 6, 2, 3, generator=g),
        "still.png": torch.randn(4, 1, 2, 2, generator=g),
    }


@pytest.fixture
def cache(tmp_path, clips):
    out = tmp_path / "cache"
    with LatentCacheWriter(out, info={"vae": "tiny"}, shard_size=2) as writer:
        for k, (name, latents) in enumerate(clips.items()):
            states, masks = text((3 + k, 2 + k), seed=k)
            writer.add(latents, states, masks, path=name, caption=f"caption {k}", image=name.endswith(".png"))
        writer.set_null_text(*text((2, 2), seed=99))
        writer.skip("bad.mp4", "unreadable: broken")
    return out


def test_writer_shards_tensors_and_indexes_them(cache, clips):
    index = json.loads((cache / "index.json").read_text())
    assert index["vae"] == "tiny" and index["skipped"] == {"bad.mp4": "unreadable: broken"}
    assert sorted(p.name for p in cache.iterdir()) == ["index.json", "shard-00000.safetensors", "shard-00001.safetensors",
                                                        "shard-00002.safetensors"]
    assert [e["latent_shape"] for e in index["entries"]] == [list(t.shape) for t in clips.values()]
    assert not list(cache.parent.glob(".cache.partial-*"))


def test_windows_are_taken_at_random_latent_offsets(cache, clips):
    ds = LatentCache(cache, latent_frames=3, seed=1)
    assert len(ds) == 4
    by_name = {e["path"]: i for i, e in enumerate(ds.entries)}
    offsets = set()
    for epoch in range(16):
        ds.set_epoch(epoch)
        item = ds[by_name["long.mp4"]]
        assert item["latents"].shape == (4, 3, 2, 3)
        o = item["offset"]
        assert torch.equal(item["latents"], clips["long.mp4"][:, o : o + 3])
        assert ds[by_name["long.mp4"]]["offset"] == o  # fixed by seed, epoch and index
        offsets.add(o)
    assert offsets == {0, 1, 2}
    assert ds[by_name["mid.mp4"]]["offset"] == 0
    assert ds[by_name["still.png"]]["latents"].shape == (4, 1, 2, 2)
    first = LatentCache(cache, latent_frames=3, random_offset=False)
    assert torch.equal(first[by_name["long.mp4"]]["latents"], clips["long.mp4"][:, :3])


def test_text_and_null_text_come_back(cache):
    ds = LatentCache(cache)
    item = ds[1]
    assert [s.shape for s in item["text_states"]] == [(4, 6), (3, 4)]
    assert item["text_masks"][0].dtype == torch.bool and item["text_masks"][0].tolist() == [True] * 3 + [False]
    assert item["caption"] == "caption 1" and item["path"] == "mid.mp4"
    states, masks = ds.null_text()
    assert torch.equal(states[0], text((2, 2), seed=99)[0][0])
    assert ds[0]["latents"].shape == (4, 5, 2, 3)  # no window: whole clips


def test_clips_shorter_than_the_window_are_skipped_and_counted(cache):
    with pytest.warns(SkippedFileWarning, match="1 clip"):
        ds = LatentCache(cache, latent_frames=4)
    assert len(ds) == 3 and "too short" in ds.skipped["mid.mp4"]
    assert ds.summary() == "3 clips used, 2 skipped (1 too short, 1 unreadable)"


def test_cache_batches_have_one_shape_and_padded_text(cache):
    ds = LatentCache(cache, latent_frames=3)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=BucketSampler(ds, 3, drop_last=False), collate_fn=collate)
    sizes = []
    for batch in loader:
        b = len(batch["path"])
        sizes.append(b)
        assert batch["latents"].shape[0] == b and batch["latents"].shape[1:] == ds.buckets[batch["bucket"]]
        longest = max(ds.entries[i]["text_lengths"][0] for i in batch["index"])
        assert batch["text_states"][0].shape == (b, longest, 6) and batch["text_masks"][0].shape == (b, longest)
        for row, i in enumerate(batch["index"]):
            n = ds.entries[i]["text_lengths"][0]
            assert batch["text_masks"][0][row].tolist() == [True] * (n - 1) + [False] * (longest - n + 1)
    assert sorted(sizes) == [1, 3]


def test_a_damaged_shard_loses_its_clips_not_the_run(cache):
    (cache / "shard-00001.safetensors").write_bytes(b"\x00" * 16)
    ds = LatentCache(cache, latent_frames=3)
    with pytest.warns(SkippedFileWarning):
        items = [ds[i] for i in range(len(ds))]
    assert [item is None for item in items] == [False, False, True, True]
    batch = collate(items)
    assert len(batch["path"]) == 2 and set(batch["skipped"]) == {"also_long.mp4", "still.png"}


def test_writer_never_clobbers(tmp_path, cache):
    with pytest.raises(UserError, match="--overwrite"):
        LatentCacheWriter(cache)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.jpg").write_bytes(b"mine")
    with pytest.raises(UserError, match="holds no latent cache"):
        LatentCacheWriter(other, overwrite=True)
    with pytest.raises(RuntimeError):
        with LatentCacheWriter(cache, overwrite=True) as writer:
            writer.add(torch.zeros(4, 1, 2, 2), *text((2, 2)), path="x.png", caption="x", image=True)
            raise RuntimeError("stopped half way")
    assert len(LatentCache(cache)) == 4  # the old cache is untouched
    assert not list(tmp_path.glob(".cache.partial-*"))
    with LatentCacheWriter(cache, overwrite=True) as writer:
        writer.add(torch.zeros(4, 1, 2, 2), *text((2, 2)), path="x.png", caption="x", image=True)
    assert len(LatentCache(cache)) == 1


def test_reading_something_that_is_not_a_cache_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no such latent cache"):
        LatentCache(tmp_path / "nothing")
    with pytest.raises(UserError, match="cache-latents"):
        LatentCache(tmp_path)
    (tmp_path / "index.json").write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="make the cache again"):
        LatentCache(tmp_path)
