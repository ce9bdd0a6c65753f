"""Label Studio as the curators' labeling tool: push queued faces as tasks (with the model's
prediction pre-filled), pull submitted annotations back as `human` labels of those faces.

The server (`labeling.labelstudio.server`, `ferlab labelstudio serve`) runs from its own
virtualenv; this module only talks to it over HTTP through `label_studio_sdk` 2.x. Where it is:
$LABEL_STUDIO_URL (default http://127.0.0.1:8089); the token: $LABEL_STUDIO_API_KEY (the
server's admin token, a legacy `Token`). The key never appears in a repr, a log or an error.

One project (`PROJECT_TITLE`) holds face tasks: `data` = {image, crop_id, image_id}, where image
is the crop served by Label Studio from the data root (`/data/local-files/?d=media/ab/<sha>.jpg`).
The label config (`label_config_xml`) has a single-choice `emotion` over EMOTIONS, a
multiple-choice `aus` over the 12 DISFA AUs and `aus_reviewed`, the curator's confirmation that
all 12 AUs were looked at (so that the AUs not ticked are absent).

Overlap: `push_faces(..., overlap=N)` (`ferlab labelstudio push --overlap N`) has the project give
each task to N annotators (Label Studio's `maximum_annotations`, with `overlap_cohort_percentage`
100: every task); without it the project keeps its setting (a new project: 1).

Push reconciles with the server: `label_studio_tasks` records (project, face, task); each push
lists the project's tasks by crop_id, so a face with a task there adds nothing (also one pushed by
a push killed before it recorded it), and a queued face whose task is gone from the server
(deleted there) is pushed again. `project_status` (`ferlab labelstudio status`) says what differs.

Pull: each annotation is first checked against the project's label config as the server holds it
(`config_controls`, `check_annotation`): a control, choice or emotion/AU the config does not have
makes the whole annotation a `rejects` row (source `labelstudio`, the task, the annotator, the
value) and writes no label. A valid submitted annotation becomes `human` labels of its face,
annotator `labelstudio:<user id>`: the emotion chosen (when one is), and the 12 AUs only when the
curator answered the AU control (`labels_from_annotation`): ticked `aus_reviewed` (then the ticked
AUs are present, the other ones absent, none ticked = no AU present), or ticked AUs themselves
(a prediction pre-filled into the annotation and submitted unchanged is not an answer). An
emotion-only answer says nothing about the AUs and writes no AU label. Written with
`Warehouse.append_labels`, so an updated annotation (a changed emotion, an AU un-ticked)
supersedes the earlier labels and pulling twice adds nothing. Skipped (cancelled) annotations add
nothing. Everything is fetched and converted before the first write; each table's write is
atomic, and a pull killed between the two tables is completed by the next.
Several curators: labels are keyed by annotator, so the answers of several curators on one face
are all kept. After the labels, the pull writes the panel's consensus from the warehouse's
answers (labeling.labelstudio.agreement.apply_consensus, rule `majority` or `unanimous`): it
decides the face's human label, and a face without consensus is queued for review.
Limit: an emotion cleared in an updated annotation leaves the earlier emotion label standing
(labels are never deleted); choose another emotion to correct one. Likewise the AU labels of an
annotation updated to answer the AUs no more (no AU ticked, no confirmation) stay as they were.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

import pyarrow as pa

from labeling.labelstudio.agreement import DEFAULT_RULE, ConsensusReport, apply_consensus, check_rule
from warehouse import Warehouse
from warehouse.errors import ConfigError, FerlabError
from warehouse.precedence import CONSENSUS_ANNOTATOR, PANEL_PREFIX
from warehouse.rejects import Reject
from warehouse.schemas import DISFA_AUS, EMOTIONS

log = logging.getLogger(__name__)

URL_ENV = "LABEL_STUDIO_URL"
KEY_ENV = "LABEL_STUDIO_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8089"
PROJECT_TITLE = "ferlab faces"
ANNOTATOR_PREFIX = PANEL_PREFIX  # labelstudio:<user id>
AU_NAMES: tuple[str, ...] = tuple(f"AU{n}" for n in DISFA_AUS)
AU_PRESENT_PROBABILITY = 0.5  # a predicted AU is pre-ticked at this probability or above
LOCAL_FILES_PREFIX = "/data/local-files/?d="
IMPORT_BATCH = 1000  # tasks per import request (Label Studio takes up to 250K / 200 MB per request)
AU_REVIEWED_CHOICE = "AUs reviewed"  # the curator's confirmation: the AUs not ticked are absent
REJECT_SOURCE = "labelstudio"  # the `rejects` rows of annotations outside the label config


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


def reviewed_control(au_control: str) -> str:
    """The name of the control with which a curator confirms having looked at all 12 AUs."""
    return f"{au_control}_reviewed"


def label_config_xml() -> str:
    """The project's labeling interface: the face crop, one emotion, any of the 12 DISFA AUs and
    the confirmation that the AUs were reviewed (without it, an answer says nothing of the AUs
    not ticked)."""
    emotion_control, au_control = _controls()
    emotions = "\n".join(f"    <Choice value={quoteattr(e)}/>" for e in EMOTIONS)
    aus = "\n".join(f"    <Choice value={quoteattr(a)}/>" for a in AU_NAMES)
    reviewed = reviewed_control(au_control)
    hint = "tick once all 12 AUs are checked: the AUs not ticked are then recorded as absent"
    return (
        "<View>\n"
        '  <Image name="image" value="$image"/>\n'
        '  <Header value="Emotion"/>\n'
        f'  <Choices name={quoteattr(emotion_control)} toName="image" choice="single" showInline="true">\n'
        f"{emotions}\n  </Choices>\n"
        '  <Header value="Action Units present"/>\n'
        f'  <Choices name={quoteattr(au_control)} toName="image" choice="multiple" showInline="true">\n'
        f"{aus}\n  </Choices>\n"
        f'  <Choices name={quoteattr(reviewed)} toName="image" choice="multiple" showInline="true">\n'
        f"    <Choice value={quoteattr(AU_REVIEWED_CHOICE)} hint={quoteattr(hint)}/>\n  </Choices>\n"
        "</View>\n"
    )


@dataclass(frozen=True)
class Control:
    """A control of a label config. `values` are the choices of a Choices control (None for another
    kind of control, whose results ferlab does not read)."""

    name: str
    to_name: str
    multiple: bool = False
    values: frozenset[str] | None = None


def config_controls(label_config: str, where: str = "the label config") -> dict[str, Control]:
    """The controls (tags with a name and a toName) of a Label Studio label config, by name.

    Raises:
        ConfigError: the config is not XML.
    """
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as exc:
        raise ConfigError(
            f"{where} is not valid XML ({exc}): fix it in Label Studio's project settings"
        ) from exc
    out: dict[str, Control] = {}
    for tag in root.iter():
        name, to_name = tag.get("name"), tag.get("toName")
        if not name or to_name is None:
            continue
        values = None
        if tag.tag == "Choices":
            values = frozenset(c.get("alias") or c.get("value") or "" for c in tag.iter("Choice"))
        out[name] = Control(name, to_name, multiple=tag.get("choice") == "multiple", values=values)
    return out


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
        """The id of the face project (created with `label_config_xml()` when missing; a project
        made before the AU confirmation gets it), with a local-files storage over `<home>/media`
        so its crops are served."""
        project_id = self.find_project(title)
        if project_id is not None:
            self._ensure_au_confirmation(project_id)
        else:
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

    def _ensure_au_confirmation(self, project_id: int) -> None:
        """Give a project with ferlab's earlier label config (emotion + AUs, no confirmation) the
        current one; Label Studio keeps its annotations, which stay valid. A config someone changed
        otherwise is left as it is."""
        emotion_control, au_control = _controls()
        controls = config_controls(self.label_config(project_id), f"the label config of project {project_id}")
        if reviewed_control(au_control) in controls:
            return
        if set(controls) == {emotion_control, au_control}:
            with _calls(self.settings, "update the label config"):
                self.sdk.projects.update(id=project_id, label_config=label_config_xml())
            log.info(
                "Label Studio project %d: label config given the %r confirmation",
                project_id,
                AU_REVIEWED_CHOICE,
            )
        else:
            log.warning(
                "Label Studio project %d has no %r control: only ticked AUs count as an AU answer",
                project_id,
                reviewed_control(au_control),
            )

    def label_config(self, project_id: int) -> str:
        """The project's label config as the server holds it (what its annotations are checked against)."""
        with _calls(self.settings, "read the label config"):
            return self.sdk.projects.get(id=project_id).label_config or ""

    def project_counts(self, project_id: int) -> dict[str, Any]:
        """The project's title, its task, annotation and skipped-annotation counts and its overlap
        (annotators per task)."""
        with _calls(self.settings, "read the project"):
            p = self.sdk.projects.get(id=project_id)
        return {
            "title": p.title,
            "tasks": p.task_number,
            "annotations": p.total_annotations_number,
            "skipped": p.skipped_annotations_number,
            "overlap": p.maximum_annotations,
        }

    def set_overlap(self, project_id: int, overlap: int) -> bool:
        """Have the project give every task to `overlap` annotators (`maximum_annotations`, over
        all tasks: `overlap_cohort_percentage` 100); returns whether the project changed.

        Raises:
            ConfigError: overlap under 1.
        """
        if overlap < 1:
            raise ConfigError(f"overlap must be 1 or more annotators per task, not {overlap}")
        with _calls(self.settings, "read the project"):
            p = self.sdk.projects.get(id=project_id)
        if p.maximum_annotations == overlap and (overlap == 1 or p.overlap_cohort_percentage == 100):
            return False
        with _calls(self.settings, "set the overlap"):
            self.sdk.projects.update(
                id=project_id, maximum_annotations=overlap, overlap_cohort_percentage=100
            )
        log.info(
            "Label Studio project %d: each task to %d annotators (was %s)",
            project_id,
            overlap,
            p.maximum_annotations,
        )
        return True

    def prediction_results(self, project_id: int) -> dict[int, list[dict[str, Any]]]:
        """Prediction id -> its result, for the project's predictions (what a task was pre-filled with)."""
        with _calls(self.settings, "list predictions"):
            return {
                int(p.id): [dict(r) for r in (p.result or [])]
                for p in self.sdk.predictions.list(project=project_id)
                if p.id is not None
            }

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

    def task_crops(self, project_id: int) -> list[tuple[int, str | None]]:
        """(task id, crop_id or None) of every task of the project on the server, by task id."""
        out: list[tuple[int, str | None]] = []
        with _calls(self.settings, "list tasks"):
            for task in self.sdk.tasks.list(project=project_id, page_size=1000, fields="task_only"):
                crop_id = (task.data or {}).get("crop_id")
                out.append((int(task.id), str(crop_id) if crop_id else None))
        return sorted(out)

    def tasks_by_crop(self, project_id: int) -> dict[str, int]:
        """crop_id -> task id (the first, should a face have several) of the project's tasks on the server."""
        out: dict[str, int] = {}
        for task_id, crop_id in self.task_crops(project_id):
            if crop_id and crop_id not in out:
                out[crop_id] = task_id
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
    already: int  # faces already tasks of the project on the server
    with_prediction: int  # of the new tasks, those with a pre-filled prediction
    recorded: int  # label_studio_tasks rows written
    repushed: int = 0  # of the new tasks, faces recorded as pushed whose task was gone from the server

    def summary(self) -> str:
        again = f"; {self.repushed} again: their tasks were gone from the server" if self.repushed else ""
        return (
            f"label studio project {self.project_id}: {self.pushed} tasks pushed "
            f"({self.with_prediction} with a prediction{again}), {self.already} already there"
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
    overlap: int | None = None,
) -> PushReport:
    """Push the queued faces (`review_queue`-shaped rows: crop_id, image_id, media_path, [model_id])
    as tasks of the face project, each with the model's prediction when `predictions` has one for
    its crop_id (model_version: the row's model_id, else `model_id`). A face with a task of the
    project on the server adds nothing; one recorded as pushed whose task is gone from the server
    (deleted there) is pushed again. Records each task in `label_studio_tasks`. `overlap`: give
    each task to that many annotators (None: as the project has it)."""
    client = client or LabelStudioClient()
    project_id = client.ensure_project(wh.home, title)
    if overlap is not None:
        client.set_overlap(project_id, overlap)
    faces: dict[str, Mapping[str, Any]] = {}
    for row in queue_rows:
        faces.setdefault(str(row["crop_id"]), row)  # a face queued for several reasons: one task
    recorded = _recorded(wh, project_id)
    report = {"pushed": 0, "with_prediction": 0}
    repushed = 0
    if faces:
        # The server, not the record, says which faces are tasks: a push killed before recording
        # left tasks to record, a task deleted on the server leaves a face to push again.
        on_server = client.tasks_by_crop(project_id)
        new = [c for c in faces if c not in on_server]
        repushed = sum(1 for c in new if c in recorded)
        if repushed:
            log.warning(
                "Label Studio project %d: %d queued faces recorded as pushed have no task on the server "
                "(deleted there): pushing them again",
                project_id,
                repushed,
            )
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
        rows = [
            {"project_id": project_id, "crop_id": c, "task_id": on_server[c]}
            for c in faces
            if recorded.get(c) != on_server[c]
        ]
    else:
        rows = []
    # A face pushed again keeps its first row today: the table's key is (project, face) and it is
    # not versioned, so the row with the new task id adds nothing (it supersedes once it is).
    n_recorded = record_tasks(wh, rows)
    return PushReport(
        project_id=project_id,
        pushed=report["pushed"],
        already=len(faces) - report["pushed"],
        with_prediction=report["with_prediction"],
        recorded=n_recorded,
        repushed=repushed,
    )


