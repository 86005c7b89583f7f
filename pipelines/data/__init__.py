"""Training data: folders of videos and images, buckets, a resumable bucket sampler, a latent cache.

    from pipelines.data import VideoFolder, BucketSampler, collate
    ds = VideoFolder("clips/", frames=17, fps=8.0, max_tokens=1280, base_size=256)
    sampler = BucketSampler(ds, batch_size=4, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    for batch in loader:        # batch["video"]: (B, 3, T, H, W) in [-1, 1], one shape per batch
        ds.skipped.update(batch["skipped"])        # files that failed in a worker, for the summary
        checkpoint_state = batch["sampler_state"]  # exact resume position after this batch

See docs/data.md for the folder layout, captions, buckets and the latent cache.
"""

from pipelines.data.buckets import DEFAULT_ASPECTS, Bucket, check_buckets, choose_bucket, make_buckets
from pipelines.data.cache import LatentCache, LatentCacheWriter, read_index
from pipelines.data.folder import SkippedFileWarning, VideoFolder, collate
from pipelines.data.manifest import Sample, caption_from_name, read_captions, read_manifest, scan_folder
from pipelines.data.sampler import BucketSampler, SampleKey

__all__ = [
    "DEFAULT_ASPECTS",
    "Bucket",
    "BucketSampler",
    "LatentCache",
    "LatentCacheWriter",
    "Sample",
    "SampleKey",
    "SkippedFileWarning",
    "VideoFolder",
    "caption_from_name",
    "check_buckets",
    "choose_bucket",
    "collate",
    "make_buckets",
    "read_captions",
    "read_index",
    "read_manifest",
    "scan_folder",
]
