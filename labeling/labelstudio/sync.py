"""Label Studio as the curators' labeling tool: push queued faces as tasks (with the model's
prediction pre-filled), pull submitted annotations back as `human` labels of those faces.

The server (`labeling.labelstudio.server`, `ferlab labelstudio serve`) runs from its own
virtualenv; this module only talks to it over HTTP through `label_studio_sdk` 2.x. Where it is:
$LABEL_STUDIO_URL (default http://127.0.0.1:8089); the token: $LABEL_STUDIO_API_KEY (the
server's admin token, a legacy `Token`). The key never appears in a repr, a log or an error.

One project (`PROJECT_TITLE`) holds face tasks: `data` = {image, crop_id, image_id}, where image
is the crop served by Label Studio from the data root (`/data/local-files/?d=media/ab/<sha>.jpg`).
The label config (`label_config_xml`) has a single-choice `emotion` over EMOTIONS and a
multiple-choice `aus` over the 12 DISFA AUs.

Push is idempotent: `label_studio_tasks` records (project, face, task); a face pushed to a
project is not pushed again, and tasks already on the server but not yet recorded (a push killed
between the import and the record) are found by their crop_id and recorded, not imported twice.

Pull: each submitted annotation becomes `human` labels of its face, annotator
`labelstudio:<user id>`: the emotion chosen (when one is) and all 12 AUs (ticked = present, the
others absent). Written with `Warehouse.append_labels`, so an updated annotation (a changed
emotion, an AU un-ticked) supersedes the earlier labels and pulling twice adds nothing. Skipped
(cancelled) annotations add nothing. Everything is fetched and converted before the first write;
each table's write is atomic, and a pull killed between the two tables is completed by the next.
Limit: an emotion cleared in an updated annotation leaves the earlier emotion label standing
(labels are never deleted); choose another emotion to correct one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

import pyarrow as pa

from warehouse import Warehouse
from warehouse.errors import ConfigError, FerlabError
from warehouse.schemas import DISFA_AUS, EMOTIONS

URL_ENV = "LABEL_STUDIO_URL"
KEY_ENV = "LABEL_STUDIO_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8089"
PROJECT_TITLE = "ferlab faces"
ANNOTATOR_PREFIX = "labelstudio:"
AU_NAMES: tuple[str, ...] = tuple(f"AU{n}" for n in DISFA_AUS)
AU_PRESENT_PROBABILITY = 0.5  # a predicted AU is pre-ticked at this probability or above
LOCAL_FILES_PREFIX = "/data/local-files/?d="
IMPORT_BATCH = 1000  # tasks per import request (Label Studio takes up to 250K / 200 MB per request)


class LabelStudioError(FerlabError, ConnectionError):
    """Label Studio cannot be reached, refused the token, or answered with an error."""


@dataclass(frozen=True)
class LabelStudioSettings:
    """Where the server is and the token to use; `from_env` reads $LABEL_STUDIO_URL and
    $LABEL_STUDIO_API_KEY. The key is left out of the repr."""

    url: str = DEFAULT_URL
    api_key: str = field(default="", repr=False)
    timeout: float = 120.0  # seconds per request (an import or export of thousands of tasks)

    @classmethod
    def from_env(cls, url: str | None = None, api_key: str | None = None) -> LabelStudioSettings:
        return cls(
            url=(url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/"),
            api_key=api_key if api_key is not None else os.environ.get(KEY_ENV, ""),
        )

    def require_key(self) -> str:
        if not self.api_key:
            raise ConfigError(
                f"{KEY_ENV} is not set: export the token the Label Studio server was started with "
                f"(`ferlab labelstudio serve` makes it the admin's token)"
            )
        return self.api_key


# ---- the label config --------------------------------------------------------------------------
def _controls() -> tuple[str, str]:
    """The names of the emotion's and the AUs' controls (`Task.labelstudio_control`)."""
    from models.tasks import AUTask, EmotionTask  # imported when used: models loads torch

    return EmotionTask.labelstudio_control, AUTask.labelstudio_control


def label_config_xml() -> str:
    """The project's labeling interface: the face crop, one emotion, any of the 12 DISFA AUs."""
    emotion_control, au_control = _controls()
    emotions = "\n".join(f"    <Choice value={quoteattr(e)}/>" for e in EMOTIONS)
    aus = "\n".join(f"    <Choice value={quoteattr(a)}/>" for a in AU_NAMES)
    return (
        "<View>\n"
        '  <Image name="image" value="$image"/>\n'
        '  <Header value="Emotion"/>\n'
        f'  <Choices name={quoteattr(emotion_control)} toName="image" choice="single" showInline="true">\n'
        f"{emotions}\n  </Choices>\n"
        '  <Header value="Action Units present"/>\n'
        f'  <Choices name={quoteattr(au_control)} toName="image" choice="multiple" showInline="true">\n'
        f"{aus}\n  </Choices>\n"
        "</View>\n"
    )


