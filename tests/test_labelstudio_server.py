"""The Label Studio server's data folder and admin password (issue 21, defect 3): the folder that
holds the admin's token (database, media, logs) is private to its owner, checked and tightened at
every start, and the admin's password is never the token.

The fast tests stand a tiny script in for `label-studio` ($LABEL_STUDIO_BIN) and build old data
roots by hand; one `server` test starts the real server and signs in."""

from __future__ import annotations

import base64
import hashlib
import http.cookiejar
import os
import re
import secrets
import socket
import sqlite3
import stat
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from labeling.labelstudio import server
from warehouse.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
KEY = "0123456789abcdef0123456789abcdef01234567"


# ---- helpers -----------------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _not_private(root: Path) -> list[str]:
    """Every entry under (and including) `root` that a group or other users can access."""
    paths = [root, *root.rglob("*")]
    return [f"{p.relative_to(root.parent)} {_mode(p):o}" for p in paths if _mode(p) & 0o077]


def _django_hash(password: str, iterations: int = 1000) -> str:
    """Django's pbkdf2_sha256 encoding, written out here so the tests do not trust server.py's."""
    salt = secrets.token_hex(11)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


def _django_check(password: str, encoded: str) -> bool:
    algorithm, iterations, salt, expected = encoded.split("$")
    assert algorithm == "pbkdf2_sha256"
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), int(iterations))
    return base64.b64encode(digest).decode() == expected


def _old_data_root(home: Path, admin_password: str | None = KEY) -> Path:
    """A data root as the old `serve` left it: a 0755 folder, a 0644 database holding the token,
    the admin's password the token itself (Label Studio's tables, the columns used here)."""
    data = home / "labelstudio"
    (data / "media" / "upload" / "1").mkdir(parents=True)
    for d in (home, data, data / "media", data / "media" / "upload", data / "media" / "upload" / "1"):
        d.chmod(0o755)
    db = data / "label_studio.sqlite3"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE htx_user (id INTEGER PRIMARY KEY, password TEXT, email TEXT)")
        con.execute("CREATE TABLE authtoken_token (key TEXT PRIMARY KEY, user_id INTEGER)")
        if admin_password is not None:
            con.execute(
                "INSERT INTO htx_user VALUES (1, ?, 'admin@ferlab.local')", (_django_hash(admin_password),)
            )
            con.execute("INSERT INTO authtoken_token VALUES (?, 1)", (KEY,))
    con.close()
    (data / "media" / "upload" / "1" / "face.png").write_bytes(b"png")
    (data / ".env").write_text("SECRET_KEY=x\n")
    for f in (db, data / "media" / "upload" / "1" / "face.png", data / ".env"):
        f.chmod(0o644)
    return data


def _admin_hash(data: Path) -> str:
    con = sqlite3.connect(data / "label_studio.sqlite3")
    try:
        return con.execute("SELECT password FROM htx_user WHERE id = 1").fetchone()[0]
    finally:
        con.close()


