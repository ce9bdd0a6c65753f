"""Screenshots of what curators and data teams see, taken by a headless browser over a finished
demo data root (`make demo`): the Dagster UI and the reports one click from it, the FiftyOne App's
review queue, and Label Studio's task list and labeling view. They land in docs/ux/ and
docs/ux/README.md shows them.

    .venv/bin/python docs/ux/screenshots.py --home var --out docs/ux

Needs Playwright's Python package (`pip install playwright`) and a Chromium: Debian's
(`apt-get install chromium`) is used as it is, so nothing is downloaded at run time. Every server
is started here on 127.0.0.1 (free ports) in its own process group and stopped by it: `ferlab dev`
(Dagster + the reports server), `ferlab review open` (FiftyOne's App) and `ferlab labelstudio
serve`, after a `ferlab labelstudio push` of the review queue.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 1600, 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s; its log:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def _server(command: list[str], url: str, log: Path, env: dict[str, str]) -> Iterator[None]:
    """Run `command` in its own process group until the block ends; wait for `url` first."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        _wait_http(url, log)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _shot(page, out: Path, name: str, full_page: bool = False) -> None:
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"wrote {path}")


def _ferlab(home: Path) -> list[str]:
    """The CLI of this repository's virtualenv (this script may run from another with Playwright)."""
    python = REPO / ".venv" / "bin" / "python"
    return [str(python if python.exists() else sys.executable), "-m", "ferlab", "--home", str(home)]


def _report_shot_name(folder: str) -> str:
    """report_au, report_emotion_compact, report_pseudo_au, report_review_emotion, ..."""
    parts = folder.split("-")
    name = parts[:2] if parts[0] in ("pseudo", "review") else parts[:1]
    return "_".join(["report", *name, *(["compact"] if folder.endswith("-compact") else [])])


def dagster_and_reports(browser, home: Path, out: Path, env: dict[str, str], logs: Path) -> None:
    # the reports port the metadata's links name (the demo's default): the summaries' plots load
    port, reports = _free_port(), int(env.get("FERLAB_REPORTS_PORT") or 3001)
    ferlab = _ferlab(home)
    command = [*ferlab, "dev", "--port", str(port), "--reports-port", str(reports)]
    with _server(command, f"http://127.0.0.1:{port}/server_info", logs / "dev.log", env):
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto(f"http://127.0.0.1:{port}/assets/au_model", wait_until="networkidle")
        with contextlib.suppress(Exception):  # the UI's first-visit newsletter dialog
            page.get_by_role("button", name="Skip").click(timeout=5000)
        page.wait_for_timeout(3000)
        _shot(page, out, "dagster_au_model")
        # the report links and the per-label table, below the fold of the metadata table
        page.fill("input[placeholder='Filter metadata keys']", "report")
        page.wait_for_timeout(1500)
        _shot(page, out, "dagster_au_model_links")
        page.goto(f"http://127.0.0.1:{port}/assets/au_eval_report", wait_until="networkidle")
        page.wait_for_timeout(3000)
        _shot(page, out, "dagster_au_eval_report")
        page.fill("input[placeholder='Filter metadata keys']", "summary")  # the report, plots rendered
        page.wait_for_timeout(1500)
        page.get_by_text("[Show Markdown]").click()
        page.wait_for_timeout(2000)
        page.mouse.move(WIDTH / 2, HEIGHT / 2)
        page.mouse.wheel(0, -20000)  # the dialog opens scrolled to its button: back to its top
        page.wait_for_timeout(500)
        page.mouse.wheel(0, 900)  # past the headline, to the first plot
        page.wait_for_timeout(3000)
        _shot(page, out, "dagster_au_eval_report_summary")
        # a CLI push (the Label Studio step, run first) is a materialization of its asset
        page.goto(f"http://127.0.0.1:{port}/assets/label_studio_tasks", wait_until="networkidle")
        page.wait_for_timeout(3000)
        _shot(page, out, "dagster_label_studio_tasks")
        version = sorted(p.name for p in (home / "reports").glob("v-*"))[-1]
        base = f"http://127.0.0.1:{reports}/reports/{version}"
        page.goto(f"{base}/index.html", wait_until="networkidle")
        _shot(page, out, "report_index", full_page=True)
        for folder in sorted((home / "reports" / version).iterdir()):
            if (folder / "report.html").is_file():
                page.goto(f"{base}/{folder.name}/report.html", wait_until="networkidle")
                _shot(page, out, _report_shot_name(folder.name))
        page.close()


