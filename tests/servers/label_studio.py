"""A real Label Studio server for tests: installed once into its own virtual environment.

Label Studio pins Django and dozens of other packages, so it never shares labelfix's
environment: :func:`ensure_installed` creates a virtual environment outside the repository
(``~/.cache/labelfix-tests/label-studio-venv``, or ``LABELFIX_LABEL_STUDIO_VENV``) and
``pip install``\\ s a pinned ``label-studio`` into it the first time (about a gigabyte, a minute or
three); later runs reuse it. When it cannot be installed (no route to PyPI),
:class:`LabelStudioUnavailable` says why, and tests skip with that reason.

:class:`LabelStudioServer` runs it the way ``shared/reference/label_studio.md`` describes: on
127.0.0.1 only, on a port checked free first (Label Studio would silently move to the next
one), offline (no version check, no analytics, no Sentry), with a throwaway data folder that
also serves as its home, so that nothing is written anywhere else, in its own process group
that :meth:`~LabelStudioServer.stop` ends. It starts with an admin user whose legacy API token
is known, and :meth:`~LabelStudioServer.add_user` makes more users, each with a token, so that
tests can play several annotators through Label Studio's own REST API::

    python = ensure_installed()
    with LabelStudioServer(python=python, data_dir=tmp) as server:
        alice = server.add_user("alice@example.com")
        httpx.post(f"{server.url}/api/...", headers=server.auth(alice))

A first start on an empty data folder spends most of its time migrating the database (25 s to
100 s on two busy cores), and each extra user costs a process of 4 s to 9 s. So
:func:`ensure_template` does that once: it builds a database with the admin and the annotators
in it and caches it beside the virtual environment, and a server given that template copies
it into its fresh data folder and starts in seconds::

    template = ensure_template(python, annotators=("alice@example.com", "bob@example.com"))
    with LabelStudioServer(python=python, data_dir=tmp, template=template) as server:
        server.users["alice@example.com"].token

Only the standard library and httpx (already a labelfix dependency) are used here.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LABEL_STUDIO_VERSION",
    "LabelStudioServer",
    "LabelStudioUnavailable",
    "Template",
    "User",
    "ensure_installed",
    "ensure_template",
    "venv_path",
]

LABEL_STUDIO_VERSION = "1.23.2"
VENV_ENV = "LABELFIX_LABEL_STUDIO_VENV"
DEFAULT_VENV = Path.home() / ".cache" / "labelfix-tests" / "label-studio-venv"
INSTALL_TIMEOUT = 900.0
START_TIMEOUT = 240.0
COMMAND_TIMEOUT = 300.0
DB_NAME = "label_studio.sqlite3"
TEMPLATE_FORMAT = 1  # bump when what a template holds changes


class LabelStudioUnavailable(RuntimeError):
    """Label Studio cannot be installed or started here; the message says why."""


@dataclass(frozen=True)
class User:
    """A Label Studio user that tests act as."""

    email: str
    token: str
    password: str


def venv_path() -> Path:
    """Where the Label Studio virtual environment lives (``LABELFIX_LABEL_STUDIO_VENV`` wins)."""
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV).expanduser()


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _installed_version(python: Path) -> str | None:
    """The label-studio version importable by ``python``, or None."""
    if not python.exists():
        return None
    try:
        done = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT, env=_clean_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_installed(*, venv: Path | None = None, version: str = LABEL_STUDIO_VERSION) -> Path:
    """The Python of a virtual environment with ``label-studio==version``, installed if missing.

    The environment is built beside its final place and renamed into it only once pip has
    succeeded, so an interrupted install never leaves a half-built environment that a later run
    would take for a finished one. The server is always started as ``python -m
    label_studio.server``, which keeps working after that rename (console scripts would not:
    their first line names the folder they were installed in).

    Raises:
        LabelStudioUnavailable: the environment cannot be created or pip cannot install it.
    """
    venv = (venv or venv_path()).absolute()
    python = _venv_python(venv)
    found = _installed_version(python)
    if found == version:
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    building = venv.with_name(f"{venv.name}.partial-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    log = venv.parent / f"{venv.name}.install.log"
    try:
        with log.open("w") as out:
            for command in (
                [sys.executable, "-m", "venv", str(building)],
                [str(_venv_python(building)), "-m", "pip", "install", "--disable-pip-version-check",
                 "--no-input", f"label-studio=={version}"],
            ):
                out.write(f"$ {' '.join(command)}\n")
                out.flush()
                try:
                    done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT,
                                          timeout=INSTALL_TIMEOUT, env=_install_env())
                except subprocess.TimeoutExpired:
                    raise LabelStudioUnavailable(
                        f"installing label-studio=={version} took over {INSTALL_TIMEOUT:.0f} s; "
                        f"see {log}") from None
                if done.returncode != 0:
                    raise LabelStudioUnavailable(
                        f"cannot install label-studio=={version} into {venv} "
                        f"({_last_line(log)}); see {log}")
        if venv.exists():  # an older version, or a broken environment: replace it
            shutil.rmtree(venv)
        try:
            building.rename(venv)
        except OSError:
            # Another test process finished first; use whichever environment won.
            if _installed_version(python) != version:
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    if _installed_version(python) != version:
        raise LabelStudioUnavailable(f"label-studio=={version} was installed into {venv} but "
                                     f"cannot be imported; see {log}")
    return python


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()
             if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:300]


def _server_env(data_dir: Path) -> dict[str, str]:
    """Offline and contained: Label Studio's settings for a server that stays in ``data_dir``."""
    home = data_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    return _clean_env({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        # Offline: no PyPI version check, no analytics posts, no Sentry.
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
        # Contained: whatever still writes under the home folder or a cache writes here.
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "BLACK_CACHE_DIR": str(data_dir / "black-cache"),
    })


