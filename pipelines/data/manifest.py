"""Finding the files of a data folder and their captions.

A data folder holds videos and/or images, in any sub-folders. Each file's caption comes from, in
order: a manifest (`captions.csv` or `captions.jsonl` in the folder, or one given explicitly) with a
`path` and a `caption` column; a sidecar text file beside it (`clip.mp4` -> `clip.txt`); its file
name (`red_ball-bounces.mp4` -> "red ball bounces"). Manifest paths are relative to the manifest's
folder (or absolute) and may name files outside the data folder: the data set is every media file
under the folder plus every file the manifest names. A path may appear in several rows: each row is
one caption of that file, and training picks one per epoch.

Optional manifest columns `frames`, `fps`, `width`, `height` (all four) describe a file so that it
need not be opened when the data set is built (large data sets: write them once with a probe pass).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import UserError
from pipelines.video_io import ANIMATED_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

MANIFEST_NAMES = ("captions.csv", "captions.jsonl")
MEDIA_EXTENSIONS = tuple(sorted(set(VIDEO_EXTENSIONS + ANIMATED_EXTENSIONS + IMAGE_EXTENSIONS)))
PATH_COLUMNS = ("path", "file", "video", "image", "file_name")
CAPTION_COLUMNS = ("caption", "text", "prompt")
META_COLUMNS = ("frames", "fps", "width", "height")


@dataclass
class Sample:
    """One file of a data set: where it is, its captions (at least one) and, when the manifest
    says, its shape (`meta`: frames, fps, width, height)."""

    path: Path
    captions: list[str]
    source: str  # "manifest", "sidecar" or "name": where the captions came from
    meta: dict | None = field(default=None)


def caption_from_name(path: str | os.PathLike) -> str:
    """'red_ball-bounces.mp4' -> 'red ball bounces'"""
    return " ".join(re.split(r"[\s_\-.]+", Path(path).stem)).strip()


def read_captions(path: str | os.PathLike, *, check_exists: bool = True) -> dict[Path, list[str]]:
    """Read a captions manifest (.csv with a header, or .jsonl with one object a line).

    Returns {absolute file path: [captions in row order]}; rows with an empty caption keep the
    file in the data set and fall back to its sidecar or name. Each row's `frames`, `fps`, `width`
    and `height`, when all present, are returned through `read_manifest`. Missing files are an
    error naming them (before any training starts), unless `check_exists=False`.
    """
    return {p: caps for p, (caps, _) in read_manifest(path, check_exists=check_exists).items()}


def read_manifest(path: str | os.PathLike, *, check_exists: bool = True) -> dict[Path, tuple[list[str], dict | None]]:
    """Like `read_captions`, with each file's shape metadata (or None) beside its captions."""
    manifest = Path(path)
    if not manifest.is_file():
        raise UserError(f"{manifest}: no such captions file")
    suffix = manifest.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv(manifest)
    elif suffix == ".jsonl":
        rows = _read_jsonl(manifest)
    else:
        raise UserError(f"{manifest}: a captions file must be .csv or .jsonl")
    base = manifest.parent.resolve()
    out: dict[Path, tuple[list[str], dict | None]] = {}
    missing: list[str] = []
    for line, row in rows:
        where = f"{manifest}, line {line}"
        name = _pick(row, PATH_COLUMNS)
        if name is None or not str(name).strip():
            raise UserError(f"{where}: no file path; each row needs a 'path' (or {', '.join(PATH_COLUMNS[1:])}) value")
        file = Path(os.path.expanduser(str(name).strip()))
        file = file if file.is_absolute() else base / file
        file = Path(os.path.normpath(file))
        caption = _pick(row, CAPTION_COLUMNS)
        caption = " ".join(str(caption).split()) if caption is not None else ""
        meta = _row_meta(row, where)
        if check_exists and not file.is_file():
            missing.append(f"{name} (line {line})")
        captions, old_meta = out.get(file, ([], None))
        if caption:
            captions.append(caption)
        out[file] = (captions, meta or old_meta)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"{manifest} names {len(missing)} file(s) that do not exist: {shown}; "
                        f"paths are relative to {base}; fix them or remove those rows")
    return out