def image_url(media_path: str) -> str:
    """The URL Label Studio serves a data-root-relative media file at (local-files serving with
    the data root as document root)."""
    return LOCAL_FILES_PREFIX + media_path


# ---- the client ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _calls(settings: LabelStudioSettings, what: str) -> Iterator[None]:
    """Turn transport and HTTP errors into one clear LabelStudioError / ConfigError line."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise LabelStudioError(
            f"Label Studio is not reachable at {settings.url} ({what}): start it with "
            f"`ferlab labelstudio serve` (or `make labelstudio`), or set {URL_ENV}"
        ) from exc
    except httpx.TransportError as exc:
        raise LabelStudioError(f"Label Studio at {settings.url} failed to answer ({what}): {exc}") from exc
    except ApiError as exc:
        if exc.status_code in (401, 403):
            raise ConfigError(
                f"Label Studio at {settings.url} refused the token (HTTP {exc.status_code}, {what}): set "
                f"{KEY_ENV} to the token the server was started with"
            ) from exc
        body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body, default=str)
        raise LabelStudioError(
            f"Label Studio at {settings.url} answered HTTP {exc.status_code} ({what}): {body[:300]}"
        ) from exc


class LabelStudioClient:
    """The few calls ferlab makes, over `label_studio_sdk.LabelStudio`, with errors as one line."""

    def __init__(self, settings: LabelStudioSettings | None = None):
        from label_studio_sdk import LabelStudio

        self.settings = settings or LabelStudioSettings.from_env()
        self.sdk = LabelStudio(
            base_url=self.settings.url, api_key=self.settings.require_key(), timeout=self.settings.timeout
        )

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.settings.url!r})"

    def check(self) -> dict[str, Any]:
        """The signed-in user (id, email): proves the server answers and takes the token."""
        with _calls(self.settings, "who am I"):
            me = self.sdk.users.whoami()
        return {"id": me.id, "email": me.email}

    def find_project(self, title: str = PROJECT_TITLE) -> int | None:
        with _calls(self.settings, "list projects"):
            for project in self.sdk.projects.list(title=title, page_size=100):
                if project.title == title:
                    return int(project.id)
        return None

    def ensure_project(self, home: str | os.PathLike, title: str = PROJECT_TITLE) -> int:
        """The id of the face project (created with `label_config_xml()` when missing), with a
        local-files storage over `<home>/media` so its crops are served."""
        project_id = self.find_project(title)
        if project_id is None:
            with _calls(self.settings, "create the project"):
                project = self.sdk.projects.create(
                    title=title,
                    label_config=label_config_xml(),
                    description="Face crops queued by ferlab: the emotion and the Action Units present.",
                    show_skip_button=True,
                )
            project_id = int(project.id)
        self._ensure_local_storage(project_id, os.path.join(os.path.abspath(home), "media"))
        return project_id

    def _ensure_local_storage(self, project_id: int, media_dir: str) -> None:
        # Label Studio serves /data/local-files/ only under a local storage of a project the user
        # can see; the storage is never synced (that would import every media file as a task).
        with _calls(self.settings, "local files storage"):
            for storage in self.sdk.import_storage.local.list(project=project_id):
                if storage.path == media_dir:
                    return
            self.sdk.import_storage.local.create(
                project=project_id,
                path=media_dir,
                title="ferlab media",
                use_blob_urls=True,
                regex_filter=r"^$",  # imports nothing should it ever be synced
            )

    def project_signature(self, project_id: int) -> str:
        """A cheap fingerprint of the project's annotations (counts + the newest task update), for
        a sensor: it changes when an annotation is submitted, updated or skipped."""
        with _calls(self.settings, "read the project"):
            p = self.sdk.projects.get(id=project_id)
            # An annotation's submit, update or skip touches its task's updated_at.
            query = json.dumps({"ordering": ["-tasks:updated_at"]})
            newest = self.sdk.tasks.list(project=project_id, page_size=1, query=query, fields="task_only")
            first = next(iter(newest), None)
        parts = [
            getattr(p, "total_annotations_number", None),
            getattr(p, "skipped_annotations_number", None),
            getattr(p, "num_tasks_with_annotations", None),
            first.updated_at.isoformat() if first is not None and first.updated_at else "",
        ]
        return ":".join(str(x) for x in parts)

    def tasks_by_crop(self, project_id: int) -> dict[str, int]:
        """crop_id -> task id of the project's tasks on the server."""
        out: dict[str, int] = {}
        with _calls(self.settings, "list tasks"):
            for task in self.sdk.tasks.list(project=project_id, page_size=1000, fields="task_only"):
                crop_id = (task.data or {}).get("crop_id")
                if crop_id and crop_id not in out:
                    out[str(crop_id)] = int(task.id)
        return out

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> int:
        with _calls(self.settings, "import tasks"):
            done = 0
            for start in range(0, len(tasks), IMPORT_BATCH):
                batch = tasks[start : start + IMPORT_BATCH]
                self.sdk.projects.import_tasks(id=project_id, request=batch)
                done += len(batch)
        return done

    def export_annotated(self, project_id: int) -> list[dict[str, Any]]:
        """Every task with at least one annotation (skipped ones included), as Label Studio's JSON export."""
        with _calls(self.settings, "export annotations"):
            raw = b"".join(self.sdk.projects.exports.download_sync(id=project_id, export_type="JSON"))
        return json.loads(raw or b"[]")