def _recorded(wh: Warehouse, project_id: int) -> dict[str, int]:
    """crop_id -> the task id recorded for it in this project."""
    rows = wh.sql("SELECT crop_id, task_id FROM label_studio_tasks WHERE project_id = ?", [project_id])
    return {r["crop_id"]: int(r["task_id"]) for r in rows.to_pylist()}


def record_tasks(wh: Warehouse, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    now = dt.datetime.now(dt.UTC)
    return wh.append("label_studio_tasks", pa.Table.from_pylist([{**r, "pushed_at": now} for r in rows]))


@dataclass(frozen=True)
class TaskDiff:
    """How a project's tasks on the server differ from `label_studio_tasks` (faces as crop ids)."""

    gone: tuple[str, ...] = ()  # recorded faces with no task on the server (deleted there)
    unrecorded: tuple[str, ...] = ()  # faces with a task on the server and no record here
    pushed_again: tuple[str, ...] = ()  # recorded task gone, the face has another (record not updated)
    several: tuple[str, ...] = ()  # faces with more than one task
    no_face: int = 0  # tasks without a crop_id (not made by ferlab)

    @property
    def differs(self) -> bool:
        return bool(self.gone or self.unrecorded or self.several or self.no_face)

    def lines(self) -> list[str]:
        def some(crops: tuple[str, ...]) -> str:
            return ", ".join(crops[:3]) + (", ..." if len(crops) > 3 else "")

        out = []
        if self.gone:
            out.append(
                f"{len(self.gone)} recorded faces have no task on the server (deleted there; {some(self.gone)}): "
                f"`ferlab labelstudio push` pushes those still queued again"
            )
        if self.unrecorded:
            out.append(
                f"{len(self.unrecorded)} faces have a task on the server but no record here ({some(self.unrecorded)}): "
                f"pushed from another data root, or by a push killed before recording (the next push records them)"
            )
        if self.several:
            out.append(f"{len(self.several)} faces have more than one task ({some(self.several)})")
        if self.no_face:
            out.append(f"{self.no_face} tasks have no crop_id (not made by ferlab): pull leaves them out")
        if self.pushed_again:
            out.append(
                f"{len(self.pushed_again)} faces have another task on the server than the one recorded "
                f"({some(self.pushed_again)}): pushed again by a run killed before it recorded the new task"
            )
        return out


def diff_tasks(recorded: Mapping[str, int], server: Iterable[tuple[int, str | None]]) -> TaskDiff:
    """Compare the recorded tasks (crop_id -> task id) with the server's (task id, crop_id) pairs."""
    tasks_of: dict[str, set[int]] = {}
    no_face = 0
    for task_id, crop_id in server:
        if crop_id:
            tasks_of.setdefault(crop_id, set()).add(int(task_id))
        else:
            no_face += 1
    return TaskDiff(
        gone=tuple(sorted(c for c in recorded if c not in tasks_of)),
        unrecorded=tuple(sorted(c for c in tasks_of if c not in recorded)),
        pushed_again=tuple(sorted(c for c, t in recorded.items() if c in tasks_of and t not in tasks_of[c])),
        several=tuple(sorted(c for c, ts in tasks_of.items() if len(ts) > 1)),
        no_face=no_face,
    )


@dataclass(frozen=True)
class ProjectStatus:
    project_id: int
    title: str
    tasks: int  # on the server
    recorded: int  # label_studio_tasks rows of the project
    annotations: int
    skipped: int
    diff: TaskDiff
    home: str = ""
    overlap: int = 1  # annotators per task

    def lines(self) -> list[str]:
        head = (
            f"project {self.project_id} {self.title!r}: {self.tasks} tasks ({self.recorded} recorded"
            f"{' in ' + self.home if self.home else ''}), {self.annotations} annotations, {self.skipped} skipped"
            + (f", each task to {self.overlap} annotators" if self.overlap > 1 else "")
        )
        diff = self.diff.lines()
        if not self.diff.differs:
            head += "; the server's tasks and the record agree"
        return [head, *diff]


def project_status(wh: Warehouse, client: LabelStudioClient, project_id: int) -> ProjectStatus:
    """The project's counts and how its tasks on the server differ from the warehouse's record."""
    counts = client.project_counts(project_id)
    recorded = _recorded(wh, project_id)
    diff = diff_tasks(recorded, client.task_crops(project_id))
    return ProjectStatus(
        project_id=project_id,
        title=str(counts["title"]),
        tasks=int(counts["tasks"] or 0),
        recorded=len(recorded),
        annotations=int(counts["annotations"] or 0),
        skipped=int(counts["skipped"] or 0),
        diff=diff,
        home=str(wh.home),
        overlap=int(counts.get("overlap") or 1),
    )


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
    """One annotation's labels of one face. `aus_present` is None when the annotation says nothing
    about the AUs (then no AU label is written), else the AUs present (the others absent)."""

    crop_id: str
    annotator: str
    emotion: str | None
    aus_present: frozenset[str] | None
    updated_at: str = ""


def _annotator(annotation: Mapping[str, Any]) -> str:
    user = annotation.get("completed_by")
    if isinstance(user, Mapping):
        user = user.get("id")
    return f"{ANNOTATOR_PREFIX}{user}"


def _choices_by_control(result: Any) -> dict[str, list[str]]:
    """{from_name: its choices} of a (checked) annotation or prediction result."""
    out: dict[str, list[str]] = {}
    for item in result or []:
        if isinstance(item, Mapping):
            choices = (item.get("value") or {}).get("choices") or []
            out.setdefault(str(item.get("from_name")), []).extend(str(c) for c in choices)
    return out


def check_annotation(
    annotation: Mapping[str, Any], controls: Mapping[str, Control]
) -> tuple[str, str] | None:
    """The first way the annotation does not fit the project's label config, as (reason code, what:
    the control and the value), or None when it fits. Besides the config, an emotion or AU must be
    one of ferlab's (a config edited on the server may offer others)."""
    result = annotation.get("result")
    if result is None:
        return None
    if not isinstance(result, list):
        return "malformed_result", f"result is a {type(result).__name__}, not a list"
    emotion_control, au_control = _controls()
    known = {
        emotion_control: EMOTIONS,
        au_control: AU_NAMES,
        reviewed_control(au_control): (AU_REVIEWED_CHOICE,),
    }
    chosen: dict[str, list[str]] = {}
    for item in result:
        if not isinstance(item, Mapping):
            return "malformed_result", f"a result item is a {type(item).__name__}"
        name = item.get("from_name")
        control = controls.get(str(name))
        if control is None:
            return "unknown_control", f"from_name {name!r} is not a control of the label config"
        if control.values is None:
            continue  # a control ferlab does not read (a comment box added on the server, ...)
        value = item.get("value")
        choices = value.get("choices") if isinstance(value, Mapping) else None
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            return "malformed_result", f"{name} value {value!r} has no list of choices"
        for c in choices:
            if c not in control.values:
                return "unknown_choice", f"{name} value {c!r} is not a choice of the label config"
            if name in known and c not in known[name]:
                return "unknown_choice", f"{name} value {c!r} is not one of ferlab's labels"
        chosen.setdefault(name, []).extend(choices)
    for name, choices in chosen.items():
        if not controls[name].multiple and len(set(choices)) > 1:
            return "too_many_choices", f"{name} values {sorted(set(choices))!r}: the label config allows one"
    return None


def labels_from_annotation(
    crop_id: str, annotation: Mapping[str, Any], prefilled: Mapping[str, list[str]] | None = None
) -> HumanLabels | None:
    """A submitted (and checked: `check_annotation`) annotation as labels; None for a skipped
    (cancelled) one. The AUs count only when the curator answered them: ticked the confirmation
    (`aus_reviewed`: the AUs not ticked are absent, none ticked = no AU present) or ticked AUs
    other than those of the prediction the annotation was pre-filled with (`prefilled`: that
    prediction's {control: choices}); otherwise `aus_present` is None and no AU label is written."""
    if annotation.get("was_cancelled"):
        return None
    emotion_control, au_control = _controls()
    chosen = _choices_by_control(annotation.get("result"))
    emotions = [c for c in chosen.get(emotion_control, []) if c in EMOTIONS]
    ticked = frozenset(c for c in chosen.get(au_control, []) if c in AU_NAMES)
    reviewed = AU_REVIEWED_CHOICE in chosen.get(reviewed_control(au_control), [])
    from_prediction = frozenset((prefilled or {}).get(au_control, [])) if prefilled is not None else None
    touched = bool(ticked) and ticked != from_prediction
    return HumanLabels(
        crop_id=crop_id,
        annotator=_annotator(annotation),
        emotion=emotions[0] if emotions else None,
        aus_present=ticked if reviewed or touched else None,
        updated_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
    )


def label_tables(labels: list[HumanLabels], image_of: Mapping[str, str]) -> tuple[pa.Table, pa.Table]:
    """emotion_labels and au_labels rows (label_source human) for these annotations' faces.
    Per (face, annotator) the newest annotation wins; faces not in `image_of` are left out; an
    annotation that did not answer the AUs writes no AU row."""
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
        if lab.aus_present is None:
            continue
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
    annotations: int  # submitted annotations read (and valid)
    skipped: int  # skipped (cancelled) annotations: nothing added
    unknown_faces: int  # annotations of tasks whose crop_id is not in this warehouse
    emotion_added: int
    emotion_updated: int
    au_added: int
    au_updated: int
    rejected: int = 0  # annotations that do not fit the label config: a reject each, no label
    emotions: dict[str, int] = field(default_factory=dict)  # annotators' current emotions, by emotion
    consensus: ConsensusReport | None = None  # faces answered by several annotators

    def summary(self) -> str:
        return (
            f"label studio project {self.project_id}: {self.annotations} annotations "
            f"({self.skipped} skipped); emotion labels +{self.emotion_added} ~{self.emotion_updated}, "
            f"AU labels +{self.au_added} ~{self.au_updated}"
            + (f"; {self.unknown_faces} of unknown faces" if self.unknown_faces else "")
            + (
                f"; {self.rejected} rejected (not in the label config: see the rejects of source {REJECT_SOURCE})"
                if self.rejected
                else ""
            )
            + (f"; {self.consensus.summary()}" if self.consensus and self.consensus.faces else "")
        )


def annotation_reject(
    project_id: int, task: Mapping[str, Any], annotation: Mapping[str, Any], reason: str, what: str
) -> Reject:
    """The `rejects` row of an annotation that does not fit the label config: the task, the
    annotation, the annotator and the value (no URL, no token: the same problem is the same row)."""
    crop_id = (task.get("data") or {}).get("crop_id")
    return Reject(
        source=REJECT_SOURCE,
        source_uri=f"labelstudio:project/{project_id}/task/{task.get('id')}/annotation/{annotation.get('id')}",
        stage="pull",
        reason=reason,
        detail=f"annotator {_annotator(annotation)}, crop {crop_id}: {what}",
    )


def pull_annotations(
    wh: Warehouse,
    client: LabelStudioClient | None = None,
    project_id: int | None = None,
    title: str = PROJECT_TITLE,
    consensus: str = DEFAULT_RULE,
) -> PullReport:
    """Write the project's submitted annotations as `human` labels, those that do not fit its label
    config as rejects, then the consensus of the faces several annotators answered under rule
    `consensus` (`majority`, `unanimous`: labeling.labelstudio.agreement); see the module docstring."""
    check_rule(consensus)
    client = client or LabelStudioClient()
    if project_id is None:
        project_id = client.find_project(title)
        if project_id is None:
            raise LabelStudioError(
                f"Label Studio at {client.settings.url} has no project {title!r}: push faces first "
                f"(`ferlab labelstudio push`)"
            )
    # Everything is read before anything is written.
    tasks = client.export_annotated(project_id)
    controls = config_controls(client.label_config(project_id), f"the label config of project {project_id}")
    prefills = _prefills(client, project_id, tasks)
    labels: list[HumanLabels] = []
    rejects: list[Reject] = []
    skipped = 0
    for task in tasks:
        crop_id = (task.get("data") or {}).get("crop_id")
        for annotation in task.get("annotations") or []:
            if not crop_id or annotation.get("was_cancelled"):
                skipped += 1
                continue
            problem = check_annotation(annotation, controls)
            if problem is not None:
                rejects.append(annotation_reject(project_id, task, annotation, *problem))
                continue
            parent = annotation.get("parent_prediction")
            lab = labels_from_annotation(str(crop_id), annotation, prefills.get(parent) if parent else None)
            if lab is not None:
                labels.append(lab)
    if rejects:
        log.warning(
            "Label Studio project %d: %d annotations do not fit the label config (rejects of source %s), "
            "e.g. %s: %s",
            project_id,
            len(rejects),
            REJECT_SOURCE,
            rejects[0].source_uri,
            rejects[0].detail,
        )
    crops = sorted({lab.crop_id for lab in labels})
    image_of = _images_of(wh, crops)
    emotion_rows, au_rows = label_tables(labels, image_of)
    wh.add_rejects(rejects)
    e = wh.append_labels("emotion_labels", emotion_rows)
    a = wh.append_labels("au_labels", au_rows)
    agreed = apply_consensus(wh, consensus)
    emotions = wh.sql(
        "SELECT emotion, count(*) AS n FROM emotion_labels WHERE label_source = 'human' "
        "AND starts_with(annotator, $panel) AND annotator <> $consensus GROUP BY 1 ORDER BY 1",
        {"panel": ANNOTATOR_PREFIX, "consensus": CONSENSUS_ANNOTATOR},
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
        rejected=len(rejects),
        emotions={r["emotion"]: int(r["n"]) for r in emotions},
        consensus=agreed,
    )


def _prefills(client: Any, project_id: int, tasks: list[dict[str, Any]]) -> dict[Any, dict[str, list[str]]]:
    """Prediction id -> its {control: choices}, for the predictions annotations were pre-filled
    with (`parent_prediction`). Label Studio's export holds prediction ids only: their results are
    fetched when some annotation names one the export does not carry."""
    wanted = {
        a.get("parent_prediction")
        for t in tasks
        for a in t.get("annotations") or []
        if a.get("parent_prediction") is not None and not a.get("was_cancelled")
    }
    if not wanted:
        return {}
    results: dict[Any, Any] = {}
    for task in tasks:
        for p in task.get("predictions") or []:
            if isinstance(p, Mapping) and p.get("id") is not None:
                results[p["id"]] = p.get("result")
    if not wanted <= set(results):
        results.update(client.prediction_results(project_id))
    return {pid: _choices_by_control(results[pid]) for pid in wanted if pid in results}


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
