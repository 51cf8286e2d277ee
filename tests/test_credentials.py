"""Sink credentials: settings of the one configuration (the environment, a secret file or
the secrets folder), never from a sink spec.

Also the webhook's configured header and HMAC signature, checked by a loopback receiver
that recomputes the signature on its own (tests/receivers.py).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from receivers import WebhookReceiver, expected_signature
from test_sinks import make_alert

from scheduler.credentials import CredentialError, Secret, SinkCredentials
from scheduler.jobs import DeliveryConfig
from scheduler.sinks import (
    SmtpSink,
    WebhookSink,
    alert_json,
    sink_from_spec,
    verify_webhook_signature,
    webhook_signature,
)
from timeline.ingest import ingest_objects
from timeline.settings import MASK, SettingsError, load_settings

TIMELINE = str(Path(sys.executable).with_name("timeline"))
NOW = datetime(2024, 6, 1, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)


# -- reading them ------------------------------------------------------------------------


def credentials_of(environ: dict[str, str]) -> SinkCredentials:
    """The credentials as every command gets them: the configuration read once, its sinks' part."""
    return DeliveryConfig.from_settings(load_settings(environ)).credentials


def test_nothing_set_means_no_credentials() -> None:
    assert credentials_of({}) == SinkCredentials()


def test_values_come_from_variables_or_files(tmp_path: Path) -> None:
    token_file = tmp_path / "line-token"
    token_file.write_text("file-token\n")  # the newline `echo` leaves is not part of it
    credentials = credentials_of(
        {
            "TIMELINE_SMTP_USERNAME": "bot",
            "TIMELINE_SMTP_PASSWORD": "pw one",
            "TIMELINE_LINE_CHANNEL_TOKEN_FILE": str(token_file),
            "TIMELINE_WEBHOOK_SECRET": "s3cret",
            "TIMELINE_WEBHOOK_HEADER": "Authorization: Bearer abc def",
        }
    )
    assert credentials.smtp_username == Secret("bot")
    assert credentials.smtp_password == Secret("pw one")
    assert credentials.line_channel_token == Secret("file-token")
    assert credentials.webhook_secret == Secret("s3cret")
    assert credentials.webhook_header == ("Authorization", Secret("Bearer abc def"))
    shown = repr(credentials)
    for value in ("bot", "pw one", "file-token", "s3cret", "abc def"):
        assert value not in shown


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"TIMELINE_SMTP_PASSWORD": "x"}, "go together"),
        ({"TIMELINE_SMTP_USERNAME": "x"}, "go together"),
        (
            {"TIMELINE_WEBHOOK_SECRET": "x", "TIMELINE_WEBHOOK_SECRET_FILE": "/etc/hostname"},
            "set only one",
        ),
        ({"TIMELINE_LINE_CHANNEL_TOKEN_FILE": "/nonexistent/token"}, "cannot read"),
        ({"TIMELINE_LINE_CHANNEL_TOKEN": "two\nlines"}, "one line"),
        ({"TIMELINE_WEBHOOK_HEADER": "no colon here"}, "Name: value"),
        ({"TIMELINE_WEBHOOK_HEADER": "Bad Name: v"}, "Name: value"),
        ({"TIMELINE_WEBHOOK_HEADER": "Idempotency-Key: mine"}, "set by the webhook"),
        ({"TIMELINE_WEBHOOK_HEADER": "X-Timeline-Signature: forged"}, "set by the webhook"),
    ],
)
def test_bad_settings_name_the_setting_never_the_value(environ: dict, needle: str) -> None:
    with pytest.raises(SettingsError) as raised:
        credentials_of(environ)
    message = str(raised.value)
    assert needle in message
    assert "TIMELINE_" in message
    for value in ("two\nlines", "mine", "forged", "no colon here"):
        assert value not in message


def test_secret_files_that_are_empty_binary_or_huge_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    huge = tmp_path / "huge"
    huge.write_text("k" * (64 * 1024 + 1))
    for path, needle in ((empty, "empty"), (binary, "UTF-8"), (huge, "64 KiB")):
        with pytest.raises(SettingsError, match=f"TIMELINE_WEBHOOK_SECRET_FILE: .*{needle}"):
            credentials_of({"TIMELINE_WEBHOOK_SECRET_FILE": str(path)})


def test_credentials_also_come_from_the_secrets_folder(tmp_path: Path) -> None:
    """Docker secrets / systemd credentials: a file per setting, named as its variable."""
    (tmp_path / "TIMELINE_SMTP_USERNAME").write_text("bot\n")
    (tmp_path / "TIMELINE_SMTP_PASSWORD").write_text("folder pw\n")
    credentials = credentials_of({"TIMELINE_SECRETS_DIR": str(tmp_path)})
    assert credentials.smtp_username == Secret("bot")
    assert credentials.smtp_password == Secret("folder pw")
    # The environment still wins over the folder (the configuration's order).
    both = credentials_of(
        {"TIMELINE_SECRETS_DIR": str(tmp_path), "TIMELINE_SMTP_PASSWORD": "env pw"}
    )
    assert both.smtp_password == Secret("env pw")