# ---- push --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PushReport:
    project_id: int
    pushed: int  # new tasks imported
    already: int  # faces already tasks of the project (recorded or found on the server)
    with_prediction: int  # of the new tasks, those with a pre-filled prediction
    recorded: int  # label_studio_tasks rows written

    def summary(self) -> str:
        return (
            f"label studio project {self.project_id}: {self.pushed} tasks pushed "
            f"({self.with_prediction} with a prediction), {self.already} already there"
        )


def prediction_for(
    prediction: Mapping[str, Mapping[str, float]], model_version: str
) -> dict[str, Any] | None:
    """A Label Studio prediction from {"emotion": {name: prob}, "aus": {"AU1": prob}} (either may be
    missing): the most probable emotion, the AUs at AU_PRESENT_PROBABILITY or above ticked; score =
    the emotion's probability, else the AUs' mean certainty (max(p, 1 - p))."""
    emotion_control, au_control = _controls()
    result: list[dict[str, Any]] = []
    emotions = {k: float(v) for k, v in (prediction.get(emotion_control) or {}).items() if k in EMOTIONS}
    aus = {k: float(v) for k, v in (prediction.get(au_control) or {}).items() if k in AU_NAMES}
    score = None
    if emotions:
        top = max(sorted(emotions), key=lambda e: emotions[e])
        score = emotions[top]
        result.append(_choices(emotion_control, [top]))
    if aus:
        ticked = [a for a in AU_NAMES if aus.get(a, 0.0) >= AU_PRESENT_PROBABILITY]
        result.append(_choices(au_control, ticked))
        if score is None:
            score = sum(max(p, 1 - p) for p in aus.values()) / len(aus)
    if not result:
        return None
    return {"model_version": model_version, "score": round(float(score), 6), "result": result}


def _choices(name: str, values: list[str]) -> dict[str, Any]:
    return {"from_name": name, "to_name": "image", "type": "choices", "value": {"choices": values}}


