"""The warehouse as a FiftyOne dataset, for curators to browse, filter and tag in the App.

`sync_fiftyone(wh)` keeps one persistent dataset (default "ferlab") in step with the
warehouse: one sample per row of `images`, keyed by image_id.

    filepath      absolute path of the stored media file
    metadata      fo.ImageMetadata(width, height)
    image_id, source, subject, video_id, split, batch, frame_index   as in `images`
    ground_truth  fo.Classification: the image's best emotion label, human > gold > pseudo
                  > weak (then the most confident, then the annotator's name), with
                  label_source, annotator and n_labels (how many labels the image has)
    aus           fo.Classifications: the AUs present ("AU12", ...) by each AU's best label
                  (same order of sources), with au, intensity, label_source, annotator;
                  confidence is the model's probability for model labels
    detections    fo.Detections: the `detections` rows, boxes as FiftyOne's relative
                  [x, y, w, h] clipped to the image, confidence = score, detector,
                  weights_sha256, detection_id
    face_crops    fo.Detections: one per `crops` row, for `dataset.to_patches("face_crops")`.
                  The box is the square the crop was cut from (the detection's box grown by
                  the crop's margin, before the eye-levelling turn, clipped to the image);
                  attributes crop_path / gray_path (absolute paths of the 224 px and 48 px
                  files), crop_id, detection_id, size, gray_size, margin, angle, face_px,
                  blur, brightness, too_small, too_blurry
    face_emotions fo.Detections: one per face (`crops` row), on the face's detection box:
                  label = the face's emotion by the same precedence (None when it has none),
                  confidence, label_source, annotator, threshold of that label; crop_id;
                  excluded (a curator's exclusion holds), tags `reject` / `relabel` when an
                  exclusion with that reason holds; while the face waits in `review_queue`:
                  review_priority, review_reasons (every reason it waits for) and review_detail
                  (each reason, its queue's task and its detail, e.g. "weak_disagrees (emotion):
                  weak happy 0.10, model sad 0.80");
                  the production models' view of the face (labeling.curation.model_view), where
                  they predicted it: p_<label> (every emotion's and AU's probability: p_happy,
                  p_AU12), model_emotion / model_emotion_p / model_emotion_call (the top class
                  and whether the model calls it at its pseudo-label cut: present | unsure),
                  aus_present / aus_unsure / aus_absent (the AUs by the model's call, with
                  their FACS names: "AU12 lip corner puller"), emotion_model / au_model;
                  ferlab_label / ferlab_tags: what ferlab synced
                  (do not edit: they tell a curator's edit from the synced value). Curators
                  edit a face's emotion here (its label) and tag a face `reject` / `relabel`;
                  labeling.fiftyone.corrections brings both back to the warehouse.
    predictions   fo.Classifications: the production models' pseudo labels of each face, the
                  emotions and the AUs present (label "happy" / "AU12", confidence = the
                  model's probability, threshold, present, kind emotion|au, model, crop_id)
    ferlab_tags   (sample) the sample tags `reject` / `relabel` the last pull saw
    warehouse_hash  a digest of all of the above, to find what changed

The saved view `review_queue` shows the faces waiting in `review_queue` as patches, highest
priority first (`dataset.load_saved_view("review_queue")`), and `review_queue: <reason>` those
waiting for one reason (`review_view_name(reason)`).

Crops are a patches field, not a second dataset: in FiftyOne a per-object view is
`to_patches(field)`, which gives one patch per crop with its quality attributes in the
sidebar while staying joined to its image (its ground truth, its other detections, the
sample's tags) and needs no second dataset to keep in sync. The exact 224 px file a model
sees is named in crop_path.

Re-syncing is idempotent: new images are added, images whose warehouse rows changed are
rewritten in place (sample ids, tags and fields curators added survive), samples of images no
longer in the warehouse are removed. The fields above belong to the sync, except a face whose
label or tags a curator changed and nobody pulled yet (they differ from ferlab_label /
ferlab_tags): that face keeps the curator's label, tags and ferlab_* values, so a re-sync
never erases an edit; after `pull_corrections` the edit is a human label in the warehouse and
comes back from there. All writes are batched, `SYNC_BATCH` samples at a time (`add_samples`,
one `set_values` per field keyed by sample id); unchanged samples cost nothing but a digest.
What each field holds is built by labeling.fiftyone.docs; the App is labeling.fiftyone.app.

**One database per data root.** FiftyOne runs its database (mongod) as a service that every
FiftyOne process of the user shares: a process attaches to whichever service runs, whatever
folder it serves, and ignores its own `database_dir`. Two data roots open at once (one's App, the
other's sync) then wrote into one database, and the second root's sync replaced the first's
dataset. `import_fiftyone` therefore opens the database itself, before FiftyOne connects: it
attaches only to a FiftyOne database service over this process's folder (FIFTYONE_DATABASE_DIR;
the CLI's default is <data root>/fiftyone, ferlab.demo.prepare_dagster_home), else starts one
there (its own mongod, on its own port), and hands FiftyOne that port. Own services rather than
dataset names tied to a root: a root's database then lives in the root (it moves, is backed up
and is deleted with it), its App shows only its own datasets, and `--dataset` names stay the
user's. Processes of one root share its service (the App, a Dagster run, `review pull`); it stops
with its last client, as FiftyOne's does. A database folder some other process holds (a mongod
that is not such a service) is named in one line, with its pid from mongod.lock.
Guards where one database still serves several roots (FIFTYONE_DATABASE_DIR or
FIFTYONE_DATABASE_URI set to one place, as in the test suite): a dataset records its data root
(`dataset.info["ferlab_sync"]["warehouse"]`) and sync, pull and the App refuse a dataset of
another root that still exists (one whose root is gone, moved or renamed, is adopted); and a
database folder <root>/fiftyone of another data root is refused before anything starts there.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labeling.curation.settings import REVIEW_REASONS
from labeling.fiftyone.docs import (
    CURATOR_TAGS,
    DOCS,
    FORMAT,
    SCALARS,
    WarehouseImage,
    documents,
    read_warehouse,
    view_fields,
)
from warehouse.errors import ConfigError
from warehouse.schemas import DISFA_AUS, EMOTIONS, SOURCES
from warehouse.store import Warehouse

logger = logging.getLogger(__name__)

DEFAULT_NAME = "ferlab"
# Samples written per batch (new ones added, changed ones rewritten): what a batch's documents cost in memory.
SYNC_BATCH = 10_000
REVIEW_VIEW = "review_queue"  # the saved view of the faces waiting for a curator
_MARK = "ferlab_sync"  # key in dataset.info that says a dataset is this module's
DATABASE_FOLDER = "fiftyone"  # <data root>/fiftyone: a root's own FiftyOne database (the CLI's default)
# FiftyOne's variable: the port of the mongod a process (and the processes it starts) use
PORT_VAR = "FIFTYONE_PRIVATE_DATABASE_PORT"
_SERVICE_ARGS = ["--51-service", "db", "--multi"]  # how FiftyOne's database service is started
_START_TIMEOUT = 60.0  # seconds for a new mongod to listen (FiftyOne's own limit)


@dataclass(frozen=True)
class SyncReport:
    added: int
    updated: int
    removed: int
    total: int  # samples in the dataset afterwards

    def __str__(self) -> str:
        return f"added {self.added}, updated {self.updated}, removed {self.removed}; {self.total} samples"


def import_fiftyone(home: str | Path | None = None):
    """Import FiftyOne (usage tracking off unless the environment says otherwise), connected to
    this process's own database: the FiftyOne database service over its `database_dir`, attached
    or started here (module docstring). With `home` (the data root being worked on), a database
    folder that is another data root's is refused first.

    Raises ConfigError when the folder is another root's, when another process holds it, or when
    FiftyOne is already connected in this process to a database over another folder."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo

    if home is not None:
        _check_database_folder(fo.config.database_dir, home)
    _open_database(fo)
    return fo


