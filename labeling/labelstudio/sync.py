"""Label Studio as the curators' labeling tool: push queued faces as tasks (both production
models' calls pre-filled, their probabilities shown), pull submitted annotations back as `human`
labels of those faces.

The server (`labeling.labelstudio.server`, `ferlab labelstudio serve`) runs from its own
virtualenv; this module only talks to it over HTTP through `label_studio_sdk` 2.x. Where it is:
$LABEL_STUDIO_URL (default http://127.0.0.1:8089); the token: $LABEL_STUDIO_API_KEY (the
server's admin token, a legacy `Token`). The key never appears in a repr, a log or an error.

One project (`PROJECT_TITLE`) holds face tasks. A task's `data` (`task_data`; its keys are the
Data Manager's columns, the readable ones first): queue, reasons, priority, weak_label, source
(from `queued_faces`: every review_queue row of the face, the image's source, the weak labels of
the face or its image), asked (what the models are unsure of: the curator's question), detail (the
queue's "reason: detail" lines), models (the two model ids); then image (the crop, served by Label
Studio from the data root: `/data/local-files/?d=media/ab/<sha>.jpg`), the models' tables
model_emotions, model_aus_upper, model_aus_lower (`model_tables`: each label's probability and the
model's call: present, absent or UNSURE — asked), and crop_id, image_id (pull reads crop_id).
The models' views come from `queue_views` (labeling.curation.model_view.production_views: the
emotion and AU production models, whichever queue queued the face, at the pseudo-label cuts;
their stored pseudo labels where a model's files are gone). One prediction per task
(`prediction_for`) pre-fills both models' calls: the emotion the emotion model calls present, the
AUs the AU model calls present; an unsure emotion or AU is not pre-filled, the tables mark it.
Its model_version names both models ("emotion-… + au-…"), and each push makes it the project's
(Label Studio pre-fills only the project's model_version in the labeling stream).

The label config (`label_config_xml`), two columns: the crop (300 px) and the `asked` line on the
left; on the right a single-choice `emotion` over EMOTIONS, a multiple-choice `aus` over the 12
DISFA AUs shown with their FACS names and stored as bare codes (`<Choice value="AU4 brow lowerer"
alias="AU4"/>`: results and exports hold "AU4"), `aus_reviewed` (the curator's confirmation that
all 12 AUs were looked at, so that the AUs not ticked are absent) and the models' tables (Table
tags; the AUs split upper / lower face, as a Table shows 10 rows a page). `ensure_project` gives a
project with one of ferlab's earlier configs (`is_ferlab_config`) the current one, and a new or
so updated project a Data Manager tab (`queue_tab`: the readable columns, highest priority
first). Annotations made under an earlier config stay valid: its AU values were the same codes.

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
Tasks pushed by an earlier ferlab keep their data: under the current config their tables are
empty and nothing is marked asked (they are not pushed again while they exist).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

import pyarrow as pa

from labeling.curation.model_view import LabelCall, ModelView, named
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


IMAGE_WIDTH_PX = 300  # the face's column in the labeling view (crops are 224 px)
TABLES_CLASS = "ferlab-models"  # the models' tables: compact rows, so that 12 AUs fit beside the choices
TABLE_CSS = f".{TABLES_CLASS} th, .{TABLES_CLASS} td {{ padding: 2px 8px !important; font-size: 13px; }}"
EMOTION_TABLE = "model_emotions"  # task data / Table tag: the emotion model's probability of every emotion
# task data / Table tags: the AU model's probability and call of the upper-face and lower-face AUs
# (FACS's split; two tables, as Label Studio's Table shows 10 rows a page)
AU_TABLES: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("model_aus_upper", "upper face AU", (1, 2, 4, 5, 6)),
    ("model_aus_lower", "lower face AU", (9, 12, 15, 17, 20, 25, 26)),
)
ASKED = "asked"  # task data / Text tag: what the models are unsure of, i.e. what the curator is asked
UNSURE = "UNSURE — asked"  # a table's call of a label the model cannot call: the curator's question


def au_choice_value(au: str) -> str:
    """What an AU choice shows: the code and its FACS name ("AU4 brow lowerer"); results store the
    bare code (the choice's alias)."""
    return named(au)


def label_config_xml() -> str:
    """The project's labeling interface, two columns: the face crop and what the models are unsure
    of (`$asked`) on the left; on the right one emotion, any of the 12 DISFA AUs (shown with their
    FACS names, stored as "AU4": the choice's alias), the confirmation that the AUs were reviewed
    (without it, an answer says nothing of the AUs not ticked) and the two models' views as tables
    (`$model_emotions`, `$model_aus_upper`, `$model_aus_lower`: each label's probability and the
    model's call), in rows kept compact by a Style so that the view fits a 1600 x 1100 screen."""
    emotion_control, au_control = _controls()
    emotions = "\n".join(f"      <Choice value={quoteattr(e)}/>" for e in EMOTIONS)
    aus = "\n".join(
        f"      <Choice value={quoteattr(au_choice_value(a))} alias={quoteattr(a)}/>" for a in AU_NAMES
    )
    reviewed = reviewed_control(au_control)
    hint = "tick once all 12 AUs are checked: the AUs not ticked are then recorded as absent"
    width = f"{IMAGE_WIDTH_PX}px"
    return (
        '<View style="display: flex; gap: 24px; align-items: flex-start;">\n'
        f"  <Style>{TABLE_CSS}</Style>\n"
        f'  <View style="flex: 0 0 {width}; max-width: {width};">\n'
        f'    <Image name="image" value="$image" width="{width}" maxWidth="{width}"/>\n'
        f'    <Text name="{ASKED}" value="${ASKED}"/>\n'
        "  </View>\n"
        '  <View style="flex: 1 1 0; min-width: 0;">\n'
        '    <Header value="Emotion" size="4"/>\n'
        f'    <Choices name={quoteattr(emotion_control)} toName="image" choice="single" showInline="true">\n'
        f"{emotions}\n    </Choices>\n"
        '    <Header value="Action Units present" size="4"/>\n'
        f'    <Choices name={quoteattr(au_control)} toName="image" choice="multiple" showInline="true">\n'
        f"{aus}\n    </Choices>\n"
        f'    <Choices name={quoteattr(reviewed)} toName="image" choice="multiple" showInline="true">\n'
        f"      <Choice value={quoteattr(AU_REVIEWED_CHOICE)} hint={quoteattr(hint)}/>\n    </Choices>\n"
        '    <Header value="What the models say (p: probability)" size="5"/>\n'
        f'    <View className="{TABLES_CLASS}" style="display: flex; gap: 16px; align-items: flex-start;">\n'
        f'      <View style="flex: 0 0 250px;"><Table name="{EMOTION_TABLE}" value="${EMOTION_TABLE}"/></View>\n'
        '      <View style="flex: 1 1 0; min-width: 0;">\n'
        + "".join(f'        <Table name="{name}" value="${name}"/>\n' for name, _, _ in AU_TABLES)
        + "      </View>\n"
        "    </View>\n"
        "  </View>\n"
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


FERLAB_TAGS = frozenset({"View", "Style", "Image", "Text", "Header", "Choices", "Choice", "Table"})


def _controls_or_none(label_config: str) -> dict[str, Control]:
    try:
        return config_controls(label_config)
    except ConfigError:
        return {}


def is_ferlab_config(label_config: str) -> bool:
    """Whether a label config is one ferlab made (this version's or an earlier one), which it may
    replace: only the tags ferlab uses, its emotion and AU controls (the AU confirmation optional)
    and no choice that is not one of ferlab's labels. Anything else was edited on the server."""
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError:
        return False
    if any(tag.tag not in FERLAB_TAGS for tag in root.iter()):
        return False
    emotion_control, au_control = _controls()
    known = {
        emotion_control: frozenset(EMOTIONS),
        au_control: frozenset(AU_NAMES),
        reviewed_control(au_control): frozenset({AU_REVIEWED_CHOICE}),
    }
    controls = config_controls(label_config)
    if not {emotion_control, au_control} <= set(controls) <= set(known):
        return False
    return all(c.values is not None and c.values <= known[name] for name, c in controls.items())


QUEUE_TAB = "ferlab queue"  # the Data Manager tab ferlab makes
# Label Studio's own columns that its default tab hides (1.23), and the prediction's model version
_HIDDEN_BUILTIN = (
    "inner_id",
    "annotations_results",
    "annotations_ids",
    "predictions_score",
    "predictions_model_versions",  # the task data's `models` says it
    "predictions_results",
    "file_upload",
    "storage_filename",
    "created_at",
    "updated_at",
    "updated_by",
    "avg_lead_time",
    "draft_exists",
)


# narrower than Label Studio's default width, so that the readable columns fit a 1600 px screen
_COLUMN_WIDTHS = {
    "completed_at": 110,
    "annotators": 110,
    "data.image": 100,
    f"data.{ASKED}": 230,
    "data.queue": 120,
    "data.reasons": 150,
    "data.priority": 80,
    "data.weak_label": 100,
    "data.source": 90,
}


def queue_tab() -> dict[str, Any]:
    """The Data Manager tab of the face project (`QUEUE_TAB`): the task data's readable columns
    (queue, reasons, priority, weak label, source, asked, detail, models) beside the crop, the
    highest priority first; the face's ids and the models' tables hidden (the labeling view shows
    the tables). Beside the labeling view only the crop."""
    builtin = [f"tasks:{c}" for c in _HIDDEN_BUILTIN]
    unreadable = [
        f"tasks:data.{k}" for k in ("crop_id", "image_id", EMOTION_TABLE, *(n for n, _, _ in AU_TABLES))
    ]
    readable = [f"tasks:data.{k}" for k in ("queue", "reasons", "priority", "weak_label", "source", ASKED)]
    readable += ["tasks:data.detail", "tasks:data.models"]
    labeling = ["tasks:id", "tasks:completed_at", "tasks:cancelled_annotations", "tasks:total_predictions"]
    labeling += ["tasks:annotators"]
    return {
        "title": QUEUE_TAB,
        "type": "list",
        "target": "tasks",
        "hiddenColumns": {
            "explore": builtin + unreadable,
            "labeling": builtin + unreadable + readable + labeling,
        },
        "ordering": ["-tasks:data.priority"],
        "columnsWidth": {f"tasks:{k}": w for k, w in _COLUMN_WIDTHS.items()},
    }


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
        """The id of the face project (created with `label_config_xml()` when missing; one with an
        earlier ferlab label config gets the current one: `_ensure_label_config`), with a
        local-files storage over `<home>/media` so its crops are served."""
        project_id = self.find_project(title)
        if project_id is not None:
            changed = self._ensure_label_config(project_id)
        else:
            with _calls(self.settings, "create the project"):
                project = self.sdk.projects.create(
                    title=title,
                    label_config=label_config_xml(),
                    description="Face crops queued by ferlab: the emotion and the Action Units present.",
                    show_skip_button=True,
                )
            project_id, changed = int(project.id), True
        if changed:
            self._ensure_queue_tab(project_id)
        self._ensure_local_storage(project_id, os.path.join(os.path.abspath(home), "media"))
        return project_id

    def _ensure_label_config(self, project_id: int) -> bool:
        """Give a project with one of ferlab's earlier label configs (bare AU codes, no AU
        confirmation, no models' tables, ...) the current one; returns whether it changed. Label
        Studio keeps the annotations, which stay valid: the AU choices store the same codes (their
        alias). A config edited on the server otherwise (`is_ferlab_config`), or one the server
        refuses to replace, is left as it is (logged)."""
        config = self.label_config(project_id)
        current = label_config_xml()
        if config.strip() == current.strip():
            return False
        if not is_ferlab_config(config):
            _, au_control = _controls()
            log.warning(
                "Label Studio project %d has a label config edited on the server: left as it is, without "
                "ferlab's current labeling view%s",
                project_id,
                ""
                if reviewed_control(au_control) in _controls_or_none(config)
                else f" (no {reviewed_control(au_control)!r} control: only ticked AUs count as an AU answer)",
            )
            return False
        try:
            with _calls(self.settings, "update the label config"):
                self.sdk.projects.update(id=project_id, label_config=current)
        except LabelStudioError as exc:
            log.warning("Label Studio project %d keeps its label config: %s", project_id, exc)
            return False
        log.info("Label Studio project %d: label config updated to ferlab's current one", project_id)
        return True

    def _ensure_queue_tab(self, project_id: int) -> None:
        """Give the project's Data Manager the tab `QUEUE_TAB` (when it has none of that title):
        the readable columns (queue, reasons, priority, weak label, source, what is asked), the
        highest priority first; the ids and the models' tables hidden. Made with the project or
        when ferlab updates its label config, so a tab a curator deleted stays deleted."""
        with _calls(self.settings, "list the Data Manager tabs"):
            if any((v.data or {}).get("title") == QUEUE_TAB for v in self.sdk.views.list(project=project_id)):
                return
        with _calls(self.settings, "make the Data Manager tab"):
            self.sdk.views.create(project=project_id, data=queue_tab())

    def set_model_version(self, project_id: int, version: str) -> bool:
        """Have the project pre-fill tasks with the predictions of `version` (Label Studio's labeling
        stream shows only the project's model_version; it takes the first one imported); returns
        whether it changed. Tasks pushed with other models keep their predictions, shown in the
        task's predictions list."""
        with _calls(self.settings, "read the project"):
            before = self.sdk.projects.get(id=project_id).model_version
        if before == version:
            return False
        with _calls(self.settings, "set the model version"):
            self.sdk.projects.update(id=project_id, model_version=version)
        log.info(
            "Label Studio project %d: tasks pre-filled by %s (was %r)", project_id, version, before or ""
        )
        return True

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


def _p(probability: float) -> str:
    """A probability as the tables show it ("0.62"; "?" when unknown)."""
    return "?" if math.isnan(probability) else f"{probability:.2f}"


def model_tables(views: Mapping[str, ModelView]) -> dict[str, list[dict[str, str]]]:
    """The task data of the labeling view's tables (Label Studio's Table tag shows a list of rows,
    their keys as columns): the emotion model's probability of every emotion, most probable first,
    with its call; the AU model's probability of every AU with its call (present: pre-ticked,
    absent, UNSURE: asked; "not predicted" for an AU the model has no output for), in the choices'
    order, upper-face and lower-face AUs apart (`AU_TABLES`). A missing model gives empty tables."""
    out: dict[str, list[dict[str, str]]] = {EMOTION_TABLE: [], **{name: [] for name, _, _ in AU_TABLES}}
    emotion = views.get("emotion")
    if emotion is not None:
        calls = sorted(emotion.calls, key=lambda c: -c.probability if not math.isnan(c.probability) else 1.0)
        for c in calls:
            mark = {"present": "present (pre-filled)", "unsure": UNSURE}.get(c.state, "")
            out[EMOTION_TABLE].append({"emotion": c.label, "p": _p(c.probability), "call": mark})
    au = views.get("au")
    if au is not None:
        by_label = {c.label: c for c in au.calls}
        for name, title, numbers in AU_TABLES:
            for label in (f"AU{n}" for n in numbers):
                c = by_label.get(label)
                if c is None:  # an AU the model does not predict (AU models predict the seed's 8)
                    out[name].append({title: au_choice_value(label), "p": "—", "call": "not predicted"})
                    continue
                mark = {"present": "present (pre-ticked)", "absent": "absent", "unsure": UNSURE}[c.state]
                out[name].append({title: au_choice_value(label), "p": _p(c.probability), "call": mark})
    return out


def asked_line(views: Mapping[str, ModelView]) -> str:
    """What the models are unsure of, i.e. what the curator is asked (the `asked` column and the
    line under the face): the emotion when the emotion model cannot call it, the AUs between the
    AU model's thresholds."""
    parts = []
    emotion = views.get("emotion")
    if emotion is not None and emotion.with_state("unsure"):
        top = emotion.with_state("unsure")[0]
        parts.append(f"the emotion (best guess {top.label} {_p(top.probability)})")
    au = views.get("au")
    if au is not None:
        unsure = [c for c in au.calls if c.state == "unsure" and c.label in AU_NAMES]
        parts.extend(f"{au_choice_value(c.label)} ({_p(c.probability)})" for c in unsure)
    if parts:
        return "Asked, the models are unsure: " + "; ".join(parts)
    if not views:
        return "No model view of this face: label it from the picture"
    return "The models are sure of every label they have: check their calls"


def models_version(views: Iterable[Mapping[str, ModelView]]) -> str:
    """The prediction's model_version: the emotion and AU models' ids ("emotion-… + au-…")."""
    ids: dict[str, set[str]] = {}
    for by_task in views:
        for task, view in by_task.items():
            ids.setdefault(task, set()).add(view.model_id)
    return " + ".join(m for task in ("emotion", "au") for m in sorted(ids.get(task, ())))


def prediction_for(views: Mapping[str, ModelView], model_version: str | None = None) -> dict[str, Any] | None:
    """One Label Studio prediction from both models' views of a face ({"emotion": ModelView, "au":
    ModelView}, either may be missing): the emotion the emotion model calls present, the AUs the
    AU model calls present (an unsure AU is not ticked: the tables mark it). model_version: both
    models' ids (`models_version`) unless given; score: the mean certainty, the emotion's top
    probability and each AU's max(p, 1 - p). None when neither model calls anything."""
    emotion_control, au_control = _controls()
    result: list[dict[str, Any]] = []
    certainty: list[float] = []
    emotion = views.get("emotion")
    if emotion is not None:
        called = [c.label for c in emotion.with_state("present") if c.label in EMOTIONS]
        if called:
            result.append(_choices(emotion_control, called[:1]))
        if not math.isnan(emotion.top.probability):
            certainty.append(emotion.top.probability)
    au = views.get("au")
    if au is not None:
        present = {c.label for c in au.with_state("present")}
        ticked = [a for a in AU_NAMES if a in present]
        if ticked:
            result.append(_choices(au_control, ticked))
        certainty.extend(
            max(c.probability, 1 - c.probability) for c in au.calls if not math.isnan(c.probability)
        )
    if not result:
        return None
    version = model_version or models_version([views])
    score = sum(certainty) / len(certainty) if certainty else None
    return {"model_version": version, "score": None if score is None else round(score, 6), "result": result}


def _choices(name: str, values: list[str]) -> dict[str, Any]:
    return {"from_name": name, "to_name": "image", "type": "choices", "value": {"choices": values}}


def _joined(values: Any, sep: str = ", ") -> str:
    """A list of a `queued_faces` row as one column ("" for none); a string as it is."""
    if values is None:
        return ""
    if isinstance(values, str):
        return values
    return sep.join(str(v) for v in values if v)


def task_data(row: Mapping[str, Any], views: Mapping[str, ModelView] | None = None) -> dict[str, Any]:
    """A face's task `data`: first the Data Manager's readable columns (queue, reasons, priority,
    weak label, source, what the curator is asked, the queue's details, the models), then what
    the labeling view shows (the crop, the two models' tables) and the face's ids (pull reads
    crop_id). `row`: a `queued_faces` row (a bare review_queue row does too)."""
    views = views or {}
    return {
        "queue": _joined(row.get("queues") or row.get("queue")),
        "reasons": _joined(row.get("reasons") or row.get("reason")),
        "priority": round(float(row.get("priority") or 0.0), 3),
        "weak_label": _joined(row.get("weak_label")),
        "source": _joined(row.get("source")),
        ASKED: asked_line(views),
        "detail": _joined(row.get("details") or row.get("detail"), "; "),
        "models": models_version([views]),
        "image": image_url(str(row["media_path"])),
        **model_tables(views),
        "crop_id": str(row["crop_id"]),
        "image_id": row.get("image_id"),
    }


def push_faces(
    wh: Warehouse,
    queue_rows: Iterable[Mapping[str, Any]],
    views: Mapping[str, Mapping[str, ModelView]] | None = None,
    client: LabelStudioClient | None = None,
    title: str = PROJECT_TITLE,
    overlap: int | None = None,
) -> PushReport:
    """Push the queued faces (`queued_faces` rows; bare review_queue rows do too) as tasks of the
    face project: `task_data` (the readable columns, the crop, the models' tables) and, where
    `views` (crop_id -> {"emotion": ModelView, "au": ModelView}: `queue_views`) calls something,
    one prediction pre-filling both models' calls (`prediction_for`; the project's model_version
    is set to this push's, so that the labeling stream pre-fills these tasks). A face with a task
    of the project on the server adds nothing; one recorded as pushed whose task is gone from the
    server (deleted there) is pushed again. Records each task in `label_studio_tasks`. `overlap`:
    give each task to that many annotators (None: as the project has it)."""
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
        views = views or {}
        version = models_version(views.get(c) or {} for c in new)
        tasks = []
        for crop_id in new:
            by_task = views.get(crop_id) or {}
            task: dict[str, Any] = {"data": task_data(faces[crop_id], by_task)}
            made = prediction_for(by_task, version) if by_task else None
            if made:
                task["predictions"] = [made]
                report["with_prediction"] += 1
            tasks.append(task)
        if tasks:
            report["pushed"] = client.import_tasks(project_id, tasks)
            if report["with_prediction"]:  # Label Studio takes a model version its predictions have
                try:
                    client.set_model_version(project_id, version)
                except LabelStudioError as exc:  # the tasks are there: say why they are not pre-filled
                    log.warning(
                        "Label Studio project %d: the labeling stream may not pre-fill %s: %s",
                        project_id,
                        version,
                        exc,
                    )
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


def queue_views(
    wh: Warehouse, rows: Iterable[Mapping[str, Any]], predict: bool = True, batch_size: int = 64
) -> dict[str, dict[str, ModelView]]:
    """Both production models' views of the queued faces (`queued_faces` rows), whichever queue
    queued them: crop_id -> {"emotion": ModelView, "au": ModelView}
    (`labeling.curation.model_view.production_views`). Read from the models' prediction caches
    (the review queue ran them); the faces a cache lacks are predicted when `predict`; where a
    model's files are gone, its stored pseudo labels of the face stand in (`stored_views`). A task
    without a production model gives no view."""
    from labeling.curation.model_view import production_models, production_views

    ids = sorted({str(r["crop_id"]) for r in rows})
    models = production_models(wh)
    if not ids or not models:
        if ids:
            log.info("no production model: %d faces are pushed without the models' views", len(ids))
        return {}
    views = production_views(wh, ids)
    todo = [c for c in ids if not set(models) <= set(views.get(c, {}))]
    if predict and todo:
        for crop_id, by_task in production_views(wh, todo, predict=True, batch_size=batch_size).items():
            views.setdefault(crop_id, {}).update(by_task)
    for task, model in models.items():
        missing = [c for c in ids if task not in views.get(c, {})]
        stored = stored_views(wh, missing, task, model.model_id) if missing else {}
        for crop_id, view in stored.items():
            views.setdefault(crop_id, {})[task] = view
        if len(missing) > len(stored):
            log.warning(
                "%s: no prediction and no stored pseudo label of %d queued faces (e.g. %s)",
                model.model_id,
                len(missing) - len(stored),
                next(c for c in missing if c not in stored),
            )
    return views


def stored_views(wh: Warehouse, crop_ids: Iterable[str], task: str, model_id: str) -> dict[str, ModelView]:
    """The model's stored `pseudo` labels of these faces as its views (the fallback of `queue_views`
    when the model's files are gone; withdrawn labels left out). An emotion pseudo label is the
    model's present call, with its confidence (the other emotions are not stored); an AU's label
    is its present or absent call with its probability, and an AU of the task (`AUTask.labels`)
    without one was between the thresholds: unsure, probability unknown (NaN). Faces without
    pseudo labels are left out."""
    ids = sorted(set(crop_ids))
    if not ids:
        return {}
    from labeling.curation.pseudo import WITHDRAWN  # loads torch: when a model's files are gone only

    params = {"ids": ids, "model": model_id, "withdrawn": WITHDRAWN}
    where = (
        "label_source = 'pseudo' AND annotator = $model AND list_contains($ids, crop_id) "
        "AND calibration IS DISTINCT FROM $withdrawn"
    )
    return STORED_VIEWS[task](wh, where, params, model_id)


def _stored_emotion_views(
    wh: Warehouse, where: str, params: dict[str, Any], model_id: str
) -> dict[str, ModelView]:
    out: dict[str, ModelView] = {}
    rows = wh.sql(
        f"SELECT crop_id, emotion, confidence FROM emotion_labels WHERE {where} "
        "ORDER BY crop_id, confidence DESC NULLS LAST",
        params,
    )
    for r in rows.to_pylist():
        if r["crop_id"] not in out and r["emotion"] in EMOTIONS:
            p = float("nan") if r["confidence"] is None else round(float(r["confidence"]), 4)
            out[r["crop_id"]] = ModelView("emotion", model_id, (LabelCall(r["emotion"], p, "present"),))
    return out


def _stored_au_views(
    wh: Warehouse, where: str, params: dict[str, Any], model_id: str
) -> dict[str, ModelView]:
    rows = wh.sql(f"SELECT crop_id, au, present, probability FROM au_labels WHERE {where}", params)
    stored: dict[str, dict[str, LabelCall]] = {}
    for r in rows.to_pylist():
        name = f"AU{r['au']}"
        p = float("nan") if r["probability"] is None else round(float(r["probability"]), 4)
        stored.setdefault(r["crop_id"], {})[name] = LabelCall(
            name, p, "present" if r["present"] else "absent"
        )
    from models.tasks import get_task

    predicted = [a for a in AU_NAMES if a in get_task("au").labels]  # what the model's run would say
    out: dict[str, ModelView] = {}
    for crop_id, calls in stored.items():
        labels = [a for a in AU_NAMES if a in calls or a in predicted]
        every = tuple(calls.get(a) or LabelCall(a, float("nan"), "unsure") for a in labels)
        out[crop_id] = ModelView("au", model_id, every)
    return out


# How each task's pseudo labels read back as a view: the tables differ.
STORED_VIEWS = {"emotion": _stored_emotion_views, "au": _stored_au_views}


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
    """The review_queue's faces (optionally of one queue), highest priority first, one row per face:
    crop_id, image_id, media_path, model_id and priority (of its highest-priority row), its queues
    and reasons (sorted lists), details ("reason: detail", highest priority first), the image's
    source and the face's weak label(s) (emotion_labels rows of label_source weak of the face or
    its image, e.g. a scraped folder's emotion; None without one)."""
    where = "WHERE queue = $queue" if queue else ""
    rows = wh.sql(
        "WITH q AS (SELECT crop_id, any_value(image_id ORDER BY priority DESC) AS image_id, "
        "any_value(media_path ORDER BY priority DESC) AS media_path, "
        "any_value(model_id ORDER BY priority DESC) AS model_id, max(priority) AS priority, "
        "list_sort(list(DISTINCT queue)) AS queues, list_sort(list(DISTINCT reason)) AS reasons, "
        "list(reason || coalesce(': ' || detail, '') ORDER BY priority DESC, reason) AS details "
        f"FROM review_queue {where} GROUP BY crop_id), "
        "w AS (SELECT q.crop_id, string_agg(DISTINCT e.emotion, ', ' ORDER BY e.emotion) AS weak_label "
        "FROM q JOIN emotion_labels e ON e.label_source = 'weak' "
        "AND (e.crop_id = q.crop_id OR (e.crop_id IS NULL AND e.image_id = q.image_id)) GROUP BY q.crop_id) "
        "SELECT q.*, i.source, w.weak_label FROM q LEFT JOIN images i ON i.image_id = q.image_id "
        "LEFT JOIN w ON w.crop_id = q.crop_id ORDER BY q.priority DESC, q.crop_id",
        {"queue": queue} if queue else None,
    )
    return rows.to_pylist()