def push_faces(
    wh: Warehouse,
    queue_rows: Iterable[Mapping[str, Any]],
    predictions: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    model_id: str | None = None,
    client: LabelStudioClient | None = None,
    title: str = PROJECT_TITLE,
) -> PushReport:
    """Push the queued faces (`review_queue`-shaped rows: crop_id, image_id, media_path, [model_id])
    as tasks of the face project, each with the model's prediction when `predictions` has one for
    its crop_id (model_version: the row's model_id, else `model_id`). A face already a task of the
    project adds nothing. Records each task in `label_studio_tasks`."""
    client = client or LabelStudioClient()
    project_id = client.ensure_project(wh.home, title)
    faces: dict[str, Mapping[str, Any]] = {}
    for row in queue_rows:
        faces.setdefault(str(row["crop_id"]), row)  # a face queued for several reasons: one task
    recorded = _recorded(wh, project_id)
    todo = [c for c in faces if c not in recorded]
    report = {"pushed": 0, "with_prediction": 0}
    if todo:
        on_server = client.tasks_by_crop(project_id)  # pushed before but not recorded (a killed push)
        new = [c for c in todo if c not in on_server]
        tasks = []
        for crop_id in new:
            row = faces[crop_id]
            task: dict[str, Any] = {
                "data": {
                    "image": image_url(str(row["media_path"])),
                    "crop_id": crop_id,
                    "image_id": row["image_id"],
                }
            }
            pred = (predictions or {}).get(crop_id)
            version = row.get("model_id") or model_id or "unknown"
            made = prediction_for(pred, str(version)) if pred else None
            if made:
                task["predictions"] = [made]
                report["with_prediction"] += 1
            tasks.append(task)
        if tasks:
            report["pushed"] = client.import_tasks(project_id, tasks)
            on_server = client.tasks_by_crop(project_id)
        missing = [c for c in new if c not in on_server]
        if missing:
            raise LabelStudioError(
                f"Label Studio at {client.settings.url} did not create tasks for {len(missing)} faces "
                f"(e.g. {missing[0]}): re-run the push"
            )
    rows = [{"project_id": project_id, "crop_id": c, "task_id": on_server[c]} for c in todo] if todo else []
    n_recorded = record_tasks(wh, rows)
    return PushReport(
        project_id=project_id,
        pushed=report["pushed"],
        already=len(faces) - report["pushed"],
        with_prediction=report["with_prediction"],
        recorded=n_recorded,
    )


def _recorded(wh: Warehouse, project_id: int) -> set[str]:
    rows = wh.sql("SELECT crop_id FROM label_studio_tasks WHERE project_id = ?", [project_id])
    return set(rows.column("crop_id").to_pylist())