# ---- the database: one service per folder ------------------------------------------------------------
_database: str | None = None  # the database this process's FiftyOne uses, once opened and checked
_service = None  # this process's hold on its database service: kept until the process exits


def _check_database_folder(database_dir: str, home: str | Path) -> None:
    """Refuse a database folder <other root>/fiftyone of another data root (an exported
    FIFTYONE_DATABASE_DIR left pointing at it), before anything starts there."""
    folder = Path(database_dir).expanduser().resolve()
    owner, here = folder.parent, Path(home).expanduser().resolve()
    if folder.name == DATABASE_FOLDER and owner != here and (owner / "tables").is_dir():
        raise ConfigError(
            f"FiftyOne's database {folder} belongs to data root {owner}, not {here}: unset "
            f"FIFTYONE_DATABASE_DIR (ferlab then uses {here / DATABASE_FOLDER}) or point it at this root's"
        )


def _open_database(fo) -> None:
    """Connect FiftyOne to the database service over fo.config.database_dir, once per process
    (a server the user runs, FIFTYONE_DATABASE_URI, is used as it is)."""
    global _database, _service
    if _database is not None:
        return
    config = fo.config
    if config.database_uri or os.environ.get("FIFTYONE_DISABLE_SERVICES"):
        _database = config.database_uri or ""
        return
    import fiftyone.core.odm.database as fod

    folder = os.path.realpath(os.path.expanduser(config.database_dir))
    if getattr(fod, "_client", None) is None:  # FiftyOne has not connected yet in this process
        # A port handed down by a parent process may be another root's mongod: find our own.
        os.environ.pop(PORT_VAR, None)
        service = _DatabaseService(folder)
        os.environ[PORT_VAR] = str(service.port)
        _service = service
    served = _served_folder(fod.get_db_client())
    if served is not None and served != folder:
        raise ConfigError(
            f"this process's FiftyOne is connected to the database {served}, not {folder}: "
            "run ferlab in a process of its own (FiftyOne was used before ferlab opened its database)"
        )
    _database = folder


