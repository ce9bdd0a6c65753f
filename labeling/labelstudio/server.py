"""The Label Studio server: its own virtualenv (`make labelstudio-setup`: it conflicts with the
main one), started on 127.0.0.1 with its data under `<data root>/labelstudio/` and the data
root served as local files (so tasks show `media/...` crops).

The admin user is created on the first start of a data dir with `LABEL_STUDIO_API_KEY` as its
(legacy) token, so the server and every client share one variable. No analytics, version checks
or Sentry: nothing leaves the machine. The key goes into the server's environment only, never
into a command line, a log line or an error.

That folder holds the token (in its database) and the curators' work, so it is private to its
owner: checked at every start (refused when another user owns any of it or can write to it),
tightened to 0700 / 0600 where an older version left it readable, and the server runs with umask
0o077 so that what it creates later (database journals, media, exports) is private too. The
admin's password is never the token: it is $LABEL_STUDIO_PASSWORD (which must differ from the
key), else generated once into `<data root>/labelstudio/admin-password` (0600). A data dir whose
admin still has the token as password (the old default) gets that password replaced at start.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import signal
import sqlite3
import stat
import string
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from labeling.labelstudio.sync import KEY_ENV, LabelStudioError
from warehouse.errors import ConfigError

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]  # labeling/labelstudio/server.py
DEFAULT_PORT = 8089
HOST = "127.0.0.1"
ADMIN_USER = "admin@ferlab.local"
BIN_ENV = "LABEL_STUDIO_BIN"  # the `label-studio` executable, when not in ./.venv-labelstudio
PASSWORD_ENV = "LABEL_STUDIO_PASSWORD"
USERNAME_ENV = "LABEL_STUDIO_USERNAME"
DATA_SUBDIR = "labelstudio"
DATABASE = "label_studio.sqlite3"  # Label Studio's default database in its data dir
PASSWORD_FILE = "admin-password"  # the generated admin password, 0600 in the data dir
PRIVATE_UMASK = 0o077  # the server's: everything it creates is its owner's only
MAX_TOKEN_LENGTH = 40  # Label Studio's token column
_PBKDF2_ITERATIONS = 1_000_000  # Django 5.2's default for pbkdf2_sha256
_PBKDF2_DIGESTS = {"pbkdf2_sha256": "sha256", "pbkdf2_sha1": "sha1"}


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


def data_dir(home: str | os.PathLike) -> Path:
    """The server's data folder of data root `home`."""
    return Path(home).resolve() / DATA_SUBDIR


def _check_key(api_key: str) -> None:
    if not api_key:
        raise ConfigError(
            f"{KEY_ENV} is not set: choose a token (up to {MAX_TOKEN_LENGTH} letters and digits, e.g. "
            f'`export {KEY_ENV}=$(python -c "import secrets; print(secrets.token_hex(20))")`); the '
            "server makes it the admin's token and the clients use it"
        )
    if len(api_key) > MAX_TOKEN_LENGTH or not api_key.isalnum():
        raise ConfigError(f"{KEY_ENV} must be 1 to {MAX_TOKEN_LENGTH} letters and digits")


def _check_password(password: str, api_key: str) -> None:
    if password and hmac.compare_digest(password.encode(), api_key.encode()):
        raise ConfigError(
            f"{PASSWORD_ENV} must not be the same as {KEY_ENV}: choose another password, or unset it "
            f"to have one generated into <home>/{DATA_SUBDIR}/{PASSWORD_FILE}"
        )


def server_env(
    home: str | os.PathLike,
    api_key: str,
    base_env: Mapping[str, str] | None = None,
    password: str | None = None,
) -> dict[str, str]:
    """The environment of `label-studio start` over data root `home`. The admin's password is
    `password`, else $LABEL_STUDIO_PASSWORD, else a random one that nobody knows (Label Studio
    uses it only when it creates the admin: `prepare_server_env` passes the real one); never the
    key. Checks the key and the password, touches nothing."""
    _check_key(api_key)
    env = dict(os.environ if base_env is None else base_env)
    chosen = password or env.get(PASSWORD_ENV) or ""
    _check_password(chosen, api_key)
    home = Path(home).resolve()
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir(home)),
        LABEL_STUDIO_USERNAME=env.get(USERNAME_ENV) or ADMIN_USER,
        LABEL_STUDIO_PASSWORD=chosen or secrets.token_urlsafe(32),
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


