"""`BucketSampler`: batches of indices, each batch from one bucket, reproducible and resumable.

An epoch's batches depend only on (seed, epoch) and the data set's bucket of each index: within
each bucket the indices are shuffled and cut into batches, then the batches of all buckets are
shuffled together, and with several processes every rank takes every world_size-th batch (the
same count on every rank). The sampler remembers how many batches of the current epoch it has
handed out; `state_dict()` / `load_state_dict()` save and restore that position, so a resumed run
sees exactly the batches it had not trained on yet.

The indices it yields are `SampleKey`s: ints that also carry the epoch and the batch position, so
the data set seeds its random choices (clip offsets) by epoch even inside DataLoader workers, and
`collate` can report `sampler_state`, the exact position after each batch. With DataLoader workers
the sampler runs ahead of training by the prefetched batches, so save the `sampler_state` of the
last batch trained on rather than `state_dict()`; without workers the two agree.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import torch

log = logging.getLogger(__name__)


class SampleKey(int):
    """A data set index that also says which epoch and which batch position it was drawn for."""

    def __new__(cls, index: int, epoch: int = 0, position: int | None = None):
        key = super().__new__(cls, index)
        key.epoch = epoch
        key.position = position
        return key

    def __reduce__(self):
        return (SampleKey, (int(self), self.epoch, self.position))

    def __repr__(self) -> str:
        return f"SampleKey({int(self)}, epoch={self.epoch}, position={self.position})"


class BucketSampler(torch.utils.data.Sampler):
    """Yields lists of indices (a batch each) whose items all share one bucket.

    Args:
        dataset: anything with `bucket_ids` (one bucket number per index), e.g. `VideoFolder`
            or `LatentCache`.
        batch_size: items per batch.
        shuffle: shuffle within buckets and the order of batches (by seed and epoch); otherwise
            buckets in order, indices in order.
        seed: the shuffle seed; the same on every rank.
        drop_last: drop each bucket's last incomplete batch (and, with several ranks, the batches
            that would not give every rank the same count). Otherwise keep them, and repeat the
            first batches to give every rank the same count.
        rank, world_size: this process's share of the batches.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch size must be 1 or more, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} process(es)")
        if seed < 0:
            raise ValueError(f"seed must be 0 or more, got {seed}")
        self.bucket_ids = [int(b) for b in dataset.bucket_ids]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, list[list[int]]] | None = None
        if not self.batches(0):
            raise ValueError(f"no complete batch of {batch_size}: the largest bucket holds "
                             f"{max(np.bincount(self.bucket_ids)) if self.bucket_ids else 0} item(s) "
                             f"for {world_size} process(es); lower the batch size or pass drop_last=False")

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches (plain indices) for `epoch`, in order."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        groups: dict[int, list[int]] = defaultdict(list)
        for index, bucket in enumerate(self.bucket_ids):
            groups[bucket].append(index)
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[list[int]] = []
        for bucket in sorted(groups):
            indices = groups[bucket]
            if self.shuffle:
                indices = [indices[i] for i in rng.permutation(len(indices))]
            for i in range(0, len(indices), self.batch_size):
                chunk = indices[i : i + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.world_size > 1 and batches:
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % self.world_size]
            else:
                short = -len(batches) % self.world_size
                batches = batches + [batches[i % len(batches)] for i in range(short)]
            batches = batches[self.rank :: self.world_size]
        self._cache = (epoch, batches)
        return batches

    def __len__(self) -> int:
        """Batches per epoch on this rank (a whole epoch, wherever the position is)."""
        return len(self.batches(self.epoch))

    def __iter__(self):
        epoch = self.epoch
        batches = self.batches(epoch)
        while self.epoch == epoch and self.position < len(batches):
            position = self.position
            self.position += 1
            yield [SampleKey(i, epoch, position) for i in batches[position]]
        if self.epoch == epoch:  # the epoch ran out: the next iteration starts the next one
            self.epoch, self.position = epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Move to `epoch` from its start; setting the current epoch again keeps the position (so a
        loop that calls set_epoch after `load_state_dict` resumes where the checkpoint was)."""
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict:
        """The position: the epoch and how many of its batches were handed out."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "batch_size": self.batch_size,
                "world_size": self.world_size, "num_samples": len(self.bucket_ids)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position (`state_dict()`, or a batch's `sampler_state`)."""
        for name in ("seed", "batch_size", "world_size", "num_samples"):
            mine = self.state_dict()[name]
            if name in state and state[name] != mine:
                log.warning("resuming with %s %s (the checkpoint had %s): the batches will differ from the "
                            "run that was saved", name, mine, state[name])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