def _install_env() -> dict[str, str]:
    """pip's environment: the caller's (proxies, index settings), minus the test venv's."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV"):
        env.pop(name, None)
    return env


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: nothing inherited that Label Studio could read as a setting.

    Label Studio reads ``LABEL_STUDIO_<NAME>``, ``HEARTEX_<NAME>`` and plain ``<NAME>`` for
    dozens of names (HOST, PORT, USERNAME, PASSWORD, DEBUG, CI, DATABASE_NAME, ...), so the
    server gets only what is listed here rather than a filtered copy of ours.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if os.environ.get("TMPDIR"):
        env["TMPDIR"] = os.environ["TMPDIR"]
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Template:
    """A migrated Label Studio database with known users, to copy into fresh data folders."""

    db: Path
    admin: User
    users: dict[str, User]


def _cli(python: Path, data_dir: Path, *args: str) -> None:
    """Run one ``label-studio`` command on ``data_dir`` in the server's contained environment.

    Raises:
        LabelStudioUnavailable: the command failed or hung.
    """
    command = [str(python), "-m", "label_studio.server", *args, "--data-dir", str(data_dir),
               "--no-browser", "--enable-legacy-api-token"]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=_server_env(data_dir), cwd=data_dir, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise LabelStudioUnavailable(f"label-studio {args[0]} took over "
                                     f"{COMMAND_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise LabelStudioUnavailable(f"label-studio {args[0]} failed: "
                                     f"{(done.stderr or done.stdout).strip()[-500:]}")


def _new_user(email: str) -> User:
    return User(email=email, token=secrets.token_hex(20), password=secrets.token_hex(12))


def _init_user(python: Path, data_dir: Path, user: User) -> None:
    """Create ``user`` with its token (the first one made also creates the organization)."""
    # "--name=value": a value that starts with "-" would otherwise read as an option.
    _cli(python, data_dir, "init", f"--username={user.email}", f"--password={user.password}",
         f"--user-token={user.token}")


def ensure_template(python: Path, *, annotators: Sequence[str] = (),
                    admin_email: str = "admin@example.com") -> Template:
    """A cached database with the admin and ``annotators`` in it, built when missing.

    Kept beside the virtual environment, one per Label Studio version and set of users, and
    built in a folder of its own that is renamed into place, so that an interrupted build
    never passes for a finished one.

    Raises:
        LabelStudioUnavailable: a ``label-studio`` command failed.
    """
    python = Path(python)
    emails = [admin_email, *sorted(set(annotators) - {admin_email})]
    version = _installed_version(python) or "unknown"
    key = hashlib.sha256(json.dumps([TEMPLATE_FORMAT, version, emails]).encode()).hexdigest()
    venv = python.parent.parent
    where = venv.parent / f"{venv.name}.template-{version}-{key[:12]}"
    found = _read_template(where)
    if found is not None:
        return found
    building = where.with_name(f"{where.name}.partial-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    data_dir = building / "data"
    data_dir.mkdir(parents=True)
    try:
        users = {email: _new_user(email) for email in emails}
        for user in users.values():  # the admin first: it creates the organization
            _init_user(python, data_dir, user)
        (data_dir / DB_NAME).rename(building / DB_NAME)
        shutil.rmtree(data_dir)
        (building / "users.json").write_text(json.dumps(
            {"admin": admin_email, "users": [vars(u) for u in users.values()]}, indent=1))
        try:
            building.rename(where)
        except OSError:
            pass  # another test process finished first; its template is as good
    finally:
        shutil.rmtree(building, ignore_errors=True)
    found = _read_template(where)
    if found is None:
        raise LabelStudioUnavailable(f"the Label Studio template at {where} is unreadable")
    return found


def _read_template(where: Path) -> Template | None:
    try:
        saved = json.loads((where / "users.json").read_text())
    except (OSError, ValueError):
        return None
    if not (where / DB_NAME).exists():
        return None
    users = {u["email"]: User(**u) for u in saved["users"]}
    return Template(db=where / DB_NAME, admin=users[saved["admin"]], users=users)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class LabelStudioServer:
    """One Label Studio process on 127.0.0.1 with a throwaway data folder."""

    def __init__(
        self,
        *,
        python: Path,
        data_dir: Path,
        port: int | None = None,
        admin_email: str = "admin@example.com",
        template: Template | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.python = Path(python)
        self.data_dir = Path(data_dir).absolute()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.template = template
        self.admin = template.admin if template else _new_user(admin_email)
        self.users: dict[str, User] = dict(template.users) if template else {}
        self.users[self.admin.email] = self.admin
        self.log_path = self.data_dir / "label-studio.log"
        self._process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> LabelStudioServer:
        """Start the server and wait until ``GET /health`` answers 200.

        Raises:
            LabelStudioUnavailable: the port is taken, or the server exited or never answered.
        """
        import httpx

        if self._process is not None:
            return self
        if _port_in_use(self.port):
            raise LabelStudioUnavailable(f"port {self.port} on 127.0.0.1 is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.template is not None and not (self.data_dir / DB_NAME).exists():
            shutil.copyfile(self.template.db, self.data_dir / DB_NAME)
        command = [
            str(self.python), "-m", "label_studio.server", "start", "--data-dir",
            str(self.data_dir), "--no-browser", "--enable-legacy-api-token",
            "--internal-host", "127.0.0.1", "--host", self.url, "--port", str(self.port),
            f"--username={self.admin.email}", f"--password={self.admin.password}",
            f"--user-token={self.admin.token}", "--log-level", "WARNING",
        ]
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=_server_env(self.data_dir), cwd=self.data_dir, start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise LabelStudioUnavailable(
                    f"Label Studio exited with {code} while starting: {self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise LabelStudioUnavailable(
                    f"Label Studio did not answer on {self.url}/health within "
                    f"{self.start_timeout:.0f} s: {self._log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left after 20 s."""
        process = self._process
        if process is None:
            return
        self._process = None
        try:
            pgid = os.getpgid(process.pid)
        except ProcessLookupError:
            process.wait()
            return
        for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                # wait() reaps the leader, so a zombie never counts as still running.
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children of the group may outlive the leader by a moment; a last sweep.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    # ------------------------------------------------------------------ users and REST

    def add_user(self, email: str, *, token: str | None = None) -> User:
        """A user in the admin's organization with a legacy API token of its own.

        No REST call hands out another user's token, so this runs ``label-studio init`` on
        the same data folder (about 3 s; fine while the server runs).

        Raises:
            LabelStudioUnavailable: the command failed.
        """
        if email in self.users:
            return self.users[email]
        user = _new_user(email) if token is None else User(email, token, secrets.token_hex(12))
        _init_user(self.python, self.data_dir, user)
        self.users[email] = user
        return user

    def auth(self, user: User | None = None) -> dict[str, str]:
        """The header that authenticates ``user`` (default: the admin)."""
        return {"Authorization": f"Token {(user or self.admin).token}"}

    def api(self, method: str, path: str, *, user: User | None = None, json: Any = None,
            params: Mapping[str, Any] | None = None) -> Any:
        """One REST call as ``user``; raises on any status >= 400 and returns the JSON body."""
        import httpx

        response = httpx.request(method, f"{self.url}{path}", headers=self.auth(user),
                                 json=json, params=params, timeout=60.0)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path} answered {response.status_code}: "
                                 f"{response.text[:500]}")
        return response.json() if response.content else None

    # ------------------------------------------------------------------ helpers for tests

    def project(self, title: str) -> dict[str, Any] | None:
        """The project with exactly this title, or None."""
        page = self.api("GET", "/api/projects/", params={"title": title, "page_size": 100})
        for project in page.get("results", []):
            if project["title"] == title:
                return self.api("GET", f"/api/projects/{project['id']}/")
        return None

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project with its annotations and predictions, oldest first."""
        tasks: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self.api("GET", "/api/tasks/", params={
                "project": project_id, "page": page, "page_size": 100, "fields": "all"})
            tasks.extend(answer["tasks"])
            if len(tasks) >= answer["total"] or not answer["tasks"]:
                return tasks
            page += 1

    def annotate(self, task: Mapping[str, Any], *, user: User, choice: str | None,
                 from_name: str = "label", to_name: str = "text",
                 origin: str = "manual") -> dict[str, Any]:
        """Submit (``choice``) or skip (``choice=None``) a task, as the web app sends it."""
        if choice is None:
            body: dict[str, Any] = {"result": [], "was_cancelled": True}
        else:
            body = {"result": [_choice_result(choice, from_name=from_name, to_name=to_name,
                                              origin=origin)]}
        body.update(lead_time=3.2, draft_id=None, parent_annotation=None,
                    started_at="2024-01-01T00:00:00.000Z")
        predictions = task.get("predictions") or []
        if predictions and isinstance(predictions[0], Mapping):
            body["parent_prediction"] = predictions[0]["id"]
        return self.api("POST", f"/api/tasks/{task['id']}/annotations/",
                        params={"project": task["project"]}, user=user, json=body)

    def change(self, annotation_id: int, *, user: User, choice: str, from_name: str = "label",
               to_name: str = "text") -> dict[str, Any]:
        """Change a submitted annotation's choice, as the web app's Update button does."""
        return self.api("PATCH", f"/api/annotations/{annotation_id}/", user=user, json={
            "result": [_choice_result(choice, from_name=from_name, to_name=to_name,
                                      origin="manual")],
            "lead_time": 1.5, "was_cancelled": False,
        })


def _choice_result(choice: str, *, from_name: str, to_name: str, origin: str) -> dict[str, Any]:
    return {"value": {"choices": [choice]}, "id": secrets.token_hex(5), "from_name": from_name,
            "to_name": to_name, "type": "choices", "origin": origin}