# ---- the private data folder -------------------------------------------------------------------
def _refuse_if_unsafe(path: Path, st: os.stat_result, uid: int, data: Path) -> None:
    if st.st_uid != uid:
        raise ConfigError(
            f"{path} is owned by another user (uid {st.st_uid}): the Label Studio folder holds the "
            f"admin's token and must be yours alone; give a --home of your own, or have {path} removed"
        )
    if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o022:
        raise ConfigError(
            f"other users can write {path} (mode {stat.S_IMODE(st.st_mode):o}): the Label Studio "
            f"folder holds the admin's token; check that nobody changed it, then run "
            f"`chmod -R go-rwx {data}` and serve again"
        )


def secure_data_dir(data: str | os.PathLike) -> int:
    """Make the Label Studio folder `data` private: create it 0700 if missing; refuse (ConfigError)
    when it or anything in it belongs to another user or is writable by group or others; else
    take group and other permissions off every entry (0700 folders, 0600 files). Returns how many
    entries were tightened. Symbolic links inside are left as they are (they must be ours)."""
    data = Path(data)
    uid = os.geteuid()
    if not data.exists() and not data.is_symlink():
        data.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            data.mkdir(mode=0o700)
    try:
        top = data.stat()
    except OSError as exc:
        raise ConfigError(f"cannot open the Label Studio folder {data} ({exc.strerror}): check it") from exc
    if not stat.S_ISDIR(top.st_mode):
        raise ConfigError(f"{data} is not a folder: move it away, Label Studio keeps its data there")
    _refuse_if_unsafe(data, top, uid, data)
    # Check everything first, then change: a refused folder is left exactly as it was.
    entries: list[tuple[Path, os.stat_result]] = [(data, top)]

    def walk_error(exc: OSError) -> None:
        raise ConfigError(f"cannot read {exc.filename} ({exc.strerror}): check its owner and mode")

    for root, dirs, files in os.walk(data, onerror=walk_error):
        for name in dirs + files:
            path = Path(root) / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # a server running over it removed it meanwhile
                continue
            _refuse_if_unsafe(path, st, uid, data)
            entries.append((path, st))
    tightened = 0
    for path, st in entries:
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode) or not mode & 0o077:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, mode & 0o700)
            tightened += 1
    if tightened:
        logger.warning(
            "made %d entries of the Label Studio folder %s private (other users could read them: if "
            "other people use this machine, the token may have been read; reset it in Label Studio, "
            "Account & Settings, and export the new one as $%s)",
            tightened,
            data,
            KEY_ENV,
        )
    return tightened


# ---- the admin's password ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AdminPassword:
    """The admin's password for the server's environment and where its owner finds it."""

    value: str = dataclasses.field(repr=False)
    hint: str  # "the password in <file>" etc.: no secret


def _django_verify(password: str, encoded: str) -> bool | None:
    """Django's PBKDF2 check (Label Studio's hasher); None for another algorithm."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] not in _PBKDF2_DIGESTS or not parts[1].isdigit():
        return None
    algorithm, iterations, salt, expected = parts
    digest = hashlib.pbkdf2_hmac(
        _PBKDF2_DIGESTS[algorithm], password.encode(), salt.encode(), int(iterations)
    )
    return hmac.compare_digest(base64.b64encode(digest).decode("ascii"), expected)


def _django_hash(password: str) -> str:
    """`password` as Django's pbkdf2_sha256 stores it."""
    alphabet = string.ascii_letters + string.digits
    salt = "".join(secrets.choice(alphabet) for _ in range(22))
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), _PBKDF2_ITERATIONS)
    return f"pbkdf2_sha256${_PBKDF2_ITERATIONS}${salt}${base64.b64encode(digest).decode('ascii')}"


@dataclasses.dataclass(frozen=True)
class _Admin:
    user_id: int
    password_hash: str = dataclasses.field(repr=False)
    token: str = dataclasses.field(repr=False)


def _database_error(db: Path, exc: sqlite3.Error) -> ConfigError:
    return ConfigError(
        f"cannot use the Label Studio database {db} ({exc}): stop any server running on it and serve again"
    )


def _find_admin(db: Path, email: str) -> _Admin | None:
    """The admin user of Label Studio's database, if the database and the user exist."""
    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(db, timeout=30)
        try:
            row = con.execute(
                "SELECT u.id, u.password, coalesce(t.key, '') FROM htx_user u "
                "LEFT JOIN authtoken_token t ON t.user_id = u.id WHERE lower(u.email) = lower(?)",
                (email,),
            ).fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # created, not yet migrated: no admin yet
            return None
        raise _database_error(db, exc) from exc
    except sqlite3.Error as exc:
        raise _database_error(db, exc) from exc
    return None if row is None else _Admin(int(row[0]), str(row[1] or ""), str(row[2]))


