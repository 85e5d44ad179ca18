"""Test helper: write webdataset shards in video2dataset's layout with webdataset and pyarrow
directly (not with cpd), as a corpus downloaded by another tool arrives.

``00000.tar`` holds ``{key}.mp4``, ``{key}.txt``, ``{key}.json``; ``00000.parquet`` lists every
row given to the shard with its status; ``00000_stats.json`` counts them. Keys are the shard
number (5 digits) followed by the position in the shard (4 digits).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds


def write_v2d_shards(
    out: Path,
    samples: Sequence[dict],
    shard_size: int,
    *,
    sidecars: bool = True,
) -> list[Path]:
    """Write ``samples`` (dicts with ``video`` bytes or None for a failed download, ``caption``,
    optional ``txt=False`` / ``json=False`` to leave those members out of the tar) into shards; returns the tars."""
    out.mkdir(parents=True, exist_ok=True)
    tars = []
    for shard, start in enumerate(range(0, len(samples), shard_size)):
        chunk = samples[start : start + shard_size]
        tar = out / f"{shard:05d}.tar"
        rows = []
        with wds.TarWriter(str(tar)) as sink:
            for pos, sample in enumerate(chunk):
                key = f"{shard:05d}{pos:04d}"
                meta = {"key": key, "caption": sample["caption"], "url": f"https://x/{key}.mp4"}
                if sample.get("video") is None:
                    rows.append({**meta, "status": "failed_to_download", "error_message": "404"})
                    continue
                record = {"__key__": key, "mp4": sample["video"]}
                if sample.get("json", True):
                    record["json"] = json.dumps(meta).encode()
                if sample.get("txt", True):
                    record["txt"] = sample["caption"].encode()
                sink.write(record)
                rows.append({**meta, "status": "success", "error_message": None})
        tars.append(tar)
        if sidecars:
            pq.write_table(pa.Table.from_pylist(rows), out / f"{shard:05d}.parquet")
            ok = sum(r["status"] == "success" for r in rows)
            stats = {"count": len(rows), "successes": ok, "failed_to_download": len(rows) - ok}
            (out / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
    return tars
