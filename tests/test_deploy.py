"""deploy/: the systemd units verify, their command lines are the CLI's, the image is sane.

- Every unit under deploy/systemd passes `systemd-analyze verify` (syntax, known keys,
  an executable ExecStart), with the documented install path swapped for this venv's
  real `timeline`; a broken copy fails it, so the check can fail.
- Every ExecStart parses with the real CLI (options that exist, values it accepts).
- The services carry the hardening deploy/README.md promises.
- The backup unit's own command writes an importable export (mode 0600) and its
  retention command removes only old exports; sysusers/tmpfiles make the user and folders.
- The scheduler unit's command, started twice on one PostgreSQL store, runs one daemon
  while the second waits on the advisory lock and takes over when the first stops.
- deploy/Containerfile: python:3.11-slim, a non-root USER after the last RUN, every
  COPY source present (every package of pyproject.toml among them), the lock file
  installed, EXPOSE/CMD/HEALTHCHECK consistent; its health command exits 0 on a 200 from
  /healthz and non-zero otherwise (against a real HTTP server). The image is not built
  here (no daemon, no network).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import pytest
from conftest import POSTGRES_URL, _postgres_location

from timeline.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
INSTALLED = "/opt/residency-timeline/venv/bin/timeline"
TIMELINE = str(Path(sys.executable).with_name("timeline"))
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (it is in CI)"
)
UNIT_NAMES = sorted(p.name for p in UNITS.iterdir())
SERVICES = [n for n in UNIT_NAMES if n.endswith(".service")]
LONG_RUNNING = [n for n in SERVICES if n != "timeline-backup.service"]
# Options of `serve` that branch i12-service adds; until it is merged they are not parsed
# (anything else unknown fails). Once `serve` has them they are parsed like the rest.
AWAITED = {"serve": {"--workers": 1, "--proxy-headers": 0}}


def directives(name: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every line of a unit file, in order."""
    section, found = "", []
    for raw in (UNITS / name).read_text("utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def values(name: str, key: str) -> list[str]:
    return [v for _, k, v in directives(name) if k == key]


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", "--recursive-errors=no", str(path)],
        capture_output=True,
        text=True,
        cwd=path.parent,
        timeout=60,
    )


def installed_here(name: str, into: Path) -> Path:
    """The unit with the install path replaced by this venv's `timeline`, in `into`."""
    text = (UNITS / name).read_text("utf-8")
    target = into / name
    target.write_text(text.replace(INSTALLED, TIMELINE), "utf-8")
    return target


# -- systemd-analyze verify ---------------------------------------------------------------
@needs_systemd
@pytest.mark.parametrize("name", UNIT_NAMES)
def test_every_unit_passes_systemd_analyze_verify(name, tmp_path):
    if name.endswith(".service"):
        assert INSTALLED in (UNITS / name).read_text("utf-8"), "units run the installed venv"
    for other in UNIT_NAMES:  # a timer's service sits beside it
        installed_here(other, tmp_path)
    done = verify(tmp_path / name)
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""


@needs_systemd
@pytest.mark.parametrize(
    "change, complaint",
    [
        ((INSTALLED, "/nonexistent/bin/timeline"), "is not executable"),
        (("Restart=on-failure", "Restart=sometimes"), "restart specifier"),
        (("PrivateTmp=yes", "PrivateTmpp=yes"), "Unknown key"),
    ],
)
def test_verify_fails_a_broken_copy(change, complaint, tmp_path):
    text = (UNITS / "timeline-follower.service").read_text("utf-8")
    old, new = change
    assert old in text
    text = text.replace(old, new)
    if old != INSTALLED:
        text = text.replace(INSTALLED, TIMELINE)
    unit = tmp_path / "timeline-follower.service"
    unit.write_text(text, "utf-8")
    done = verify(unit)
    assert done.returncode != 0
    assert complaint in done.stderr


def test_the_timer_starts_the_backup_service():
    assert values("timeline-backup.timer", "OnCalendar") == ["*-*-* 02:30:00 Asia/Taipei"]
    assert values("timeline-backup.timer", "Persistent") == ["true"]
    assert "timeline-backup.service" in UNIT_NAMES  # a timer starts the service of its name