@pytest.fixture
def fake_label_studio(tmp_path, monkeypatch):
    """A `label-studio` that records its umask, creates a file and a folder in its data dir (as the
    real one creates its database and media) and exits."""
    script = tmp_path / "bin" / "label-studio"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        'd="$LABEL_STUDIO_BASE_DATA_DIR"\n'
        'umask > "$d/umask.txt"\n'
        'echo db > "$d/created-later.sqlite3"\n'
        'mkdir -p "$d/export"\n'
        'echo "started $*"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("LABEL_STUDIO_BIN", str(script))
    monkeypatch.delenv("LABEL_STUDIO_PASSWORD", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_USERNAME", raising=False)
    return script


# ---- the password is never the token -----------------------------------------------------------
def test_server_env_password_is_never_the_token():
    env = server.server_env("/nonexistent-home", KEY, base_env={})
    assert env["LABEL_STUDIO_PASSWORD"] and env["LABEL_STUDIO_PASSWORD"] != KEY
    with pytest.raises(ConfigError, match="LABEL_STUDIO_PASSWORD") as err:
        server.server_env("/nonexistent-home", KEY, base_env={"LABEL_STUDIO_PASSWORD": KEY})
    assert KEY not in str(err.value) and len(str(err.value).splitlines()) == 1
    chosen = server.server_env("/x", KEY, base_env={"LABEL_STUDIO_PASSWORD": "my own pass"})
    assert chosen["LABEL_STUDIO_PASSWORD"] == "my own pass"


def test_generated_password_is_stored_privately_and_kept(tmp_path):
    home = tmp_path / "var"
    env = server.prepare_server_env(home, KEY, base_env={})
    data = home / "labelstudio"
    password_file = data / server.PASSWORD_FILE
    password = password_file.read_text().strip()
    assert env["LABEL_STUDIO_PASSWORD"] == password and len(password) >= 20 and password != KEY
    assert _mode(password_file) == 0o600 and _mode(data) == 0o700
    again = server.prepare_server_env(home, KEY, base_env={})
    assert again["LABEL_STUDIO_PASSWORD"] == password  # generated once
    chosen = server.prepare_server_env(home, KEY, base_env={"LABEL_STUDIO_PASSWORD": "pass phrase"})
    assert chosen["LABEL_STUDIO_PASSWORD"] == "pass phrase"


def test_an_old_token_password_is_replaced(tmp_path, caplog):
    home = tmp_path / "var"
    data = _old_data_root(home)
    assert _django_check(KEY, _admin_hash(data))
    caplog.set_level("INFO", logger="labeling.labelstudio.server")
    env = server.prepare_server_env(home, KEY, base_env={})
    new_hash = _admin_hash(data)
    password = (data / server.PASSWORD_FILE).read_text().strip()
    assert not _django_check(KEY, new_hash) and _django_check(password, new_hash)
    assert env["LABEL_STUDIO_PASSWORD"] == password
    assert KEY not in caplog.text and password not in caplog.text
    assert "password" in caplog.text  # the owner is told where the new one is


def test_a_password_of_the_owners_own_is_left_alone(tmp_path):
    home = tmp_path / "var"
    data = _old_data_root(home, admin_password="chosen long ago")
    before = _admin_hash(data)
    server.prepare_server_env(home, KEY, base_env={})
    assert _admin_hash(data) == before and not (data / server.PASSWORD_FILE).exists()


# ---- the folder is private -------------------------------------------------------------------------
def test_an_old_data_root_is_tightened(tmp_path):
    home = tmp_path / "var"
    data = _old_data_root(home)
    assert _not_private(data)
    server.prepare_server_env(home, KEY, base_env={})
    assert _not_private(data) == []
    assert _mode(home) == 0o755  # the data root itself is not ours to change


@pytest.mark.parametrize("where", ["folder", "database", "media"])
def test_writable_by_others_is_refused(tmp_path, where):
    home = tmp_path / "var"
    data = _old_data_root(home)
    target = {
        "folder": data,
        "database": data / "label_studio.sqlite3",
        "media": data / "media" / "upload",
    }[where]
    target.chmod(_mode(target) | 0o002)
    before = _admin_hash(data)
    with pytest.raises(ConfigError, match="other users can write") as err:
        server.prepare_server_env(home, KEY, base_env={})
    message = str(err.value)
    assert str(target) in message and "chmod" in message and len(message.splitlines()) == 1
    assert _admin_hash(data) == before  # nothing changed in a folder it refused


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another user needs root")
@pytest.mark.parametrize("where", ["folder", "database"])
def test_owned_by_another_user_is_refused(tmp_path, where):
    home = tmp_path / "var"
    data = _old_data_root(home)
    target = data if where == "folder" else data / "label_studio.sqlite3"
    os.chown(target, 65534, 65534)
    with pytest.raises(ConfigError, match="another user") as err:
        server.prepare_server_env(home, KEY, base_env={})
    assert str(target) in str(err.value) and len(str(err.value).splitlines()) == 1


def test_the_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    """The same check without root: this process pretends to be someone else."""
    home = tmp_path / "var"
    data = _old_data_root(home)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(data).st_uid + 4242)
    with pytest.raises(ConfigError, match="owned by another user"):
        server.prepare_server_env(home, KEY, base_env={})


def test_start_server_runs_with_a_private_umask(tmp_path, fake_label_studio):
    home, log = tmp_path / "var", tmp_path / "ls.log"
    proc = server.start_server(home, 1, KEY, log, base_env={**os.environ})
    assert proc.wait(timeout=30) == 0
    data = home / "labelstudio"
    assert (data / "umask.txt").read_text().strip() == "0077"
    assert _not_private(data) == [] and _mode(log) == 0o600
    assert KEY not in log.read_text() and "started start" in log.read_text()


