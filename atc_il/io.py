"""Parquet I/O with atomic writes, completion markers and day/hour partitioning."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from atc_il.errors import ReadError
from atc_il.schemas import to_table

MARKER = "_SUCCESS"


def atomic_write_table(table: pa.Table, path: str | Path, compression: str = "zstd", **write_options: Any) -> Path:
    """Write a parquet file atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression=compression, **write_options)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(text: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON document, or a one-line ReadError naming the file (missing, unreadable, corrupt)."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ReadError(path, f"no such {what}") from None
    except (ValueError, OSError) as exc:
        raise ReadError(path, f"corrupt {what} ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None


def write_frame(df: pd.DataFrame, schema: pa.Schema, path: str | Path, what: str = "table") -> Path:
    return atomic_write_table(to_table(df, schema, what), path)


def partition_key(times: pd.Series, by_hour: bool = False) -> pd.Series:
    """``day=YYYY-MM-DD[/hour=HH]`` per row; formats only the distinct periods (fast on millions of rows)."""
    fmt = "day=%Y-%m-%d/hour=%H" if by_hour else "day=%Y-%m-%d"
    period = times.dt.floor("h" if by_hour else "D")
    codes, uniq = pd.factorize(period, sort=True)
    return pd.Series(np.asarray(pd.DatetimeIndex(uniq).strftime(fmt), dtype=object)[codes], index=times.index)


def write_partitioned(df: pd.DataFrame, schema: pa.Schema, root: str | Path, *, by_hour: bool = False,
                      part_name: str = "part-0", what: str = "table") -> list[Path]:
    """Write ``df`` under ``root/day=YYYY-MM-DD[/hour=HH]/<part_name>.parquet`` atomically.

    Each partition folder gets a completion marker listing the files written into it.
    Returns the files written.
    """
    root = Path(root)
    written: list[Path] = []
    if df.empty:
        return written
    keys = partition_key(df["time"], by_hour)
    for key, part in df.groupby(keys, sort=True):
        folder = root / key
        path = atomic_write_table(to_table(part, schema, what), folder / f"{part_name}.parquet")
        written.append(path)
        mark_complete(folder, [path.name])
    return written


def mark_complete(folder: str | Path, files: Iterable[str]) -> None:
    folder = Path(folder)
    marker = folder / MARKER
    names: set[str] = set()
    if marker.exists():
        names = set(json.loads(marker.read_text() or "[]"))
    names.update(files)
    atomic_write_text(json.dumps(sorted(names)), marker)


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).exists()


def parquet_files(root: str | Path) -> list[Path]:
    """All parquet files under ``root`` (a file or a folder), sorted, temporary files excluded."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.exists():
        raise ReadError(root, "no such file or folder")
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith(".tmp-"))


def read_table(root: str | Path, schema: pa.Schema, columns: list[str] | None = None,
               filter: Any = None) -> pd.DataFrame:
    """Read a canonical (possibly partitioned) parquet data set into pandas with the contract types."""
    files = parquet_files(root)
    if not files:
        return schema.empty_table().to_pandas() if columns is None else schema.empty_table().select(columns).to_pandas()
    try:
        ds = pads.dataset([str(f) for f in files], schema=schema, format="parquet")
        table = ds.to_table(columns=columns, filter=filter)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReadError(root, f"not a readable {schema.metadata.get(b'contract', b'').decode()} parquet data set: {exc}") from None
    return table.to_pandas()


def reset_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