def _password_is_a_token(admin: _Admin, api_key: str) -> bool:
    for token in {api_key, admin.token} - {""}:
        verified = _django_verify(token, admin.password_hash)
        if verified is None:
            logger.warning("cannot check the Label Studio admin's password hash (not PBKDF2): left as it is")
            return False
        if verified:
            return True
    return False


def _set_password(db: Path, admin: _Admin, password: str) -> None:
    try:
        con = sqlite3.connect(db, timeout=30)
        try:
            with con:
                con.execute(
                    "UPDATE htx_user SET password = ? WHERE id = ?", (_django_hash(password), admin.user_id)
                )
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise _database_error(db, exc) from exc


def _read_or_create_password(path: Path) -> str:
    """The password in `path` (0600), generated there first if missing: written beside it and
    linked into place, so a crash leaves no half-written file and two starts agree."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
                logger.info("generated the Label Studio admin's password into %s (yours alone)", path)
        finally:
            tmp.unlink(missing_ok=True)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"{path} must be a file of yours with mode 600: delete it and serve again")
    password = path.read_text(encoding="utf-8").strip()
    if not password:
        raise ConfigError(f"{path} is empty: delete it and serve again to generate the admin's password")
    return password


def admin_password(
    data: str | os.PathLike, api_key: str, base_env: Mapping[str, str] | None = None
) -> AdminPassword:
    """The admin's password for the server in folder `data` (made private first: `secure_data_dir`).

    $LABEL_STUDIO_PASSWORD when set (never the key), else the one in `data/admin-password`,
    generated there when the admin is yet to be created. An admin whose password is the token
    (the old default) gets this password instead. An admin with a password of its own, and no
    file, keeps it: that password is the owner's."""
    data = Path(data)
    env = os.environ if base_env is None else base_env
    chosen = env.get(PASSWORD_ENV) or ""
    _check_password(chosen, api_key)
    email = env.get(USERNAME_ENV) or ADMIN_USER
    db, path = data / DATABASE, data / PASSWORD_FILE
    admin = _find_admin(db, email)
    weak = admin is not None and _password_is_a_token(admin, api_key)
    if chosen:
        result = AdminPassword(chosen, f"${PASSWORD_ENV}")
    elif path.exists() or admin is None or weak:
        result = AdminPassword(_read_or_create_password(path), f"the password in {path}")
    else:  # Label Studio uses it only to create the admin, who exists: it stays unused
        result = AdminPassword(secrets.token_urlsafe(32), "the password chosen when it was created")
    if admin is not None and weak:
        _set_password(db, admin, result.value)
        logger.warning(
            "the Label Studio admin %s had the API token as password: replaced by %s", email, result.hint
        )
    return result


def prepare_server_env(
    home: str | os.PathLike, api_key: str, base_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What every start does first: check the key and the password (before touching anything),
    make the data folder private (`secure_data_dir`), settle the admin's password
    (`admin_password`); returns the server's environment."""
    server_env(home, api_key, base_env)
    data = data_dir(home)
    secure_data_dir(data)
    password = admin_password(data, api_key, base_env)
    env = server_env(home, api_key, base_env, password=password.value)
    logger.info("Label Studio admin: %s, with %s", env["LABEL_STUDIO_USERNAME"], password.hint)
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
    base_env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """Start the server in its own process group (stop it with `stop_server`), output to `log_path`
    (0600), with umask 0o077 over its private data folder (`prepare_server_env`)."""
    command = start_command(port)  # a missing server: one line, before anything is changed
    env = prepare_server_env(home, api_key, base_env)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab") as log:
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, 0o600)  # the server's log is as private as its folder
        return subprocess.Popen(
            command,
            env=env,
            cwd=env["LABEL_STUDIO_BASE_DATA_DIR"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            umask=PRIVATE_UMASK,
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
    Ctrl-C, SIGTERM and a stop by process group reach the server itself. The data folder is made
    private first and the server runs with umask 0o077. Does not return."""
    command = start_command(port)
    env = prepare_server_env(home, api_key if api_key is not None else os.environ.get(KEY_ENV, ""))
    os.umask(PRIVATE_UMASK)
    os.chdir(env["LABEL_STUDIO_BASE_DATA_DIR"])
    # A shell's background job (`ferlab labelstudio serve &`) inherits SIGINT ignored; the server
    # would keep ignoring Ctrl-C's signal and stop only on SIGTERM's default action. Start it as
    # from a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execve(command[0], command, env)


def _tail(log_path: str | os.PathLike | None, chars: int = 3000) -> str:
    if not log_path or not Path(log_path).is_file():
        return ""
    return "; its log ends:\n" + Path(log_path).read_text(errors="replace")[-chars:]