def _served_folder(client) -> str | None:
    """The folder the connected mongod serves (None when it does not say)."""
    try:
        parsed = client.admin.command("getCmdLineOpts")["parsed"]
    except Exception as exc:  # no admin rights on a server the user runs
        logger.debug("cannot ask mongod for its folder: %s", exc)
        return None
    path = (parsed.get("storage") or {}).get("dbPath")
    return os.path.realpath(path) if path else None


def _services_over(folder: str) -> Iterator[Any]:
    """FiftyOne's database services (this user's) whose mongod serves `folder`."""
    import psutil
    from fiftyone.service.util import find_processes_by_args

    for process in find_processes_by_args(_SERVICE_ARGS):
        try:
            cmd = process.cmdline()
        except psutil.Error:
            continue
        if "--dbpath" in cmd[:-1] and os.path.realpath(cmd[cmd.index("--dbpath") + 1]) == folder:
            yield process


def _lock_holder(folder: str):
    """The live mongod whose pid is in `folder`'s mongod.lock (mongod empties it on exit), or None."""
    import psutil

    try:
        pid = int((Path(folder) / "mongod.lock").read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    try:
        process = psutil.Process(pid)
        if pid and "mongod" in process.name() and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except psutil.Error:
        pass
    return None


def _held_error(folder: str, holder) -> ConfigError:
    """One line: which process holds the folder, and what to do."""
    import psutil

    try:
        what = " ".join(holder.cmdline()[:1]) or holder.name()
        parent = holder.parent()
        if parent is not None and "--51-service" in parent.cmdline():
            what += f", run by FiftyOne's database service {parent.pid}, which does not answer"
        else:
            what += ", not run by a FiftyOne database service ferlab could share"
    except psutil.Error:
        what = "mongod"
    return ConfigError(
        f"FiftyOne's database {folder} is held by process {holder.pid} ({what}): stop it "
        f"(kill {holder.pid}) or wait for it to exit, then retry"
    )


def _listening_port(process) -> int | None:
    import psutil

    for conn in process.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and not conn.raddr:
            return conn.laddr[1]
    return None


def _run_by_service(holder) -> bool:
    """Whether a mongod holding the folder runs under a FiftyOne database service (one that did
    not take this process as a client yet: starting, or shutting down and freeing the folder)."""
    import psutil

    try:
        parent = holder.parent()
        return parent is not None and "--51-service" in parent.cmdline()
    except psutil.Error:
        return False


class _DatabaseService:
    """A hold on FiftyOne's database service over one folder, as fiftyone.core.service's
    DatabaseService but keyed by the folder: attach (register as a client) to a service whose
    mongod serves `folder`, else start one there (FiftyOne's service/main.py running mongod on a
    free port). A service stops its mongod once the process that started it and every client
    have exited; this hold is dropped when this process exits."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.child: Any = None  # the service's process (psutil)
        self.attached = False
        self._start()

    def _start(self) -> None:
        from fiftyone.service.util import send_ipc_message

        deadline = time.monotonic() + 10.0  # for a service of this folder that is shutting down
        while True:
            for process in _services_over(self.folder):
                try:
                    reply = send_ipc_message(process, ("register", os.getpid()))
                except Exception as exc:  # not listening (yet, or any more), or gone
                    logger.debug("FiftyOne database service %d did not respond: %s", process.pid, exc)
                    continue
                if reply is True:
                    logger.debug("attached to FiftyOne database service %d over %s", process.pid, self.folder)
                    self.attached, self.child = True, process
                    return
                logger.debug("FiftyOne database service %d refused a client: %r", process.pid, reply)
            holder = _lock_holder(self.folder)
            if holder is None:
                break
            if not _run_by_service(holder) or time.monotonic() > deadline:
                raise _held_error(self.folder, holder)
            time.sleep(0.5)
        self.child = self._spawn()
        logger.debug("started FiftyOne database service %d over %s", self.child.pid, self.folder)

    def _spawn(self):
        import fiftyone.core.service as fos
        import psutil

        logs = Path(self.folder) / "log"
        logs.mkdir(parents=True, exist_ok=True)
        mongod = [
            fos.DatabaseService.find_mongod(),
            "--dbpath",
            self.folder,
            "--logpath",
            str(logs / "mongo.log"),
        ]
        main = Path(fos.__file__).parent.parent / "service" / "main.py"
        with open(logs / "service.log", "ab") as out:  # its complaints go to its log, not the terminal
            return psutil.Popen(
                [sys.executable, str(main), *_SERVICE_ARGS, *mongod, "--port", "0", "--nounixsocket"],
                stdin=subprocess.PIPE,  # closed when this process exits: the service sees it go
                stdout=out,
                stderr=out,
                env={**os.environ, "FIFTYONE_DISABLE_SERVICES": "1"},
            )

    @property
    def port(self) -> int:
        """The port its mongod listens on (waits for a new one to start).

        Raises ConfigError when it exits instead, naming the process holding the folder if any."""
        import psutil

        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                if self.child.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.NoSuchProcess(self.child.pid)
                for child in self.child.children(recursive=True):
                    port = _listening_port(child)
                    if port is not None:
                        return port
            except psutil.NoSuchProcess:
                holder = _lock_holder(self.folder)
                if holder is not None and not self.attached and _run_by_service(holder):
                    # Another process of this root started a service over the folder at the
                    # same moment, and won: join it.
                    self._start()
                    continue
                if holder is not None:
                    raise _held_error(self.folder, holder) from None
                raise ConfigError(
                    f"FiftyOne's database {self.folder} did not start: see its logs in "
                    f"{Path(self.folder) / 'log'} (mongo.log, service.log)"
                ) from None
            except psutil.Error:
                pass  # a child that came or went meanwhile
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"FiftyOne's database {self.folder} did not listen within {_START_TIMEOUT:.0f} s: "
                    f"see {Path(self.folder) / 'log' / 'mongo.log'}"
                )
            time.sleep(0.1)

    def __del__(self) -> None:
        if not self.attached and self.child is not None and getattr(self.child, "stdin", None):
            self.child.stdin.close()  # as FiftyOne's: the service outlives us while clients remain


def _declare_schema(ds) -> None:
    """Every field and label attribute, declared up front: the App's sidebar filters work
    from the first sync, and values written later always match a declared type."""
    fo = import_fiftyone()
    doc = fo.EmbeddedDocumentField
    fields: list[tuple[str, Any, dict]] = [
        ("image_id", fo.StringField, {}),
        ("source", fo.StringField, {}),
        ("subject", fo.StringField, {}),
        ("video_id", fo.StringField, {}),
        ("split", fo.StringField, {}),
        ("batch", fo.StringField, {}),
        ("frame_index", fo.IntField, {}),
        ("warehouse_hash", fo.StringField, {}),
        ("ground_truth", doc, {"embedded_doc_type": fo.Classification}),
        ("ground_truth.label_source", fo.StringField, {}),
        ("ground_truth.annotator", fo.StringField, {}),
        ("ground_truth.n_labels", fo.IntField, {}),
        ("aus", doc, {"embedded_doc_type": fo.Classifications}),
        ("aus.classifications.au", fo.IntField, {}),
        ("aus.classifications.intensity", fo.FloatField, {}),
        ("aus.classifications.label_source", fo.StringField, {}),
        ("aus.classifications.annotator", fo.StringField, {}),
        ("detections", doc, {"embedded_doc_type": fo.Detections}),
        ("detections.detections.detector", fo.StringField, {}),
        ("detections.detections.weights_sha256", fo.StringField, {}),
        ("detections.detections.detection_id", fo.StringField, {}),
        ("face_crops", doc, {"embedded_doc_type": fo.Detections}),
        ("face_emotions", doc, {"embedded_doc_type": fo.Detections}),
        ("predictions", doc, {"embedded_doc_type": fo.Classifications}),
        ("ferlab_tags", fo.ListField, {"subfield": fo.StringField}),
    ]
    face_attrs = {
        "crop_id": fo.StringField,
        "label_source": fo.StringField,
        "annotator": fo.StringField,
        "threshold": fo.FloatField,
        "excluded": fo.BooleanField,
        "review_priority": fo.FloatField,
        "review_detail": fo.StringField,
        "ferlab_label": fo.StringField,
    }
    kinds = {"str": fo.StringField, "float": fo.FloatField}
    for multi_label, labels in ((False, EMOTIONS), (True, [f"AU{n}" for n in DISFA_AUS])):
        face_attrs |= {k: kinds[t] for k, t in view_fields(multi_label, labels).items() if t != "list"}
    lists = ["ferlab_tags", "review_reasons"] + [
        k for multi_label in (False, True) for k, t in view_fields(multi_label, []).items() if t == "list"
    ]
    fields += [(f"face_emotions.detections.{k}", t, {}) for k, t in face_attrs.items()]
    fields += [(f"face_emotions.detections.{k}", fo.ListField, {"subfield": fo.StringField}) for k in lists]
    prediction_attrs = {
        "crop_id": fo.StringField,
        "kind": fo.StringField,
        "threshold": fo.FloatField,
        "present": fo.BooleanField,
        "model": fo.StringField,
    }
    fields += [(f"predictions.classifications.{k}", t, {}) for k, t in prediction_attrs.items()]
    crop_attrs = {
        "crop_id": fo.StringField,
        "detection_id": fo.StringField,
        "crop_path": fo.StringField,
        "gray_path": fo.StringField,
        "size": fo.IntField,
        "gray_size": fo.IntField,
        "margin": fo.FloatField,
        "angle": fo.FloatField,
        "face_px": fo.FloatField,
        "blur": fo.FloatField,
        "brightness": fo.FloatField,
        "too_small": fo.BooleanField,
        "too_blurry": fo.BooleanField,
    }
    fields += [(f"face_crops.detections.{k}", t, {}) for k, t in crop_attrs.items()]
    if ds.media_type != "image":
        # A new dataset's metadata field is the generic Metadata until its media type is set.
        ds.media_type = "image"
    schema = ds.get_field_schema(flat=True)
    for path, ftype, kwargs in fields:
        if path not in schema:
            ds.add_sample_field(path, ftype, **kwargs)


def check_dataset_root(ds, home: str | Path) -> None:
    """Refuse the dataset `ds` when the sync made it for another data root that still exists;
    one whose root is gone (moved, renamed) is the caller's to adopt (logged).

    Raises ConfigError naming both roots."""
    owner = (ds.info.get(_MARK) or {}).get("warehouse")
    here = Path(home).expanduser().resolve()
    if not owner or os.path.realpath(owner) == str(here):
        return
    if Path(owner).exists():
        raise ConfigError(
            f"FiftyOne dataset {ds.name!r} holds data root {owner}, not {here}: give this root another "
            f"--dataset, or its own database (unset FIFTYONE_DATABASE_DIR: ferlab then uses {here / DATABASE_FOLDER})"
        )
    logger.warning(
        "FiftyOne dataset %r was synced from %s, which is gone: now data root %s's", ds.name, owner, here
    )


def _open_dataset(name: str, home: str):
    fo = import_fiftyone(home)
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        if len(ds) and _MARK not in ds.info:
            raise ConfigError(
                f"FiftyOne dataset {name!r} was not made by sync_fiftyone: choose another --dataset"
            )
        check_dataset_root(ds, home)
    else:
        ds = fo.Dataset(name)
    ds.persistent = True
    _declare_schema(ds)
    # One sample per image, even if two syncs run at once (samples without an image_id, added
    # by hand, are not the sync's and are left alone).
    ds.create_index("image_id", unique=True, partialFilterExpression={"image_id": {"$type": "string"}})
    ds.info[_MARK] = {"version": FORMAT, "warehouse": home}
    ds.classes["ground_truth"] = list(EMOTIONS)
    ds.classes["face_emotions"] = list(EMOTIONS)
    ds.save()
    return ds


def review_view_name(reason: str | None = None) -> str:
    """The saved view of the faces waiting in review_queue (for `reason`, or for any)."""
    return REVIEW_VIEW if reason is None else f"{REVIEW_VIEW}: {reason}"


def _save_review_view(ds) -> None:
    """The saved views REVIEW_VIEW (the faces waiting in review_queue, as patches, highest
    priority first) and one per reason. Their stages filter on the fields, so they follow every
    later sync."""
    from fiftyone import ViewField as F

    waiting = F("review_priority").exists()
    for reason in (None, *REVIEW_REASONS):
        match = waiting if reason is None else waiting & F("review_reasons").contains(reason)
        view = (
            ds.filter_labels("face_emotions", match, only_matches=True)
            .to_patches("face_emotions")
            .sort_by("face_emotions.review_priority", reverse=True)
        )
        ds.save_view(
            review_view_name(reason),
            view,
            description=f"Faces waiting in ferlab's review_queue{f' for {reason}' if reason else ''}, "
            "highest priority first",
            overwrite=True,
        )


_FACE_PATHS = ("crop_id", "label", "tags", "ferlab_label", "ferlab_tags")


def _pending_edits(ds, ids: list[str]) -> dict[str, dict[str, tuple]]:
    """sample id -> crop_id -> (label, tags, ferlab_label, ferlab_tags) of the faces a curator
    changed (label or curator tags) that no pull has seen yet."""
    paths = [f"face_emotions.detections.{p}" for p in _FACE_PATHS]
    sids, *columns = ds.select(ids).values(["id", *paths])
    pending: dict[str, dict[str, tuple]] = {}
    for k, sid in enumerate(sids):
        for crop_id, label, tags, synced, synced_tags in zip(*(c[k] or [] for c in columns)):
            curator = sorted(set(tags or ()) & set(CURATOR_TAGS))
            if label != synced or curator != sorted(synced_tags or ()):
                pending.setdefault(sid, {})[crop_id] = (label, list(tags or ()), synced, synced_tags)
    return pending


def _keep_edits(doc: dict | None, edits: dict[str, tuple]) -> None:
    """Put the curator's pending changes back into a face_emotions document being written."""
    for face in (doc or {}).get("detections", []):
        edit = edits.get(face.get("crop_id"))
        if edit is None:
            continue
        label, tags, synced, synced_tags = edit
        face["tags"] = tags
        for key, value in (("label", label), ("ferlab_label", synced), ("ferlab_tags", synced_tags)):
            if value is None:
                face.pop(key, None)
            else:
                face[key] = value


def _set_fields(
    ds, ids: list[str], image_ids: list[str], wanted: dict[str, WarehouseImage], home: str, new: bool
) -> None:
    """Write the warehouse-derived fields of the samples `ids` (batched: one bulk write per
    field), the digest last, so that a sync killed midway leaves the sample marked stale.
    New samples got filepath, metadata and the scalar fields from add_samples."""
    if not ids:
        return
    images = [wanted[i] for i in image_ids]
    values: dict[str, list] = {}
    if not new:
        values["filepath"] = [im.filepath for im in images]
        for k, field in enumerate(SCALARS[1:], start=1):
            values[field] = [im.scalars[k] for im in images]
    docs = [documents(i, im, home) for i, im in zip(image_ids, images)]
    if not new:
        pending = _pending_edits(ds, ids)
        for sid, d in zip(ids, docs):
            if sid in pending:
                _keep_edits(d["face_emotions"], pending[sid])
    for field in DOCS[0 if not new else 1 :]:
        values[field] = [d[field] for d in docs]
    for field, column in values.items():
        # validate=False: labels are in FiftyOne's stored form, of the types declared above.
        # A new sample's missing field reads as None: writing None there is a wasted update.
        ds.set_values(field, dict(zip(ids, column)), key_field="id", validate=False, skip_none=new)
    ds.set_values("warehouse_hash", {s: im.digest for s, im in zip(ids, images)}, key_field="id")


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def sync_fiftyone(
    wh: Warehouse,
    name: str = DEFAULT_NAME,
    sources: Sequence[str] | None = None,
    batch_size: int = SYNC_BATCH,
) -> SyncReport:
    """Make the persistent FiftyOne dataset `name` show the warehouse's images and labels.

    With `sources`, only images of those sources are added, updated or removed; samples of
    other sources are left as they are. Samples are written `batch_size` at a time. Returns what
    changed.

    Raises ConfigError for a dataset of another data root, or a database that is not this
    process's to use (module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    if isinstance(sources, str):
        sources = [sources]
    if sources is not None:
        unknown = sorted(set(sources) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown sources {unknown}; known: {list(SOURCES)}")
        sources = sorted(set(sources))
    home = str(wh.home)
    fo = import_fiftyone(home)
    wanted = read_warehouse(wh, sources)
    ds = _open_dataset(name, home)

    sample_ids, image_ids, sample_sources, digests = ds.values(["id", "image_id", "source", "warehouse_hash"])
    existing: dict[str, tuple[str, str | None]] = {}
    stale: list[str] = []
    for sid, image_id, source, digest in zip(sample_ids, image_ids, sample_sources, digests):
        if image_id is None or (sources is not None and source not in sources and image_id not in wanted):
            continue  # not ours, or outside the sources being synced
        if image_id in existing or image_id not in wanted:
            stale.append(sid)
        else:
            existing[image_id] = (sid, digest)

    changed = [
        (sid, image_id) for image_id, (sid, digest) in existing.items() if digest != wanted[image_id].digest
    ]
    for part in _chunks(changed, batch_size):
        _set_fields(ds, [s for s, _ in part], [i for _, i in part], wanted, home, new=False)

    new = [image_id for image_id in wanted if image_id not in existing]
    for part in _chunks(new, batch_size):
        samples = [
            fo.Sample(
                filepath=wanted[i].filepath,
                metadata=fo.ImageMetadata(width=wanted[i].size[0], height=wanted[i].size[1]),
                **dict(zip(SCALARS, wanted[i].scalars)),
            )
            for i in part
        ]
        added_ids = ds.add_samples(samples, progress=False)
        del samples  # in-memory samples would be reloaded by every set_values below
        _set_fields(ds, added_ids, part, wanted, home, new=True)

    if stale:
        ds.delete_samples(stale)
    _save_review_view(ds)
    ds.info[_MARK] = {
        "version": FORMAT,
        "warehouse": home,
        "synced_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    ds.save()
    return SyncReport(added=len(new), updated=len(changed), removed=len(stale), total=len(ds))