def test_the_sinks_check_plain_values_themselves() -> None:
    """`SinkCredentials.from_values` refuses what a sink could not send, whoever calls it."""
    with pytest.raises(CredentialError, match="TIMELINE_SMTP_PASSWORD"):
        SinkCredentials.from_values(smtp_username="bot")
    with pytest.raises(CredentialError, match=r"TIMELINE_LINE_CHANNEL_TOKEN: .*one line"):
        SinkCredentials.from_values(line_channel_token="a\r\nX-Injected: 1")
    assert SinkCredentials.from_values(webhook_secret="") == SinkCredentials()


def test_config_show_masks_every_credential(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMELINE_")}
    env |= {
        "TIMELINE_SMTP_USERNAME": "bot-hunter2",
        "TIMELINE_SMTP_PASSWORD": "pw-hunter2",
        "TIMELINE_LINE_CHANNEL_TOKEN": "line-hunter2",
        "TIMELINE_WEBHOOK_SECRET": "hook-hunter2",
        "TIMELINE_WEBHOOK_HEADER": "Authorization: Bearer hdr-hunter2",
        "TIMELINE_RETRY_ATTEMPTS": "5",
    }
    for extra in ([], ["--json"]):
        result = subprocess.run(
            [TIMELINE, "config", "--show", *extra],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert "hunter2" not in result.stdout + result.stderr
    shown = json.loads(result.stdout)
    names = ("smtp_username", "smtp_password", "line_channel_token", "webhook_secret")
    for name in (*names, "webhook_header"):
        assert shown[name] == MASK, name
    assert shown["retry_attempts"] == 5 and shown["retry_first_delay"] == 60


def test_a_secret_is_never_shown_nor_pickled() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    with pytest.raises(TypeError):
        pickle.dumps(SinkCredentials(smtp_password=secret, smtp_username=Secret("u")))
    sink = SmtpSink("127.0.0.1", 25, "a@example.tw", ["b@example.tw"], None, "u", "hunter2")
    assert "hunter2" not in repr(vars(sink))


# -- no credential in a spec ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "settings"),
    [
        (
            "smtp://bot:hunter2@mail.example.tw:587?from=a@example.tw&to=b@example.tw",
            ("TIMELINE_SMTP_USERNAME", "TIMELINE_SMTP_PASSWORD_FILE"),
        ),
        (
            "smtp://bot@mail.example.tw:587?from=a@example.tw&to=b@example.tw",
            ("TIMELINE_SMTP_USERNAME",),
        ),
        ("webhook:https://bot:hunter2@hooks.example.tw/x", ("TIMELINE_WEBHOOK_HEADER",)),
        ("webhook:https://hooks.example.tw/x?token=hunter2", ("TIMELINE_WEBHOOK_HEADER",)),
        ("webhook:https://hooks.example.tw/x?access_token=hunter2", ("TIMELINE_WEBHOOK_SECRET",)),
        ("webhook:https://hooks.example.tw/x?code=hunter2", ("TIMELINE_WEBHOOK_HEADER",)),
        ("webhook:https://hooks.example.tw/x?api_key=hunter2", ("TIMELINE_WEBHOOK_HEADER",)),
    ],
)
def test_a_credential_in_the_spec_is_refused_saying_where_it_belongs(
    spec: str, settings: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError) as raised:
        sink_from_spec(spec)
    message = str(raised.value)
    assert "hunter2" not in message
    assert "job store" in message
    for setting in settings:
        assert setting in message


def test_an_ordinary_query_string_is_still_fine() -> None:
    sink = sink_from_spec("webhook:https://hooks.example.tw/x?channel=alerts&v=2")
    assert isinstance(sink, WebhookSink)
    sink.close()


def test_smtp_credentials_come_from_the_credentials() -> None:
    credentials = SinkCredentials(smtp_username=Secret("bot"), smtp_password=Secret("pw"))
    sink = sink_from_spec("smtp:mail.example.tw:587?from=a@example.tw&to=b@example.tw", credentials)
    assert isinstance(sink, SmtpSink)
    assert sink.username == "bot"
    bare = sink_from_spec("smtp:mail.example.tw:587?from=a@example.tw&to=b@example.tw")
    assert isinstance(bare, SmtpSink) and bare.username is None


def test_cli_refuses_a_password_on_the_command_line_with_exit_2(sqlite_store, tmp_path) -> None:
    result = subprocess.run(
        [
            *(TIMELINE, "alerts", "--on", "2024-06-01", "--emit", "--sink"),
            "smtp://bot:hunter2@127.0.0.1:2525?from=a@example.tw&to=b@example.tw",
            *("--db", sqlite_store.config.location),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "hunter2" not in result.stderr + result.stdout
    assert "TIMELINE_SMTP_PASSWORD" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_bad_credential_setting_exits_2_naming_it(sqlite_store, tmp_path) -> None:
    env = {**os.environ, "TIMELINE_SMTP_PASSWORD": "only-half"}
    env.pop("TIMELINE_SMTP_USERNAME", None)
    result = subprocess.run(
        [TIMELINE, "alerts", "--on", "2024-06-01", "--emit", "--db", sqlite_store.config.location],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 2
    assert "TIMELINE_SMTP_USERNAME" in result.stderr and "only-half" not in result.stderr


# -- the webhook's header and signature ----------------------------------------------------


def test_signature_scheme_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = alert_json(make_alert()).encode()
    signature = webhook_signature("s3cret", 1717200000, body)
    assert signature == expected_signature("s3cret", "1717200000", body)
    now = datetime.fromtimestamp(1717200000 + 299, UTC)
    assert verify_webhook_signature("s3cret", body, "1717200000", signature, now)
    assert not verify_webhook_signature("other", body, "1717200000", signature, now)
    assert not verify_webhook_signature("s3cret", body + b" ", "1717200000", signature, now)
    assert not verify_webhook_signature("s3cret", body, "1717200001", signature, now)
    later = datetime.fromtimestamp(1717200000 + 301, UTC)
    assert not verify_webhook_signature("s3cret", body, "1717200000", signature, later)
    assert not verify_webhook_signature("s3cret", body, None, signature, now)
    assert not verify_webhook_signature("s3cret", body, "1717200000", "sha256=ü", now)


def test_webhook_sends_the_header_and_a_signature_the_receiver_verifies() -> None:
    credentials = SinkCredentials(
        webhook_secret=Secret("s3cret"),
        webhook_header=("Authorization", Secret("Bearer t0ken")),
    )
    alert = make_alert()
    with WebhookReceiver(secret="s3cret", header=("Authorization", "Bearer t0ken")) as receiver:
        sink = sink_from_spec(f"webhook:{receiver.url}", credentials)
        assert isinstance(sink, WebhookSink)
        sink.send(alert)
        sink.close()
    assert receiver.problems() == []
    (request,) = receiver.requests
    assert request.status == 200
    assert request.body == alert_json(alert).encode()  # the exact bytes that were signed
    assert request.headers["x-timeline-signature"].startswith("sha256=")
    assert receiver.delivered == {alert.key: alert.model_dump(mode="json")}


def test_a_receiver_refuses_a_wrong_secret_or_a_replayed_request() -> None:
    alert = make_alert()
    with WebhookReceiver(secret="s3cret") as receiver:
        wrong = WebhookSink(receiver.url, signing_secret=Secret("guess"))
        stale = WebhookSink(
            receiver.url, signing_secret=Secret("s3cret"), clock=lambda: NOW
        )  # 2024: far older than the receiver's five minutes
        unsigned = WebhookSink(receiver.url)
        for sink in (wrong, stale, unsigned):
            with pytest.raises(Exception):  # noqa: B017 -- DeliveryError, HTTP 401
                sink.send(alert)
            sink.close()
    assert receiver.problems() == [
        "bad signature",
        "stale or missing timestamp",
        "stale or missing timestamp",
    ]
    assert receiver.delivered == {}


def test_cli_emits_signed_webhooks_with_secrets_from_files(sqlite_store, tmp_path) -> None:
    from test_alerts_crash import cohort

    assert ingest_objects(sqlite_store, cohort(1)).ok
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text("file-s3cret\n")
    header_file = tmp_path / "webhook-header"
    header_file.write_text("X-Api-Key: k3y-from-file\n")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env |= {
        "TIMELINE_WEBHOOK_SECRET_FILE": str(secret_file),
        "TIMELINE_WEBHOOK_HEADER_FILE": str(header_file),
    }
    with WebhookReceiver(secret="file-s3cret", header=("X-Api-Key", "k3y-from-file")) as receiver:
        result = subprocess.run(
            [
                *(TIMELINE, "alerts", "--on", "2024-06-01", "--emit", "--sink"),
                *(f"webhook:{receiver.url}", "--db", sqlite_store.config.location),
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
        )
    assert result.returncode == 0, result.stderr
    assert receiver.problems() == []
    assert len(receiver.delivered) == 5