def test_serve_execs_with_a_private_umask_after_tightening(tmp_path, fake_label_studio):
    """`serve` as `ferlab labelstudio serve` runs it: this process becomes the server (exec)."""
    home = tmp_path / "var"
    data = _old_data_root(home)
    env = {**os.environ, "LABEL_STUDIO_API_KEY": KEY, "PYTHONPATH": str(REPO)}
    code = f"from labeling.labelstudio.server import serve; serve({str(home)!r}, port=1)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert (data / "umask.txt").read_text().strip() == "0077"
    assert _not_private(data) == []
    assert not _django_check(KEY, _admin_hash(data))
    assert KEY not in out.stdout + out.stderr


# ---- the real server ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _can_log_in(url: str, email: str, password: str) -> bool:
    """Label Studio's login form, as a browser posts it: a redirect is a session, the form again is not."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect())
    with opener.open(url + "/user/login/", timeout=60) as resp:
        page = resp.read().decode(errors="replace")
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    csrf = found.group(1) if found else next(c.value for c in jar if c.name == "csrftoken")
    form = urllib.parse.urlencode({"email": email, "password": password, "csrfmiddlewaretoken": csrf})
    request = urllib.request.Request(
        url + "/user/login/", data=form.encode(), headers={"Referer": url + "/user/login/"}
    )
    try:
        with opener.open(request, timeout=60) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    if status not in (200, 302):
        raise AssertionError(f"unexpected answer {status} from the login form")
    return status == 302


def _django_in_label_studio_venv(script: str, stdin: str) -> str:
    """Run Django's own password code in the server's virtualenv (secrets on stdin, not argv)."""
    python = REPO / ".venv-labelstudio" / "bin" / "python"
    prelude = "from django.conf import settings; settings.configure(); import sys\n"
    out = subprocess.run(
        [str(python), "-c", prelude + script], input=stdin, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.server
def test_real_server_keeps_its_folder_private_and_refuses_the_token_as_password(tmp_path):
    try:
        server.find_executable()
    except ConfigError as exc:
        pytest.fail(f"{exc} (`make test` builds it)")
    (tmp_path / "home").mkdir()
    home, log_path, port = tmp_path / "var", tmp_path / "serve.log", _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env |= {"HOME": str(tmp_path / "home"), "LABEL_STUDIO_API_KEY": KEY}
    command = [sys.executable, "-m", "ferlab", "--home", str(home), "labelstudio", "serve"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*command, "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    data = home / "labelstudio"
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_healthy(proc, port, timeout=900, log_path=str(log_path))
        assert not _can_log_in(url, server.ADMIN_USER, KEY)
        assert (data / "label_studio.sqlite3").is_file() and (data / "media").is_dir()
        assert _not_private(data) == []  # what the server created, as it created it
        password = (data / server.PASSWORD_FILE).read_text().strip()
        assert _can_log_in(url, server.ADMIN_USER, password)
    finally:
        server.stop_server(proc)
    assert KEY not in log_path.read_text(errors="replace")
    assert _not_private(data) == []

    # An old data root: loose modes, the token as the admin's password (Django's own hash).
    token_hash = _django_in_label_studio_venv(
        "from django.contrib.auth.hashers import make_password; print(make_password(sys.stdin.read()))", KEY
    )
    con = sqlite3.connect(data / "label_studio.sqlite3")
    with con:
        con.execute("UPDATE htx_user SET password = ? WHERE email = ?", (token_hash, server.ADMIN_USER))
    con.close()
    for p in [data, *data.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    server.prepare_server_env(home, KEY, base_env=env)
    assert _not_private(data) == []
    con = sqlite3.connect(data / "label_studio.sqlite3")
    stored = con.execute("SELECT password FROM htx_user WHERE email = ?", (server.ADMIN_USER,)).fetchone()[0]
    con.close()
    check = "from django.contrib.auth.hashers import check_password as c; h, p = sys.stdin.read().split('\\n', 1)\n"
    check += "print(c(p, h))"
    assert _django_in_label_studio_venv(check, f"{stored}\n{KEY}") == "False"
    assert _django_in_label_studio_venv(check, f"{stored}\n{password}") == "True"
