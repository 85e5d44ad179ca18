"""video2dataset's webdataset layout for ``cpd prepare --shards``: tars, parquet, stats.

A run's job list is cut into shards of ``shard_size`` consecutive jobs: shard ``s`` holds
jobs ``[s * shard_size, (s + 1) * shard_size)``. Each shard is three files in OUT::

    00000.tar          {key}.json, {key}.mp4, {key}.txt of each prepared video
    00000.parquet      one row per job of the shard, prepared or failed
    00000_stats.json   counts, times and status_dict, as video2dataset writes them

Keys are video2dataset's: the shard number (5 digits) followed by the position in the shard
(4 digits, more when a shard holds more than 10000), ``000010002`` being shard 1, position 2.
Statuses use its vocabulary: ``success``, ``failed_to_download`` (the source could not be
read: a missing file), ``failed_to_subsample`` (it could not be cut and re-encoded).

Unlike video2dataset, failed jobs are left out of the tar (they have no video; the parquet
keeps them), so a reader of the tars sees only usable samples.

Writes are atomic per shard: the three files are written as ``NAME.partial`` and renamed,
parquet and tar first and the stats file last. The stats file is the completion mark (as in
video2dataset, whose resume treats shards with a stats file as done): a shard without it is
redone, and a tar under its final name is always whole. Tar members get a fixed mtime, owner
and mode, so the same samples give the same bytes on any machine.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpd.errors import DataError

__all__ = [
    "FAILED_TO_DOWNLOAD",
    "FAILED_TO_SUBSAMPLE",
    "SUCCESS",
    "TMP_DIR",
    "ShardPlan",
    "ShardSample",
    "begin_shard",
    "complete_stats",
    "read_failures",
    "shard_paths",
    "write_shard",
]

SUCCESS = "success"
FAILED_TO_DOWNLOAD = "failed_to_download"
FAILED_TO_SUBSAMPLE = "failed_to_subsample"

SHARD_DIGITS = 5  # video2dataset's default oom_shard_count
POSITION_DIGITS = 4  # as in video2dataset's README: "the last 4 are the index in the shard"
TAR_MTIME = 0  # a fixed time: equal samples give equal tar bytes, wherever they were written
TMP_DIR = "_tmp"  # the videos of shards in progress, one folder per shard

# the columns of the parquet files, also the fields of each sample's .json
RECORD_FIELDS = ("key", "caption", "url", "status", "error_message", "id", "split", "captions",
                 "duration", "width", "height", "fps", "frames", "source_duration")  # fmt: skip


def parquet_schema() -> Any:
    """The ``pyarrow`` schema of the shard parquet files (one row per job)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("caption", pa.string()),
            ("url", pa.string()),
            ("status", pa.string()),
            ("error_message", pa.string()),
            ("id", pa.string()),
            ("split", pa.string()),
            ("captions", pa.list_(pa.string())),
            ("duration", pa.float64()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("fps", pa.float64()),
            ("frames", pa.int64()),
            ("source_duration", pa.float64()),
        ]
    )


@dataclass(frozen=True)
class ShardPlan:
    """How ``num_jobs`` jobs fall into shards of ``shard_size``: a pure function of the two."""

    num_jobs: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise DataError(f"shard size must be >= 1, got {self.shard_size}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_jobs // self.shard_size)

    @property
    def shard_digits(self) -> int:
        return max(SHARD_DIGITS, len(str(max(self.num_shards - 1, 0))))

    @property
    def position_digits(self) -> int:
        # video2dataset's ceil(log10(shard size)), never fewer than its README's 4
        return max(POSITION_DIGITS, len(str(self.shard_size - 1)))

    def name(self, shard: int) -> str:
        """File name stem of shard ``shard``: ``00003``."""
        return f"{shard:0{self.shard_digits}d}"

    def shard_of(self, number: int) -> int:
        """The shard of job ``number`` (its position in the job list)."""
        return number // self.shard_size

    def jobs_of(self, shard: int) -> range:
        """Job numbers of shard ``shard``."""
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_jobs))

    def key(self, number: int) -> str:
        """video2dataset's key of job ``number``: shard digits, then position digits."""
        shard, position = divmod(number, self.shard_size)
        return f"{self.name(shard)}{position:0{self.position_digits}d}"

    def shards_of_part(self, index: int, count: int) -> list[int]:
        """Shards written by part ``index`` of ``count``: every ``count``-th, from ``index``.

        Round robin rather than contiguous ranges, as video2dataset's SLURM sampler does:
        slow stretches of the job list (long videos, many failures) are shared by all parts.
        """
        return list(range(index, self.num_shards, count))