def fiftyone(browser, home: Path, out: Path, env: dict[str, str], logs: Path) -> None:
    port = _free_port()
    command = [*_ferlab(home), "review", "open", "--port", str(port)]
    with _server(command, f"http://127.0.0.1:{port}/", logs / "fiftyone.log", env):
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        # the App polls its server for ever: "load", then time to draw the grid
        page.goto(f"http://127.0.0.1:{port}/datasets/ferlab?view=review-queue", wait_until="load")
        page.wait_for_timeout(12000)
        with contextlib.suppress(Exception):  # the App's advertisement
            page.get_by_text("Dismiss").click(timeout=3000)
        _shot(page, out, "fiftyone_review_queue")
        page.mouse.click(395, 250)  # the first patch of the grid opens in the modal
        page.wait_for_timeout(6000)
        page.mouse.click(1545, 494)  # the sidebar's face_emotions entry: its attributes' values
        page.wait_for_timeout(3000)
        page.mouse.move(600, 600)  # over the face: the tooltip lists the face's attributes
        page.wait_for_timeout(2000)
        _shot(page, out, "fiftyone_patch")
        page.goto(
            f"http://127.0.0.1:{port}/datasets/ferlab?view=review-queue-weak-disagrees", wait_until="load"
        )
        page.wait_for_timeout(10000)
        _shot(page, out, "fiftyone_review_queue_weak_disagrees")
        page.close()


def label_studio(browser, home: Path, out: Path, env: dict[str, str], logs: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **env,
        "LABEL_STUDIO_URL": url,
        "LABEL_STUDIO_API_KEY": env.get("LABEL_STUDIO_API_KEY") or secrets.token_hex(20),
    }
    ferlab = [*_ferlab(home), "labelstudio"]
    with _server([*ferlab, "serve", "--port", str(port)], f"{url}/health", logs / "labelstudio.log", env):
        subprocess.run([*ferlab, "push"], env=env, check=True)

        def api(path: str):
            request = urllib.request.Request(
                f"{url}{path}", headers={"Authorization": f"Token {env['LABEL_STUDIO_API_KEY']}"}
            )
            with urllib.request.urlopen(request) as answer:
                return json.load(answer)

        projects = api("/api/projects/")
        project = (projects.get("results") if isinstance(projects, dict) else projects)[0]["id"]
        tasks = api(f"/api/tasks/?project={project}&page_size=500")
        tasks = tasks.get("tasks", tasks) if isinstance(tasks, dict) else tasks
        # the face that waits most: the queue's first
        top = max(tasks, key=lambda t: float(t["data"].get("priority") or 0))
        page = browser.new_page(viewport={"width": WIDTH, "height": 1100})
        page.goto(f"{url}/user/login/", wait_until="networkidle")
        page.fill("input[name=email]", "admin@ferlab.local")
        page.fill("input[name=password]", (home / "labelstudio" / "admin-password").read_text().strip())
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(f"{url}/projects/{project}/data", wait_until="networkidle")
        page.wait_for_timeout(5000)
        _shot(page, out, "labelstudio_task_list")
        page.goto(f"{url}/projects/{project}/data?task={top['id']}", wait_until="networkidle")
        page.wait_for_timeout(8000)
        _shot(page, out, "labelstudio_labeling")
        page.close()


def main(argv: list[str] | None = None) -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a finished demo data root")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ux")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--only", nargs="*", choices=["dagster", "fiftyone", "labelstudio"])
    args = parser.parse_args(argv)
    home = args.home.resolve()
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / "ferlab-screenshots"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "FERLAB_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("DAGSTER_HOME", None)
    args.out.mkdir(parents=True, exist_ok=True)
    # Label Studio first: its push is then a materialization the Dagster UI shows
    steps = {"labelstudio": label_studio, "dagster": dagster_and_reports, "fiftyone": fiftyone}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        try:
            for name in args.only or steps:
                steps[name](browser, home, args.out, env, logs)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
