"""Video-caption manifests on disk -> :class:`CaptionRecord` lists.

Formats (``format``; by default the file's content and suffix decide, see :func:`detect_format`):

* ``"instagram"``: the official Instagram-300k caption JSON ``{video_id: {"subset":
  "training"|"validation", "caption": "..."}}`` with videos at
  ``<video_root>/trimmed_resize_{video_id}.mp4`` (:func:`read_instagram_json`);
* ``"jsonl"``: JSON Lines, one row object per line (:func:`read_caption_jsonl`);
* ``"json"``: a JSON list of row objects (:func:`read_caption_json`);
* ``"csv"`` / ``"tsv"``: a header row naming the columns, then one row per line, comma- or
  tab-separated (:func:`read_caption_csv`);
* ``"parquet"``: a Parquet table, read with pyarrow (:func:`read_caption_parquet`); binary
  columns (video bytes) are not read.

Columns of the row formats: ``video_key`` (default ``"video"``) names the column that holds the
video's path relative to the data root, or is a template with braces over the row's columns
(``"{videoid}.mp4"``, ``"{page_dir}/{videoid}.mp4"``; names inside braces are column names as
they are, a format spec such as ``{idx:05d}`` applies to the value); ``caption_key`` (default
``"caption"``) the caption; ``id_key`` (default ``"id"``, optional per row, unique where given;
a key other than the default must name a column of the file) the video id, else the video path
without its suffix; ``split`` the optional split. Any other column is kept in
``CaptionRecord.meta``. A column that the keys need and the file lacks is one error naming it
and listing the columns present. Rows with a ``status`` column whose value is not
``"success"`` (video2dataset's record of a download that wrote no video) are left out and
counted in :class:`ManifestReport`, not treated as errors.

Bad rows: by default every reader checks the whole file and raises one
:class:`~cpd.errors.DataError` listing all the problems (file, 1-based line, Parquet row, JSON
list item or JSON key, what is wrong), so a manifest is fixed in one pass. With
``bad_rows="skip"`` a row with problems is left out instead and recorded as a :class:`BadRow`
in the :class:`ManifestReport` (and, through :func:`read_caption_manifest`'s ``bad_rows_file``,
written as JSON lines); problems of the whole file (unreadable, a missing column, JSON that does
not parse) are still errors.

Indices: ``CaptionRecord.index`` is the record's position (0..N-1, file order) among the rows
kept (valid, written, and of the ``split`` asked for). It is therefore stable for a given
manifest file and split, which is what the memory bank needs (bank row ``index`` belongs to
that pair for the whole run), but the same video has different indices under different split
filters.

Layout (each module imports only those above it):

* :mod:`~cpd.data.manifests.records`: :class:`CaptionRecord`, :class:`BadRow`,
  :class:`ManifestReport`, :class:`Problems`, :func:`write_bad_rows`, split names
  (:func:`normalize_split`) and :func:`resolve_video_path`;
* :mod:`~cpd.data.manifests.files`: strict file reading (bytes, UTF-8 lines, CSV rows, JSON
  without repeated keys), shared with :mod:`cpd.data.actions`;
* :mod:`~cpd.data.manifests.rows`: columns and keys, the state of one read, rows -> records;
* :mod:`~cpd.data.manifests.formats`: the per-format readers (JSON Lines, JSON list, CSV/TSV,
  Parquet, Instagram JSON);
* :mod:`~cpd.data.manifests.detect`: format detection (:func:`detect_format`) and
  :func:`read_caption_manifest`.
"""

from __future__ import annotations

from cpd.data.manifests.detect import FORMATS, detect_format, read_caption_manifest
from cpd.data.manifests.files import decode_lines as decode_lines
from cpd.data.manifests.files import load_json_object as load_json_object
from cpd.data.manifests.files import read_bytes as read_bytes
from cpd.data.manifests.files import read_csv_rows as read_csv_rows
from cpd.data.manifests.formats import INSTAGRAM_FILE_PATTERN as INSTAGRAM_FILE_PATTERN
from cpd.data.manifests.formats import (
    read_caption_csv,
    read_caption_json,
    read_caption_jsonl,
    read_caption_parquet,
    read_instagram_json,
)
from cpd.data.manifests.records import STATUS_KEY as STATUS_KEY
from cpd.data.manifests.records import STATUS_WRITTEN as STATUS_WRITTEN
from cpd.data.manifests.records import (
    BadRow,
    CaptionRecord,
    ManifestReport,
    Problems,
    normalize_split,
    resolve_video_path,
    write_bad_rows,
)
from cpd.data.manifests.records import BadRowsPolicy as BadRowsPolicy

# The ``X as X`` imports are re-exported outside ``__all__``, as before the split: helpers
# that cpd.data.actions and cpd.data.prepare use, and the status/policy names.
__all__ = [
    "FORMATS",
    "BadRow",
    "CaptionRecord",
    "ManifestReport",
    "Problems",
    "detect_format",
    "normalize_split",
    "read_caption_csv",
    "read_caption_json",
    "read_caption_jsonl",
    "read_caption_manifest",
    "read_caption_parquet",
    "read_instagram_json",
    "resolve_video_path",
    "write_bad_rows",
]