# -- the command lines are the CLI's ---------------------------------------------------------
def exec_argv(name: str, key: str = "ExecStart") -> list[str]:
    """The unit's command with its Environment= defaults and %i (8001) filled in."""
    (line,) = values(name, key)
    env = dict(v.split("=", 1) for v in values(name, "Environment"))
    line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line).replace("%i", "8001")
    argv = shlex.split(line)
    if argv[:2] == ["/bin/sh", "-c"]:
        argv = shlex.split(argv[2])
        assert argv[0] == "exec"
        argv = argv[1:]
    return argv


def parse_with_cli(args: list[str]) -> click.Context:
    """Parse `timeline ARGS` with the real commands: group options, then the subcommand's."""
    at = next(i for i, arg in enumerate(args) if arg in cli_main.commands)
    group_options = args[:at]
    while group_options:  # the group's own options: -v/--verbose and --db VALUE
        option = group_options.pop(0)
        assert option in {"-v", "--verbose", "--db"}, f"unknown option {option}"
        if option == "--db":
            group_options.pop(0)
    name, rest = args[at], list(args[at + 1 :])
    command = cli_main.commands[name]
    known = {opt for param in command.params for opt in param.opts}
    for option, arity in AWAITED.get(name, {}).items():
        if option not in known and option in rest:
            where = rest.index(option)
            del rest[where : where + 1 + arity]
    return command.make_context(name, rest)


@pytest.mark.parametrize("name", SERVICES)
def test_exec_start_is_a_valid_timeline_command(name):
    argv = exec_argv(name)
    assert argv[0] == INSTALLED
    context = parse_with_cli(argv[1:])
    expected = {
        "timeline-api@.service": "serve",
        "timeline-follower.service": "follow",
        "timeline-scheduler.service": "scheduler",
        "timeline-backup.service": "export",
    }[name]
    assert context.info_name == expected
    if expected == "serve":
        assert context.params["port"] == 8001  # the instance is the port
    if expected == "scheduler":
        assert context.params["wait"] == float("inf")  # a second one waits on the lock


