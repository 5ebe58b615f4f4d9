"""What to score: an input (image folder, Parquet, list file) -> a deterministic listing of items.

The listing is the contract between the engines: both score the same items, in the same
shards, and read each item's bytes through `read_bytes`. Items are small references (a path,
or a Parquet file + row group + row), never image bytes, so a listing of millions fits in memory.

A folder lists every file in it, whatever its suffix: a PDF, a text file or a TIFF gets a row
with the error code `/classify` would answer for it, never a silent skip. Only hidden files
(names starting with "."), such as `.DS_Store`, are left out, and the log says how many.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PARQUET_SUFFIXES = {".parquet", ".pq"}
IMAGE_COLUMNS = ("image", "bytes", "image_bytes", "content", "data")  # auto-detected, in this order
PATH_COLUMNS = ("path", "image_path", "file", "filename", "uri")


@dataclass(frozen=True)
class Item:
    """One image to score."""

    index: int  # position in the listing; shard = index // shard_size
    id: str  # id column, else the path (relative to the input folder), else "<file>#<row>"
    path: str  # image file to read; for Parquet bytes, the Parquet file holding them
    row_group: int = -1  # Parquet bytes: row group of the image (-1: `path` is an image file)
    row: int = -1  # Parquet bytes: row inside the row group
    column: str = ""  # Parquet bytes: the column holding them


def list_inputs(source: Path | str, *, image_column: str | None = None, id_column: str | None = None) -> list[Item]:
    """Every image of `source`, in a deterministic order (sorted paths; Parquet row order).

    Raises ValueError naming what was wrong and what is accepted.
    """
    source = Path(source)
    if source.is_dir():
        parquets = sorted(p for p in source.rglob("*") if p.suffix.lower() in PARQUET_SUFFIXES and p.is_file())
        if parquets:
            return _number(_parquet_refs(parquets, image_column, id_column))
        files = _folder_files(source)
        if not files:
            raise ValueError(f"{source} holds no file to score (an image folder, searched recursively, or "
                             "Parquet files)")
        return _number((p.relative_to(source).as_posix(), str(p), -1, -1, "") for p in files)
    if source.suffix.lower() in PARQUET_SUFFIXES and source.is_file():
        return _number(_parquet_refs([source], image_column, id_column))
    if source.is_file():
        return _number(_list_file(source))
    raise ValueError(f"--input {source} does not exist; give an image folder, a Parquet file or folder, "
                     "or a text file listing one image path per line")


def _folder_files(root: Path) -> list[Path]:
    """Every regular file under `root` (sorted), hidden files and folders left out with a log line."""
    files, hidden = [], 0
    for p in root.rglob("*"):
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            hidden += p.is_file()
        elif p.is_file():
            files.append(p)
    if hidden:
        log.info("%s: %d hidden files (names starting with '.') left out", root, hidden)
    return sorted(files)


def _number(refs) -> list[Item]:
    return [Item(i, *ref) for i, ref in enumerate(refs)]


def _list_file(path: Path):
    """One image path per line; blank lines and '#' comments skipped; relative paths from the file's folder."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            yield line, str(p if p.is_absolute() else path.parent / p), -1, -1, ""


def _pick(names: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, file: Path) -> str | None:
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"{file} has no column {wanted!r} ({what}); columns: {list(names)}")
        return wanted
    return next((c for c in candidates if c in names), None)


def _parquet_refs(files: list[Path], image_column: str | None, id_column: str | None):
    """(id, path, row_group, row, column) per row; reads only the id / path columns, never image bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in files:
        pf = pq.ParquetFile(file)
        schema = pf.schema_arrow
        names = schema.names
        col = _pick(names, image_column, IMAGE_COLUMNS + PATH_COLUMNS, "images", file)
        if col is None:
            raise ValueError(f"{file}: no image column found (tried {IMAGE_COLUMNS + PATH_COLUMNS}); "
                             f"columns: {names}; pass --image-column")
        kind = schema.field(col).type
        is_bytes = pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_struct(kind)
        id_col = _pick(names, id_column, ("id",), "ids", file)
        for rg in range(pf.num_row_groups):
            cols = [c for c in {id_col, None if is_bytes else col} if c]
            table = pf.read_row_group(rg, columns=cols) if cols else None
            ids = table.column(id_col).to_pylist() if id_col else None
            paths = None if is_bytes else table.column(col).to_pylist()
            for r in range(pf.metadata.row_group(rg).num_rows):
                if is_bytes:
                    yield (str(ids[r]) if ids else f"{file.name}#{rg}:{r}"), str(file), rg, r, col
                else:
                    p = Path(paths[r])
                    yield (str(ids[r]) if ids else paths[r]), str(p if p.is_absolute() else file.parent / p), -1, -1, ""


def read_bytes(items: Sequence[Item]) -> list[bytes | Exception]:
    """Each item's encoded image, or the exception that stopped reading it (a missing file, ...).

    Parquet rows are read one row group at a time: keep row groups to a few hundred images.
    """
    out: list[bytes | Exception] = [b""] * len(items)
    groups: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    for k, it in enumerate(items):
        if it.row_group < 0:
            try:
                out[k] = Path(it.path).read_bytes()
            except OSError as e:
                out[k] = e
        else:
            groups[(it.path, it.row_group, it.column)].append(k)
    for (path, rg, col), ks in groups.items():
        try:
            values = _row_group_column(path, rg, col)
            for k in ks:
                v = values[items[k].row]
                out[k] = v.get("bytes") if isinstance(v, dict) else v  # Hugging Face image struct {bytes, path}
        except Exception as e:  # noqa: BLE001 - one unreadable row group fails its items, not the run
            for k in ks:
                out[k] = e
    return [b if b is not None else b"" for b in out]  # a null cell is an empty image, as the service sees it


def _row_group_column(path: str, rg: int, col: str) -> list:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(rg, columns=[col]).column(col).to_pylist()


def fingerprint(items: Sequence[Item]) -> str:
    """sha256 of the listing (ids, row positions): a rerun must list the same items to resume.

    Paths are left out, so a collection moved to another mount still resumes.
    """
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.id}\0{it.row_group}\0{it.row}\n".encode())
    return h.hexdigest()


def shards(items: Sequence[Item], shard_size: int) -> dict[int, list[Item]]:
    """Consecutive runs of `shard_size` items, keyed by shard number."""
    out: dict[int, list[Item]] = defaultdict(list)
    for it in items:
        out[it.index // shard_size].append(it)
    return dict(out)
