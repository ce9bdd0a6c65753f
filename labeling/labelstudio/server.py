"""The Label Studio server: its own virtualenv (`make labelstudio-setup`: it conflicts with the
main one), started on 127.0.0.1 with its data under `<data root>/labelstudio/` and the data
root served as local files (so tasks show `media/...` crops).

The admin user is created on the first start of a data dir with `LABEL_STUDIO_API_KEY` as its
(legacy) token, so the server and every client share one variable. The admin's password is
$LABEL_STUDIO_PASSWORD, else the same key. No analytics, version checks or Sentry: nothing
leaves the machine. The key goes into the server's environment only, never into a command line,
a log line or an error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from labeling.labelstudio.sync import KEY_ENV, LabelStudioError
from warehouse.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]  # labeling/labelstudio/server.py
DEFAULT_PORT = 8089
HOST = "127.0.0.1"
ADMIN_USER = "admin@ferlab.local"
BIN_ENV = "LABEL_STUDIO_BIN"  # the `label-studio` executable, when not in ./.venv-labelstudio
DATA_SUBDIR = "labelstudio"
MAX_TOKEN_LENGTH = 40  # Label Studio's token column


def find_executable() -> Path:
    """$LABEL_STUDIO_BIN, else <repo>/.venv-labelstudio/bin/label-studio, else `label-studio` on PATH."""
    candidates = [os.environ.get(BIN_ENV), str(REPO / ".venv-labelstudio" / "bin" / "label-studio")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    found = shutil.which("label-studio")
    if found:
        return Path(found)
    raise ConfigError(
        "the Label Studio server is not installed: run `make labelstudio-setup` (its own virtualenv, "
        f".venv-labelstudio) or set {BIN_ENV} to a `label-studio` executable"
    )


def server_env(
    home: str | os.PathLike, api_key: str, base_env: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of `label-studio start` over data root `home`."""
    if not api_key:
        raise ConfigError(
            f"{KEY_ENV} is not set: choose a token (up to {MAX_TOKEN_LENGTH} letters and digits, e.g. "
            f'`export {KEY_ENV}=$(python -c "import secrets; print(secrets.token_hex(20))")`); the '
            "server makes it the admin's token and the clients use it"
        )
    if len(api_key) > MAX_TOKEN_LENGTH or not api_key.isalnum():
        raise ConfigError(f"{KEY_ENV} must be 1 to {MAX_TOKEN_LENGTH} letters and digits")
    home = Path(home).resolve()
    data = home / DATA_SUBDIR
    env = dict(os.environ if base_env is None else base_env)
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data),
        LABEL_STUDIO_USERNAME=env.get("LABEL_STUDIO_USERNAME") or ADMIN_USER,
        LABEL_STUDIO_PASSWORD=env.get("LABEL_STUDIO_PASSWORD") or api_key,
        LABEL_STUDIO_USER_TOKEN=api_key,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(home),
        LABEL_STUDIO_LATEST_VERSION_CHECK="false",
        LABEL_STUDIO_COLLECT_ANALYTICS="false",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        PYTHONUNBUFFERED="1",
    )
    return env


def start_command(port: int = DEFAULT_PORT) -> list[str]:
    return [str(find_executable()), "start", "--no-browser", "--internal-host", HOST, "--port", str(port)]


def health_url(port: int) -> str:
    return f"http://{HOST}:{port}/health"


def is_healthy(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(health_url(port), timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def start_server(
    home: str | os.PathLike,
    port: int,
    api_key: str,
    log_path: str | os.PathLike,
    base_env: dict | None = None,
) -> subprocess.Popen:
    """Start the server in its own process group (stop it with `stop_server`), output to `log_path`."""
    env = server_env(home, api_key, base_env)
    Path(env["LABEL_STUDIO_BASE_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    command = start_command(port)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            cwd=env["LABEL_STUDIO_BASE_DATA_DIR"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_healthy(
    proc: subprocess.Popen, port: int, timeout: float = 600, log_path: str | None = None
) -> float:
    """Wait until /health answers (about 30 s on a fresh data dir, minutes on a busy machine);
    returns the seconds waited. A server that exits or never answers is a LabelStudioError."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise LabelStudioError(f"Label Studio exited with code {proc.returncode}{_tail(log_path)}")
        if is_healthy(port):
            return time.monotonic() - start
        time.sleep(1)
    raise LabelStudioError(
        f"Label Studio did not answer on {health_url(port)} in {timeout:.0f} s{_tail(log_path)}"
    )


def stop_server(proc: subprocess.Popen, grace: float = 30) -> None:
    """Stop the server's whole process group (SIGTERM, then SIGKILL after `grace` seconds)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children left behind by a server that exited
    proc.wait()


def serve(home: str | os.PathLike, port: int = DEFAULT_PORT, api_key: str | None = None) -> None:
    """Run the server in the foreground: this process becomes `label-studio start` (exec), so
    Ctrl-C, SIGTERM and a stop by process group reach the server itself. Does not return."""
    env = server_env(home, api_key if api_key is not None else os.environ.get(KEY_ENV, ""))
    Path(env["LABEL_STUDIO_BASE_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    command = start_command(port)
    os.chdir(env["LABEL_STUDIO_BASE_DATA_DIR"])
    os.execve(command[0], command, env)


def _tail(log_path: str | os.PathLike | None, chars: int = 3000) -> str:
    if not log_path or not Path(log_path).is_file():
        return ""
    return "; its log ends:\n" + Path(log_path).read_text(errors="replace")[-chars:]