def record_tasks(wh: Warehouse, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    now = dt.datetime.now(dt.UTC)
    return wh.append("label_studio_tasks", pa.Table.from_pylist([{**r, "pushed_at": now} for r in rows]))


def queue_predictions(
    wh: Warehouse, rows: Iterable[Mapping[str, Any]], batch_size: int = 64
) -> dict[str, dict[str, dict[str, float]]]:
    """What pre-fills the tasks of queued faces (`queued_faces` rows): each face's queue model run on
    it (`model_predictions`), or that model's stored pseudo labels (`predictions_for`) where its
    files are gone or the row names no model."""
    by_model: dict[str | None, list[str]] = {}
    for r in rows:
        by_model.setdefault(r.get("model_id"), []).append(str(r["crop_id"]))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model, ids in by_model.items():
        try:
            out.update(model_predictions(wh, ids, model, batch_size) if model else predictions_for(wh, ids))
        except FileNotFoundError:
            out.update(predictions_for(wh, ids, model))
    return out


def model_predictions(
    wh: Warehouse, crop_ids: Iterable[str], model_id: str, batch_size: int = 64
) -> dict[str, dict[str, dict[str, float]]]:
    """The model's output on these faces, as {crop_id: {"emotion": {every class: probability}} or
    {"aus": {"AU1": probability, ...}}}: every label, also those between the pseudo-label thresholds
    (the faces a curator is asked about). Through `labeling.curation.pseudo.face_predictions`, so a face the
    pseudo-labeler or the review queue already ran is read from the model's cache. Unreadable crops
    are left out.

    Raises:
        FileNotFoundError: no such model, or its files are missing.
    """
    from labeling.curation.pseudo import face_predictions
    from models.predict import Predictor
    from models.tasks import get_task

    ids = sorted(set(crop_ids))
    if not ids:
        return {}
    predictor = Predictor.load(wh, model_id)
    faces = wh.sql(
        "SELECT crop_id, image_id, media_path, gray_media_path FROM crops WHERE list_contains($ids, crop_id) "
        "ORDER BY crop_id",
        {"ids": ids},
    )
    table, _ = face_predictions(wh, predictor, faces, batch_size)
    key = get_task(predictor.task).labelstudio_control
    columns = {lab: table.column(lab).to_pylist() for lab in predictor.labels}
    return {
        crop_id: {key: {lab: round(float(columns[lab][i]), 6) for lab in predictor.labels}}
        for i, crop_id in enumerate(table.column("crop_id").to_pylist())
    }


def predictions_for(
    wh: Warehouse, crop_ids: Iterable[str], model_id: str | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """The stored `pseudo` labels of these faces (of `model_id` when given: the pseudo labels'
    annotator is the model id), as {crop_id: {"emotion": {name: confidence}, "aus": {"AU1":
    probability, ...}}}: the fallback of `queue_predictions` when the model's files are gone. Emotion
    pseudo labels store only the winning emotion and its confidence. Faces without pseudo labels are
    left out."""
    ids = sorted(set(crop_ids))
    if not ids:
        return {}
    emotion_control, au_control = _controls()
    by_model = " AND annotator = $model" if model_id else ""
    params: dict[str, Any] = {"ids": ids, **({"model": model_id} if model_id else {})}
    out: dict[str, dict[str, dict[str, float]]] = {}
    emotions = wh.sql(
        "SELECT crop_id, emotion, confidence FROM emotion_labels WHERE label_source = 'pseudo' "
        f"AND list_contains($ids, crop_id){by_model} ORDER BY crop_id, confidence DESC NULLS LAST",
        params,
    )
    for r in emotions.to_pylist():
        if r["confidence"] is not None:
            out.setdefault(r["crop_id"], {}).setdefault(emotion_control, {}).setdefault(
                r["emotion"], round(float(r["confidence"]), 6)
            )
    aus = wh.sql(
        "SELECT crop_id, au, probability FROM au_labels WHERE label_source = 'pseudo' "
        f"AND list_contains($ids, crop_id){by_model} AND probability IS NOT NULL ORDER BY crop_id, au",
        params,
    )
    for r in aus.to_pylist():
        if f"AU{r['au']}" in AU_NAMES:
            out.setdefault(r["crop_id"], {}).setdefault(au_control, {})[f"AU{r['au']}"] = round(
                float(r["probability"]), 6
            )
    return out


# ---- pull --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HumanLabels:
    """One annotation's labels of one face."""

    crop_id: str
    annotator: str
    emotion: str | None
    aus_present: frozenset[str]
    updated_at: str = ""


def labels_from_annotation(crop_id: str, annotation: Mapping[str, Any]) -> HumanLabels | None:
    """A submitted annotation as labels; None for a skipped (cancelled) one. AUs not ticked are absent."""
    if annotation.get("was_cancelled"):
        return None
    user = annotation.get("completed_by")
    if isinstance(user, Mapping):
        user = user.get("id")
    emotion_control, au_control = _controls()
    emotion = None
    ticked: set[str] = set()
    for item in annotation.get("result") or []:
        choices = (item.get("value") or {}).get("choices") or []
        if item.get("from_name") == emotion_control and choices:
            emotion = choices[0] if choices[0] in EMOTIONS else None
        elif item.get("from_name") == au_control:
            ticked.update(c for c in choices if c in AU_NAMES)
    return HumanLabels(
        crop_id=crop_id,
        annotator=f"{ANNOTATOR_PREFIX}{user}",
        emotion=emotion,
        aus_present=frozenset(ticked),
        updated_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
    )


def label_tables(labels: list[HumanLabels], image_of: Mapping[str, str]) -> tuple[pa.Table, pa.Table]:
    """emotion_labels and au_labels rows (label_source human) for these annotations' faces.
    Per (face, annotator) the newest annotation wins; faces not in `image_of` are left out."""
    newest: dict[tuple[str, str], HumanLabels] = {}
    for lab in sorted(labels, key=lambda x: x.updated_at):
        if lab.crop_id in image_of:
            newest[(lab.crop_id, lab.annotator)] = lab
    emotion_rows, au_rows = [], []
    for (crop_id, annotator), lab in sorted(newest.items()):
        common = {
            "image_id": image_of[crop_id],
            "crop_id": crop_id,
            "label_source": "human",
            "annotator": annotator,
        }
        if lab.emotion:
            emotion_rows.append({**common, "emotion": lab.emotion, "confidence": None, "threshold": None})
        for n, name in zip(DISFA_AUS, AU_NAMES):
            au_rows.append(
                {
                    **common,
                    "au": n,
                    "intensity": None,
                    "present": name in lab.aus_present,
                    "probability": None,
                }
            )
    from warehouse.schemas import AU_LABELS, EMOTION_LABELS

    return (
        pa.Table.from_pylist(emotion_rows, schema=_writable(EMOTION_LABELS)),
        pa.Table.from_pylist(au_rows, schema=_writable(AU_LABELS)),
    )


def _writable(schema: pa.Schema) -> pa.Schema:
    """The schema less the columns the store fills (recorded_at) or we leave null (threshold on AUs)."""
    keep = [f for f in schema if f.name not in ("recorded_at",)]
    return pa.schema(keep)


@dataclass(frozen=True)
class PullReport:
    project_id: int
    annotations: int  # submitted annotations read
    skipped: int  # skipped (cancelled) annotations: nothing added
    unknown_faces: int  # annotations of tasks whose crop_id is not in this warehouse
    emotion_added: int
    emotion_updated: int
    au_added: int
    au_updated: int
    emotions: dict[str, int] = field(default_factory=dict)  # current human emotion per face, by emotion

    def summary(self) -> str:
        return (
            f"label studio project {self.project_id}: {self.annotations} annotations "
            f"({self.skipped} skipped); emotion labels +{self.emotion_added} ~{self.emotion_updated}, "
            f"AU labels +{self.au_added} ~{self.au_updated}"
            + (f"; {self.unknown_faces} of unknown faces" if self.unknown_faces else "")
        )


def pull_annotations(
    wh: Warehouse,
    client: LabelStudioClient | None = None,
    project_id: int | None = None,
    title: str = PROJECT_TITLE,
) -> PullReport:
    """Write the project's submitted annotations as `human` labels (see the module docstring)."""
    client = client or LabelStudioClient()
    if project_id is None:
        project_id = client.find_project(title)
        if project_id is None:
            raise LabelStudioError(
                f"Label Studio at {client.settings.url} has no project {title!r}: push faces first "
                f"(`ferlab labelstudio push`)"
            )
    tasks = client.export_annotated(project_id)  # everything is read before anything is written
    labels: list[HumanLabels] = []
    skipped = 0
    for task in tasks:
        crop_id = (task.get("data") or {}).get("crop_id")
        for annotation in task.get("annotations") or []:
            lab = labels_from_annotation(str(crop_id), annotation) if crop_id else None
            if lab is None:
                skipped += 1
            else:
                labels.append(lab)
    crops = sorted({lab.crop_id for lab in labels})
    image_of = _images_of(wh, crops)
    emotion_rows, au_rows = label_tables(labels, image_of)
    e = wh.append_labels("emotion_labels", emotion_rows)
    a = wh.append_labels("au_labels", au_rows)
    emotions = wh.sql(
        "SELECT emotion, count(*) AS n FROM emotion_labels WHERE label_source = 'human' "
        f"AND starts_with(annotator, '{ANNOTATOR_PREFIX}') GROUP BY 1 ORDER BY 1"
    ).to_pylist()
    return PullReport(
        project_id=project_id,
        annotations=len(labels),
        skipped=skipped,
        unknown_faces=sum(1 for lab in labels if lab.crop_id not in image_of),
        emotion_added=e.added,
        emotion_updated=e.updated,
        au_added=a.added,
        au_updated=a.updated,
        emotions={r["emotion"]: int(r["n"]) for r in emotions},
    )


def _images_of(wh: Warehouse, crop_ids: list[str]) -> dict[str, str]:
    if not crop_ids:
        return {}
    rows = wh.sql("SELECT crop_id, image_id FROM crops WHERE list_contains($ids, crop_id)", {"ids": crop_ids})
    return {r["crop_id"]: r["image_id"] for r in rows.to_pylist()}


def queued_faces(wh: Warehouse, queue: str | None = None) -> list[dict[str, Any]]:
    """The review_queue's faces (optionally of one queue), highest priority first, one row per face."""
    where = "WHERE queue = $queue" if queue else ""
    rows = wh.sql(
        "SELECT crop_id, any_value(image_id ORDER BY priority DESC) AS image_id, "
        "any_value(media_path ORDER BY priority DESC) AS media_path, "
        "any_value(model_id ORDER BY priority DESC) AS model_id, max(priority) AS priority "
        f"FROM review_queue {where} GROUP BY crop_id ORDER BY priority DESC, crop_id",
        {"queue": queue} if queue else None,
    )
    return rows.to_pylist()