# -- hardening ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SERVICES)
def test_services_run_as_the_timeline_user_with_hardening(name):
    found = {(k, v) for _, k, v in directives(name)}
    for setting in [
        ("User", "timeline"),
        ("Group", "timeline"),
        ("EnvironmentFile", "/etc/residency-timeline/timeline.env"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictSUIDSGID", "yes"),
        ("UMask", "0077"),
        ("SystemCallFilter", "@system-service"),
    ]:
        assert setting in found, f"{name} lacks {setting[0]}={setting[1]}"
    writable = values(name, "ReadWritePaths")
    expected = (
        "/var/backups/residency-timeline"
        if name == "timeline-backup.service"
        else "/var/lib/residency-timeline"
    )
    assert writable == [expected]
    if name in LONG_RUNNING:
        assert values(name, "Restart") == ["on-failure"]
        assert values(name, "StateDirectory") == ["residency-timeline"]
        assert ("Install", "WantedBy", "multi-user.target") in directives(name)
        # The read models are this host's file, shared by the API, follower and scheduler.
        assert "TIMELINE_READ_DB=/var/lib/residency-timeline/read.db" in values(name, "Environment")


def test_the_env_example_sets_what_the_units_expand():
    example = (DEPLOY / "timeline.env.example").read_text("utf-8")
    assigned = {
        line.split("=", 1)[0]
        for line in example.splitlines()
        if line and not line.startswith("#") and "=" in line
    }
    for name in SERVICES:
        for key in ("ExecStart",):
            for variable in re.findall(r"\$\{(\w+)\}", " ".join(values(name, key))):
                assert variable in assigned, f"{variable} of {name} is not in the example"
    assert {"TIMELINE_DB", "TIMELINE_SESSION_SECRET", "TIMELINE_FEED_TOKENS"} <= assigned


def test_the_env_example_holds_only_settings_timeline_knows():
    """An unknown TIMELINE_* variable stops every command: the example (commented lines too)."""
    from timeline.settings import Settings, env_name, load_settings

    example = (DEPLOY / "timeline.env.example").read_text("utf-8")
    named = re.findall(r"^#?(TIMELINE_\w+)=(.*)$", example, flags=re.MULTILINE)
    known = {env_name(field) for field in Settings.model_fields}
    assert {name for name, _ in named} <= known
    # Credentials and the retry schedule among them, so the scheduler's sink can be set up.
    assert {"TIMELINE_WEBHOOK_SECRET", "TIMELINE_RETRY_ATTEMPTS"} <= {n for n, _ in named}
    # Its values are valid as they stand (the commented ones too: they show the defaults).
    settings = load_settings(dict(named))
    assert settings.is_postgres and settings.retry_attempts == 12


# -- the backup unit's own commands --------------------------------------------------------
def test_the_backup_command_writes_a_private_importable_export(tmp_path):
    events = tmp_path / "events.db"
    feed = ROOT / "examples" / "feed.jsonl"
    subprocess.run([TIMELINE, "--db", str(events), "ingest", str(feed)], capture_output=True)
    backups = tmp_path / "backups"
    backups.mkdir()
    (line,) = values("timeline-backup.service", "ExecStart")
    # As systemd runs it: %% is a literal %, then /bin/sh -c.
    command = (
        line.replace("%%", "%")
        .replace(INSTALLED, TIMELINE)
        .replace("/var/backups/residency-timeline", str(backups))
    )
    env = {**os.environ, "TIMELINE_DB": str(events)}
    done = subprocess.run(shlex.split(command), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (written,) = backups.iterdir()
    assert re.fullmatch(r"timeline-\d{8}T\d{6}Z\.jsonl", written.name)
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    restored = tmp_path / "restored.db"
    imported = subprocess.run(
        [TIMELINE, "--db", str(restored), "import", str(written)], capture_output=True, text=True
    )
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["accepted"] > 0

    old = backups / "timeline-20200101T000000Z.jsonl"
    old.write_text("{}\n")
    forty_days = time.time() - 40 * 86400
    os.utime(old, (forty_days, forty_days))
    unrelated = backups / "notes.txt"
    unrelated.write_text("kept\n")
    os.utime(unrelated, (forty_days, forty_days))
    (post,) = values("timeline-backup.service", "ExecStartPost")
    prune = shlex.split(post.replace("/var/backups/residency-timeline", str(backups)))
    assert subprocess.run(prune, capture_output=True).returncode == 0
    assert sorted(p.name for p in backups.iterdir()) == sorted([written.name, "notes.txt"])


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles sets owners: needs root")
@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_and_tmpfiles_make_the_user_and_the_folders(tmp_path):
    root = tmp_path / "root"
    for kind in ("sysusers.d", "tmpfiles.d"):
        (root / "usr/lib" / kind).mkdir(parents=True)
        for conf in (DEPLOY / kind).iterdir():
            shutil.copy(conf, root / "usr/lib" / kind / conf.name)
    (root / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={root}"], check=True, capture_output=True)
    passwd = (root / "etc/passwd").read_text()
    (entry,) = [line for line in passwd.splitlines() if line.startswith("timeline:")]
    uid = int(entry.split(":")[2])
    assert entry.endswith(":/var/lib/residency-timeline:/usr/sbin/nologin")
    subprocess.run(
        ["systemd-tmpfiles", f"--root={root}", "--create"], check=True, capture_output=True
    )
    backups = (root / "var/backups/residency-timeline").stat()
    assert (stat.S_IMODE(backups.st_mode), backups.st_uid) == (0o700, uid)
    config = (root / "etc/residency-timeline").stat()
    assert (stat.S_IMODE(config.st_mode), config.st_uid) == (0o750, 0)


# -- one scheduler; a second waits on the advisory lock --------------------------------------
def read(path: Path) -> str:
    return path.read_text("utf-8", errors="replace") if path.exists() else ""


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.skipif(not POSTGRES_URL, reason="TIMELINE_TEST_POSTGRES_URL is not set (CI sets it)")
def test_a_second_scheduler_waits_for_the_lock_and_takes_over(tmp_path):
    argv = exec_argv("timeline-scheduler.service")
    argv[0] = TIMELINE
    sink = argv.index("--sink") + 1
    argv[sink] = f"jsonl:{tmp_path / 'alerts.jsonl'}"
    with contextmanager(_postgres_location)() as location:
        env = {**os.environ, "TIMELINE_DB": location, "TIMELINE_READ_DB": str(tmp_path / "r.db")}
        # As deploy/README.md installs a host: the store is made once, by `timeline init`.
        made = subprocess.run(
            [TIMELINE, "init"], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert made.returncode == 0, made.stderr
        logs = [tmp_path / "first.log", tmp_path / "second.log"]
        processes: list[subprocess.Popen] = []
        try:
            for log in logs:
                with log.open("w") as err:
                    processes.append(subprocess.Popen(argv, env=env, cwd=tmp_path, stderr=err))
                if not processes[1:]:
                    wait_for(lambda: "added the daily job" in read(logs[0]), 30, "the first")
            first, second = processes
            time.sleep(2.0)  # the second has had time to start, and waits on the lock
            assert second.poll() is None, read(logs[1])
            assert "scheduler starting" not in read(logs[1])
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=20) == 0, read(logs[0])
            wait_for(lambda: "found in the job store" in read(logs[1]), 30, "the takeover")
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=20) == 0, read(logs[1])
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
        assert "Traceback" not in read(logs[0]) + read(logs[1])


# -- the container file -------------------------------------------------------------------
def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Containerfile, continuation lines joined."""
    joined, found = "", []
    for raw in (DEPLOY / "Containerfile").read_text("utf-8").splitlines():
        line = raw.strip()
        if not joined and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            joined += line[:-1] + " "
            continue
        joined += line
        keyword, _, rest = joined.partition(" ")
        found.append((keyword.upper(), rest.strip()))
        joined = ""
    assert not joined, "a continuation runs past the end of the file"
    return found


def args_of(keyword: str) -> list[str]:
    return [rest for k, rest in instructions() if k == keyword]


def test_the_image_starts_from_python_311_slim():
    assert args_of("FROM") == ["python:3.11-slim"]


def test_the_image_runs_as_a_non_root_user_created_in_it():
    found = instructions()
    users = [rest for k, rest in found if k == "USER"]
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    last_user = max(i for i, (k, _) in enumerate(found) if k == "USER")
    assert all(k != "RUN" for k, _ in found[last_user:]), "RUN after USER runs as that user"
    created = " ".join(args_of("RUN"))
    made = re.search(r"useradd ([^&]*)", created)
    assert made, "the user is not created in the image"
    assert made.group(1).split()[-1] == user
    assert "--system" in made.group(1)


def test_every_copied_file_exists_and_every_package_is_copied():
    sources: list[str] = []
    for rest in args_of("COPY"):
        parts = rest.split()
        assert not any(p.startswith("--from") for p in parts)
        sources += parts[:-1]
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert sorted(packages) == sorted(s for s in sources if (ROOT / s).is_dir())
    assert {"requirements.lock", "pyproject.toml", project["project"]["readme"]} <= set(sources)
    run = " ".join(args_of("RUN"))
    assert "pip install -r requirements.lock" in run
    assert "pip install --no-deps ." in run
    assert "libpq5" in run  # psycopg's pure-Python build loads libpq
    ignored = (ROOT / ".dockerignore").read_text("utf-8").split()
    assert {".git", ".venv"} <= set(ignored)


def test_entrypoint_cmd_expose_and_healthcheck_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    (entry,) = args_of("ENTRYPOINT")
    assert json.loads(entry) == list(project["project"]["scripts"])  # ["timeline"]
    (cmd,) = args_of("CMD")
    argv = json.loads(cmd)
    assert argv[0] == "serve"
    port = argv[argv.index("--port") + 1]
    assert args_of("EXPOSE") == [port]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"  # reachable from outside the container
    parse_with_cli(argv)
    env = " ".join(args_of("ENV"))
    assert f"HEALTH_URL=http://127.0.0.1:{port}/healthz" in env
    assert "TIMELINE_READ_DB=/var/lib/residency-timeline/read.db" in env


def health_command() -> list[str]:
    (check,) = args_of("HEALTHCHECK")
    assert "--interval=" in check and "--timeout=" in check
    return json.loads(check.split(" CMD ", 1)[1])


@contextmanager
def health_server(status: int) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}' if status == 200 else b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_the_health_command_follows_healthz(status, healthy):
    argv = health_command()
    assert argv[0] == "python"
    with health_server(status) as url:
        done = subprocess.run(
            [sys.executable, *argv[1:]],
            env={**os.environ, "HEALTH_URL": url},
            capture_output=True,
            timeout=30,
        )
    assert (done.returncode == 0) is healthy


def test_the_health_command_fails_when_nothing_listens():
    from api_server import free_port

    done = subprocess.run(
        [sys.executable, *health_command()[1:]],
        env={**os.environ, "HEALTH_URL": f"http://127.0.0.1:{free_port()}/healthz"},
        capture_output=True,
        timeout=30,
    )
    assert done.returncode != 0