def _read_csv(manifest: Path) -> list[tuple[int, dict]]:
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            if not any(h in PATH_COLUMNS for h in header) or not any(h in CAPTION_COLUMNS for h in header):
                raise UserError(f"{manifest}: the first line must be a header with a 'path' and a 'caption' "
                                f"column, found {header or 'nothing'}")
            rows = []
            for row in reader:
                clean = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
                if any(v is not None and str(v).strip() for v in clean.values()):
                    rows.append((reader.line_num, clean))
            return rows
    except UnicodeDecodeError as err:
        raise UserError(f"{manifest} is not UTF-8 text ({err.reason}); save it as UTF-8") from err
    except csv.Error as err:
        raise UserError(f"{manifest} is not a valid CSV file ({err})") from err


def _read_jsonl(manifest: Path) -> list[tuple[int, dict]]:
    rows = []
    try:
        with open(manifest, encoding="utf-8") as f:
            for number, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as err:
                    raise UserError(f"{manifest}, line {number}: not valid JSON ({err.msg}); "
                                    'each line must be an object like {"path": "clip.mp4", "caption": "..."}') from err
                if not isinstance(row, dict):
                    raise UserError(f"{manifest}, line {number}: expected a JSON object with 'path' and 'caption'")
                rows.append((number, {str(k).lower(): v for k, v in row.items()}))
    except UnicodeDecodeError as err:
        raise UserError(f"{manifest} is not UTF-8 text ({err.reason}); save it as UTF-8") from err
    return rows


def _pick(row: dict, names: tuple[str, ...]):
    for name in names:
        if row.get(name) is not None:
            return row[name]
    return None


def _row_meta(row: dict, where: str) -> dict | None:
    values = [row.get(k) for k in META_COLUMNS]
    if any(v is None or str(v).strip() == "" for v in values):
        return None
    try:
        frames, fps, width, height = int(float(values[0])), float(values[1]), int(float(values[2])), int(float(values[3]))
    except ValueError as err:
        raise UserError(f"{where}: frames, fps, width and height must be numbers ({err})") from err
    if frames < 1 or fps <= 0 or width < 1 or height < 1:
        raise UserError(f"{where}: frames, fps, width and height must be positive")
    return {"frames": frames, "fps": fps, "width": width, "height": height}


def find_manifest(root: Path) -> Path | None:
    found = [root / name for name in MANIFEST_NAMES if (root / name).is_file()]
    if len(found) > 1:
        raise UserError(f"{root} holds both captions.csv and captions.jsonl; keep one")
    return found[0] if found else None


def scan_folder(root: str | os.PathLike, captions: str | os.PathLike | None = None) -> list[Sample]:
    """Every video and image under `root` (recursively, hidden files skipped) plus every file the
    manifest names, in a stable order, each with its captions.

    `captions` names a manifest explicitly; by default `root/captions.csv` or `root/captions.jsonl`
    is used when present. Raises UserError for a missing or empty folder, a manifest naming missing
    files, or a manifest in a format it cannot read.
    """
    folder = Path(root)
    if not folder.exists():
        raise UserError(f"{folder}: no such data folder")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give a folder of videos and/or images")
    manifest = Path(captions) if captions is not None else find_manifest(folder)
    listed = read_manifest(manifest) if manifest is not None else {}
    files: set[Path] = set(listed)
    for dirpath, dirnames, filenames in os.walk(folder.resolve()):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(MEDIA_EXTENSIONS):
                files.add(Path(os.path.normpath(Path(dirpath) / name)))
    if not files:
        raise UserError(f"{folder} holds no videos or images (looked for {', '.join(MEDIA_EXTENSIONS)}"
                        f"{' and the files named in ' + str(manifest) if manifest else ''})")
    samples = []
    for file in sorted(files):
        caps, meta = listed.get(file, ([], None))
        if caps:
            samples.append(Sample(file, list(caps), "manifest", meta))
            continue
        sidecar = file.with_suffix(".txt")
        text = _read_sidecar(sidecar) if sidecar.is_file() else ""
        if text:
            samples.append(Sample(file, [text], "sidecar", meta))
        else:
            samples.append(Sample(file, [caption_from_name(file)], "name", meta))
    return samples


def _read_sidecar(path: Path) -> str:
    try:
        return " ".join(path.read_text(encoding="utf-8").split())
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason}); save the caption as UTF-8") from err
