"""Dataset versions: a snapshot of crops + labels + splits whose content hash is its id.

`build_manifest(wh)` resolves, in DuckDB over crops, images, detections and the label tables,
one row per usable face crop (schema `DATASET_MANIFEST` less its version column), sorted by
crop_id. It only reads. `snapshot_dataset_version(wh)` stores it as a version (idempotent);
`read_manifest` and `list_versions` read them back.

Which crops
- Crops flagged too_small or too_blurry are left out unless `include_flagged=True`.
- Labels are per image; a crop takes its image's labels only when the crop is that image's
  face. DISFA frames and FER-2013 images hold one face by contract (ONE_FACE_SOURCES): each
  gets exactly one crop, the one with the largest face_px (then the smallest crop_id), and the
  others are dropped (a second "face" on such an image is a false detection or a background
  person). Other sources (scraped) keep every crop, but an image's labels (crop_id null) go to
  a crop only when it is the image's only face: a group photo's folder label cannot say which
  face it means, so those crops are kept unlabeled. A label that names its face (crop_id: pseudo
  and human labels) goes to that face; on a one-face source, to the image's one face.
- A face a curator excluded (`exclusions`, e.g. FiftyOne's `reject` tag) is left out. Faces are counted per crop set (one detector and
  weights, one set of crop parameters), so re-detecting with another detector does not turn
  one face into "two"; each crop set's crops are kept. Quality flags are applied after this
  choice: a frame whose largest face is blurry is left out, not replaced by a smaller face.
- The flags are not applied to FER-2013 (UNFLAGGED_SOURCES): its images are 48 px faces by
  definition, and the 224 px crop of one is an upscale whose Laplacian variance is always
  under the blur threshold (demo data: 166 of 166 flagged), so the flag measures the
  dataset's resolution, not a defect of one image.

Which label (per crop, per task, and for AUs per AU)
- The highest label_source wins: human > gold > pseudo > weak (LABEL_SOURCES order).
- Pseudo labels count only when written by the task's production model (model_promotions):
  an older model's pseudo labels stay stored but no longer reach a version.
- An unverified pseudo label (`verified` false: its cut's precision was measured on another
  source's faces, labeling.curation.pseudo.source_cuts) never reaches a version; curators still
  see it (FiftyOne, the review queue). Rows from before the flag (null) count, as they did.
- Within one source: the most confident (emotion_labels.confidence, au_labels.probability;
  a label without one ranks after those with one), then the annotator's name, then the value
  (emotion name; for an AU, absent before present). The tables have no time of labeling, so
  "latest" cannot be told; this order is total, so the result never depends on row order.
  It is the order the FiftyOne view shows: one definition, warehouse/precedence.py.
- AUs are resolved one by one, so a human correction of AU12 overrides only AU12 and keeps
  the gold labels of the other AUs; au_source is the weakest source among the row's AUs.
  Only DISFA's 12 AUs (AU_COLUMNS) are kept; label sources and emotions outside
  LABEL_SOURCES / EMOTIONS are ignored.

Splits
- images.split when set (FER-2013: Usage Training/PublicTest/PrivateTest -> train/val/test).
- Otherwise by the group (DISFA: subject, scraped: batch, FER-2013 without Usage: the image):
  the first 64 bits of sha256("<group>") as a fraction of 2**64 fall in 70/15/15 train/val/
  test, so a subject or a batch never straddles splits and keeps its split as data grow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from warehouse.precedence import (
    au_order_sql,
    counts_sql,
    emotion_order_sql,
    rank_source_sql,
    source_rank_sql,
    verified_sql,
)
from warehouse.schemas import AU_COLUMNS, DATASET_MANIFEST, DISFA_AUS, EMOTIONS, LABEL_SOURCES
from warehouse.store import Warehouse, quote_literal

ONE_FACE_SOURCES: tuple[str, ...] = ("disfa", "fer2013")
UNFLAGGED_SOURCES: tuple[str, ...] = ("fer2013",)  # quality flags do not apply (docstring)
SPLIT_FRACTIONS: tuple[tuple[str, float], ...] = (("train", 0.70), ("val", 0.15), ("test", 0.15))
MANIFEST_SCHEMA = DATASET_MANIFEST.remove(DATASET_MANIFEST.get_field_index("version"))
VERSION_PREFIX = "v-"
_VERSION_RE = re.compile(r"^v-[0-9a-f]{16}$")


class UnknownDatasetVersion(LookupError):
    """A dataset version that is not in `dataset_versions`."""


@dataclass(frozen=True)
class DatasetVersion:
    version: str
    n_crops: int
    n_au_labeled: int
    n_emotion_labeled: int
    counts: dict[str, Any] = field(repr=False)
    created: bool  # False when this version was stored already (nothing was written)
    parent: str | None = None
    created_at: dt.datetime | None = None


# ---- the manifest ---------------------------------------------------------------------------
def _sql_list(values: tuple) -> str:
    return ", ".join(quote_literal(v) if isinstance(v, str) else str(int(v)) for v in values)


def _manifest_sql(include_flagged: bool) -> str:
    one_face = _sql_list(ONE_FACE_SOURCES)
    sources = _sql_list(LABEL_SOURCES)
    au_pivot = ",\n".join(f"any_value(present) FILTER (WHERE au = {n}) AS au{n}" for n in DISFA_AUS)
    au_cols = ", ".join(f"a.au{n}" for n in DISFA_AUS)
    return f"""
    WITH faces AS (
        SELECT c.crop_id, c.image_id, i.source, c.media_path, c.gray_media_path, c.face_px,
               (c.too_small OR c.too_blurry) AND i.source NOT IN ({_sql_list(UNFLAGGED_SOURCES)}) AS flagged, i.split AS image_split,
               i.source || ':' || CASE
                   WHEN i.source = 'disfa' THEN coalesce(i.subject, i.video_id, i.image_id)
                   WHEN i.source = 'fer2013' THEN i.image_id
                   WHEN i.source = 'scraped' THEN coalesce(i.batch, i.image_id)
                   ELSE coalesce(i.subject, i.batch, i.image_id) END AS "group",
               concat_ws('|', coalesce(d.detector, ''), coalesce(d.weights_sha256, ''),
                         c.margin, c.size, c.gray_size) AS crop_set
        FROM crops c
        JOIN images i ON i.image_id = c.image_id
        LEFT JOIN detections d ON d.detection_id = c.detection_id
    ),
    counted AS (
        SELECT *,
            count(*) OVER (PARTITION BY image_id, crop_set) AS faces_in_set,
            row_number() OVER (PARTITION BY image_id ORDER BY face_px DESC, crop_id) AS face_rank
        FROM faces
    ),
    kept AS (
        SELECT *, (source IN ({one_face}) OR faces_in_set = 1) AS takes_labels
        FROM counted
        WHERE (source NOT IN ({one_face}) OR face_rank = 1) AND ({str(include_flagged).lower()} OR NOT flagged)
          AND crop_id NOT IN (SELECT crop_id FROM exclusions WHERE excluded)
    ),
    -- A label reaches a face when it names that face (crop_id), or names none and the face takes
    -- its image's labels; on a one-face source every label of the image is the face's.
    emo AS (
        SELECT crop_id, emotion, label_source FROM (
            SELECT k.crop_id, e.*, row_number() OVER (PARTITION BY k.crop_id ORDER BY {emotion_order_sql("e.")}) AS pick
            FROM kept k JOIN emotion_labels e ON e.image_id = k.image_id AND (
                e.crop_id = k.crop_id OR (e.crop_id IS NULL AND k.takes_labels)
                OR (e.crop_id IS NOT NULL AND k.source IN ({one_face})))
            WHERE e.label_source IN ({sources}) AND e.emotion IN ({_sql_list(EMOTIONS)})
              AND {counts_sql("emotion", "e.")}
              AND {verified_sql("e.")}
        ) WHERE pick = 1
    ),
    au_best AS (
        SELECT crop_id, au, present, src FROM (
            SELECT k.crop_id, a.*, {source_rank_sql("a.label_source")} AS src,
                row_number() OVER (PARTITION BY k.crop_id, a.au ORDER BY {au_order_sql("a.")}) AS pick
            FROM kept k JOIN au_labels a ON a.image_id = k.image_id AND (
                a.crop_id = k.crop_id OR (a.crop_id IS NULL AND k.takes_labels)
                OR (a.crop_id IS NOT NULL AND k.source IN ({one_face})))
            WHERE a.label_source IN ({sources}) AND a.au IN ({_sql_list(DISFA_AUS)})
              AND {counts_sql("au", "a.")}
              AND {verified_sql("a.")}
        ) WHERE pick = 1
    ),
    au_wide AS (
        SELECT crop_id, {au_pivot}, max(src) AS weakest FROM au_best GROUP BY crop_id
    )
    SELECT k.crop_id, k.image_id, k.source, k."group", k.image_split AS split, k.media_path,
           k.gray_media_path, e.emotion, e.label_source AS emotion_source, {au_cols},
           {rank_source_sql("a.weakest")} AS au_source
    FROM kept k
    LEFT JOIN emo e ON e.crop_id = k.crop_id
    LEFT JOIN au_wide a ON a.crop_id = k.crop_id
    ORDER BY k.crop_id
    """


def group_split(group: str) -> str:
    """The split of a group without a stored split: a fixed function of its name."""
    u = int.from_bytes(hashlib.sha256(group.encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for name, fraction in SPLIT_FRACTIONS:
        edge += fraction
        if u < edge:
            return name
    return SPLIT_FRACTIONS[-1][0]


def build_manifest(wh: Warehouse, include_flagged: bool = False) -> pa.Table:
    """One row per usable face crop with its resolved labels and split (MANIFEST_SCHEMA),
    sorted by crop_id. Reads only; the rules are in the module docstring."""
    with wh.connect() as con:
        rows = con.sql(_manifest_sql(bool(include_flagged))).to_arrow_table()
    split = rows.column("split")
    if split.null_count:
        groups = rows.column("group").to_pylist()
        filled = [s if s is not None else group_split(g) for s, g in zip(split.to_pylist(), groups)]
        rows = rows.set_column(rows.schema.get_field_index("split"), "split", pa.array(filled, pa.string()))
    return rows.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)


def version_id(manifest: pa.Table) -> str:
    """ "v-" + 16 hex digits of the sha256 of the manifest's content: column names and types,
    then each column's values as JSON, rows in crop_id order. Independent of Parquet bytes,
    chunking and row order; a `version` column, if present, is not content."""
    if "version" in manifest.column_names:
        manifest = manifest.drop_columns(["version"])
    if sorted(manifest.column_names) != sorted(MANIFEST_SCHEMA.names):
        raise ValueError(f"not a manifest: columns {manifest.column_names}")
    manifest = manifest.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    manifest = manifest.take(pc.sort_indices(manifest, [("crop_id", "ascending")]))
    digest = hashlib.sha256()
    digest.update(json.dumps([[f.name, str(f.type)] for f in MANIFEST_SCHEMA]).encode())
    for name in MANIFEST_SCHEMA.names:
        digest.update(b"\n")
        digest.update(json.dumps(manifest.column(name).to_pylist(), separators=(",", ":")).encode())
    return VERSION_PREFIX + digest.hexdigest()[:16]


def manifest_counts(manifest: pa.Table) -> dict[str, Any]:
    """What a version holds: crops and labeled rows per source and split, label sources,
    emotions and AUs present per split, groups per source."""
    con = duckdb.connect()
    con.register("m", manifest)
    any_au = " OR ".join(f"{c} IS NOT NULL" for c in AU_COLUMNS)

    def nested(query: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for *keys, n in con.execute(query).fetchall():
            node = out
            for k in keys[:-1]:
                node = node.setdefault(str(k), {})
            node[str(keys[-1])] = int(n)
        return out

    counts = {
        "crops": nested("SELECT source, split, count(*) FROM m GROUP BY ALL ORDER BY ALL"),
        "emotion_labeled": nested(
            "SELECT source, split, count(*) FROM m WHERE emotion IS NOT NULL GROUP BY ALL ORDER BY ALL"
        ),
        "au_labeled": nested(
            f"SELECT source, split, count(*) FROM m WHERE {any_au} GROUP BY ALL ORDER BY ALL"
        ),
        "emotion_source": nested(
            "SELECT emotion_source, count(*) FROM m WHERE emotion_source IS NOT NULL GROUP BY ALL ORDER BY ALL"
        ),
        "au_source": nested(
            "SELECT au_source, count(*) FROM m WHERE au_source IS NOT NULL GROUP BY ALL ORDER BY ALL"
        ),
        "emotion": nested(
            "SELECT emotion, split, count(*) FROM m WHERE emotion IS NOT NULL GROUP BY ALL ORDER BY ALL"
        ),
        "au_present": nested(
            " UNION ALL ".join(
                f"SELECT '{c}', split, count(*) FROM m WHERE {c} GROUP BY ALL" for c in AU_COLUMNS
            )
        ),
        "groups": nested('SELECT source, count(DISTINCT "group") FROM m GROUP BY ALL ORDER BY ALL'),
    }
    con.close()
    return counts


def _labeled(manifest: pa.Table) -> tuple[int, int]:
    au = pc.is_valid(manifest.column("au_source")) if manifest.num_rows else pa.array([], pa.bool_())
    emo = pc.is_valid(manifest.column("emotion"))
    return int(pc.sum(au).as_py() or 0), int(pc.sum(emo).as_py() or 0)


# ---- versions -------------------------------------------------------------------------------
def _version_row(wh: Warehouse, version: str) -> dict[str, Any] | None:
    with wh.connect() as con:
        rows = con.sql("SELECT * FROM dataset_versions WHERE version = $v", params={"v": version})
        found = rows.to_arrow_table().to_pylist()
    return found[0] if found else None


def _unknown(wh: Warehouse, version: str) -> UnknownDatasetVersion:
    known = list_versions(wh).column("version").to_pylist()
    shown = ", ".join(known[-5:]) or "none"
    return UnknownDatasetVersion(
        f"unknown dataset version {version!r} (stored: {len(known)}; latest: {shown})"
    )


def _as_version(row: dict[str, Any], created: bool) -> DatasetVersion:
    return DatasetVersion(
        version=row["version"],
        n_crops=row["n_crops"],
        n_au_labeled=row["n_au_labeled"],
        n_emotion_labeled=row["n_emotion_labeled"],
        counts=json.loads(row["counts"]),
        created=created,
        parent=row["parent"],
        created_at=row["created_at"],
    )


def snapshot_dataset_version(
    wh: Warehouse, parent: str | None = None, include_flagged: bool = False
) -> DatasetVersion:
    """Build the manifest and store it as a version, unless that content is stored already
    (then nothing is written and `created` is False, whatever `parent` says).

    The manifest rows go first, the dataset_versions row last: a listed version is complete,
    and a run killed in between is completed by the next one (appends skip stored keys)."""
    if parent is not None and _version_row(wh, parent) is None:
        raise _unknown(wh, parent)
    manifest = build_manifest(wh, include_flagged=include_flagged)
    version = version_id(manifest)
    stored = _version_row(wh, version)
    if stored is not None:
        return _as_version(stored, created=False)
    n_au, n_emotion = _labeled(manifest)
    row = {
        "version": version,
        "created_at": dt.datetime.now(dt.UTC),
        "parent": parent,
        "n_crops": manifest.num_rows,
        "n_au_labeled": n_au,
        "n_emotion_labeled": n_emotion,
        "counts": json.dumps(manifest_counts(manifest), sort_keys=True),
    }
    versioned = manifest.add_column(0, "version", pa.array([version] * manifest.num_rows, pa.string()))
    wh.append("dataset_manifest", versioned)
    added = wh.append("dataset_versions", pa.Table.from_pylist([row]))
    if not added:  # another process stored the same content meanwhile: its row stands
        return _as_version(_version_row(wh, version) or row, created=False)
    return _as_version(row, created=True)


def read_manifest(wh: Warehouse, version: str) -> pa.Table:
    """The stored manifest of `version` (schema DATASET_MANIFEST, sorted by crop_id);
    UnknownDatasetVersion when no such version is stored."""
    stored = _version_row(wh, version) if _VERSION_RE.match(version or "") else None
    if stored is None:
        raise _unknown(wh, version)
    with wh.connect() as con:
        rows = con.sql(
            "SELECT * FROM dataset_manifest WHERE version = $v ORDER BY crop_id", params={"v": version}
        ).to_arrow_table()
    rows = rows.select(DATASET_MANIFEST.names).cast(DATASET_MANIFEST)
    if rows.num_rows != stored["n_crops"]:
        raise RuntimeError(
            f"dataset version {version}: {rows.num_rows} manifest rows stored, {stored['n_crops']} expected"
        )
    return rows


def list_versions(wh: Warehouse) -> pa.Table:
    """All stored versions (dataset_versions rows), oldest first."""
    return wh.sql("SELECT * FROM dataset_versions ORDER BY created_at, version")