@dataclass(frozen=True)
class ShardSample:
    """One prepared video of a shard: its key, the mp4 written by a worker, its texts."""

    key: str
    video: Path
    caption: str
    record: dict[str, Any]


def shard_paths(out: Path, name: str) -> dict[str, Path]:
    """The final files of shard ``name`` in ``out`` and its temporary video folder."""
    return {
        "tar": out / f"{name}.tar",
        "parquet": out / f"{name}.parquet",
        "stats": out / f"{name}_stats.json",
        "tmp": out / TMP_DIR / name,
    }


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def complete_stats(out: Path, name: str) -> dict[str, Any] | None:
    """The stats of shard ``name`` when it is complete (all three files there), else ``None``."""
    paths = shard_paths(out, name)
    if not (paths["stats"].is_file() and paths["tar"].is_file() and paths["parquet"].is_file()):
        return None
    try:
        stats = json.loads(paths["stats"].read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # a stats file is written whole and renamed; an unreadable one is redone
    return stats if isinstance(stats, dict) else None


def begin_shard(out: Path, name: str) -> Path:
    """Make shard ``name`` incomplete and clean; returns the folder for its videos.

    The stats file goes first, so that a shard being redone never looks complete, even
    while an older tar of it is still in place.
    """
    paths = shard_paths(out, name)
    paths["stats"].unlink(missing_ok=True)
    for key in ("tar", "parquet", "stats"):
        _partial(paths[key]).unlink(missing_ok=True)
    shutil.rmtree(paths["tmp"], ignore_errors=True)
    paths["tmp"].mkdir(parents=True)
    return paths["tmp"]


def _replace_synced(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest`` once its bytes are on disk (a crash leaves old or new)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def write_shard(
    out: Path,
    name: str,
    samples: Sequence[ShardSample],
    records: Sequence[dict[str, Any]],
    stats: dict[str, Any],
) -> int:
    """Write shard ``name``: its tar (``samples``), parquet (``records``) and stats; returns
    the tar's size in bytes. The temporary video folder of the shard is removed."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from webdataset import TarWriter

    paths = shard_paths(out, name)
    tmp = {key: _partial(paths[key]) for key in ("tar", "parquet", "stats")}
    table = pa.Table.from_pylist([{f: r.get(f) for f in RECORD_FIELDS} for r in records],
                                 schema=parquet_schema())  # fmt: skip
    pq.write_table(table, tmp["parquet"])
    # encoder=False: every member is given as bytes, nothing is guessed from extensions
    with open(tmp["tar"], "wb") as stream, TarWriter(stream, encoder=False, mtime=TAR_MTIME) as tar:
        for sample in samples:
            tar.write({
                "__key__": sample.key,
                "mp4": sample.video.read_bytes(),
                "txt": sample.caption.encode("utf-8"),
                "json": json.dumps(sample.record, indent=4).encode("utf-8"),
            })  # fmt: skip
    tmp["stats"].write_text(json.dumps(stats, indent=4) + "\n", encoding="utf-8")
    _replace_synced(tmp["parquet"], paths["parquet"])
    _replace_synced(tmp["tar"], paths["tar"])
    _replace_synced(tmp["stats"], paths["stats"])  # last: the shard is now complete
    shutil.rmtree(paths["tmp"], ignore_errors=True)
    return paths["tar"].stat().st_size


def read_failures(out: Path, name: str) -> list[dict[str, Any]]:
    """The failed rows (``key``, ``id``, ``url``, ``status``, ``error_message``) of a complete
    shard's parquet."""
    import pyarrow.parquet as pq

    path = shard_paths(out, name)["parquet"]
    try:
        rows = pq.read_table(path, columns=["key", "id", "url", "status", "error_message"])
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise DataError(f"{path}: unreadable parquet of a complete shard: {exc}") from exc
    return [r for r in rows.to_pylist() if r["status"] != SUCCESS]
