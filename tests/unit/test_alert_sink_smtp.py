"""The SMTP alert sink against a real SMTP server (aiosmtpd on 127.0.0.1, a port the OS picks): one
mail per change, the password from the environment only, failures that name the host and never the
password or a recipient, TLS that verifies the server, and every field checked at build time."""

from __future__ import annotations

import shutil
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from adapters import alert_sinks
from adapters.alert_sinks import SinkError, SmtpSink, build_sinks
from domain.alert import Alert, AlertRule, Observation

T0 = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)
RULE = AlertRule("provider_down", threshold=120, clear_for=30, severity="critical")
PASSWORD = "s3cret-Pa55word"
RECIPIENTS = ["ops@example.com", "Oncall <oncall@example.com>"]
ENVELOPE_TO = ["ops@example.com", "oncall@example.com"]


@dataclass
class Mail:
    """One mail as the server took it."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    authenticated: bool


@dataclass
class Mailbox:
    """An aiosmtpd handler: keeps what it receives, answers DATA from ``answers`` first, answers the
    recipients in ``refuse`` with their refusal, drops the connection at the first ``drops`` DATA,
    and accepts one login (smeg, PASSWORD)."""

    mails: list[Mail] = field(default_factory=list)
    logins: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    datas: int = 0
    rcpts: int = 0
    drops: int = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        self.rcpts += 1
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.datas += 1
        if self.drops:  # the connection lost before the answer
            self.drops -= 1
            server.transport.close()
            return "421 closing"
        if self.answers:
            return self.answers.pop(0)
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message, session.authenticated))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        self.logins.append((mechanism, data.login, data.password))
        ok = (data.login, data.password) == (b"smeg", PASSWORD.encode())
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 235 or 535


class LocalController(Controller):
    """aiosmtpd on 127.0.0.1, on a socket bound before the server starts (no race for the port)."""

    def __init__(self, handler: Mailbox, **kwargs: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        super().__init__(handler, hostname="127.0.0.1", port=self.sock.getsockname()[1], **kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self.sock, ssl=self.ssl_context)


@pytest.fixture
def serve() -> Iterator[Callable[..., int]]:
    """Start a server for ``Mailbox`` (aiosmtpd keywords passed on); its port. Stopped at teardown."""
    started: list[LocalController] = []

    def start(mailbox: Mailbox, **kwargs: Any) -> int:
        controller = LocalController(mailbox, **kwargs)
        controller.start()
        started.append(controller)
        return controller.port

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (made with the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def trust(monkeypatch: pytest.MonkeyPatch, cert: Path) -> None:
    """The sink's default contexts (still verifying) trust the test certificate too."""
    real = ssl.create_default_context

    def trusting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = real(*args, **kwargs)
        context.load_verify_locations(cert)
        return context

    monkeypatch.setattr(ssl, "create_default_context", trusting)


def firing() -> Alert:
    alert = Alert.open("provider_down", "a", now=T0)
    seen = Observation("provider_down", "a", 180.0, True, "provider a down for 180 s", {"provider": "a"})
    alert.observe(seen, RULE, now=T0, clear_since=None)
    return alert


def resolved() -> Alert:
    alert = firing()
    clear = Observation("provider_down", "a", 0.0, False, "provider a is back", {"provider": "a"})
    alert.observe(clear, RULE, now=T0 + timedelta(seconds=90), clear_since=T0 + timedelta(seconds=40))
    return alert


def sink(port: int, **kwargs: Any) -> SmtpSink:
    """A sink to 127.0.0.1:port that retries without waiting."""
    return SmtpSink(
        "mail",
        "127.0.0.1",
        sender="smeg <smeg@example.com>",
        recipients=RECIPIENTS,
        port=port,
        backoff=0,
        **kwargs,
    )


def smtp(**fields: Any) -> dict[str, Any]:
    return {
        "type": "smtp",
        "host": "mail.example.com",
        "from": "smeg@example.com",
        "to": "ops@example.com",
    } | fields


def lines(mail: Mail) -> list[str]:
    return str(mail.message.get_content()).splitlines()


def test_a_firing_alert_is_one_mail_with_its_subject_recipients_and_fields(serve: Callable[..., int]) -> None:
    mailbox = Mailbox()
    alert = firing()
    sink(serve(mailbox)).notify(alert)

    [mail] = mailbox.mails
    assert (mail.mail_from, mail.rcpt_tos) == ("smeg@example.com", ENVELOPE_TO)
    assert mail.message["Subject"] == "[FIRING] smeg provider_down a"
    assert mail.message["From"] == "smeg <smeg@example.com>"
    assert mail.message["To"] == "ops@example.com, Oncall <oncall@example.com>"
    assert lines(mail) == [
        "status: firing",
        "rule: provider_down",
        "key: a",
        "severity: critical",
        "summary: provider a down for 180 s",
        "labels: provider=a",
        "value: 180.0",
        "raised_at: 2026-12-07T07:00:00Z",
        "resolved_at: -",
        f"alert_id: {alert.alert_id}",
        "text: [FIRING] provider_down a: provider a down for 180 s",
    ]


def test_a_resolved_alert_is_one_mail_marked_resolved(serve: Callable[..., int]) -> None:
    mailbox = Mailbox()
    sink(serve(mailbox)).notify(resolved())

    [mail] = mailbox.mails
    assert mail.rcpt_tos == ENVELOPE_TO
    assert mail.message["Subject"] == "[RESOLVED] smeg provider_down a"
    body = lines(mail)
    assert {"status: resolved", "resolved_at: 2026-12-07T07:01:30Z", "value: 0.0"} <= set(body)
    assert "text: [RESOLVED] provider_down a: provider a down for 180 s" in body


def test_a_key_with_a_line_break_cannot_add_a_header() -> None:
    alert = Alert.open("provider_down", "a\r\nBcc: thief@example.net", now=T0)
    message = sink(25).message(alert)
    assert message["Subject"] == "[RESOLVED] smeg provider_down a Bcc: thief@example.net"
    assert message["Bcc"] is None


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_the_sink_logs_in_with_the_password_from_the_environment(serve: Callable[..., int]) -> None:
    mailbox = Mailbox()
    port = serve(mailbox, authenticator=mailbox.authenticate, auth_require_tls=False, auth_required=True)
    config = smtp(host="127.0.0.1", port=port, to=RECIPIENTS, username="smeg", password_env="SMTP_PW")
    [_, mail_sink] = build_sinks({"mail": config}, {"SMTP_PW": PASSWORD})

    mail_sink.notify(firing())

    assert mailbox.logins == [("PLAIN", b"smeg", PASSWORD.encode())]
    [mail] = mailbox.mails
    assert mail.authenticated and mail.rcpt_tos == ENVELOPE_TO


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_wrong_password_is_a_sink_error_naming_the_host_only_and_not_retried(
    serve: Callable[..., int],
) -> None:
    mailbox = Mailbox()
    port = serve(mailbox, authenticator=mailbox.authenticate, auth_require_tls=False, auth_required=True)
    wrong = "not-the-" + PASSWORD

    with pytest.raises(SinkError) as raised:
        sink(port, credentials=("smeg", wrong)).notify(firing())

    text = str(raised.value)
    assert text == "SMTPAuthenticationError from 127.0.0.1"
    assert wrong not in text and "example.com" not in text and "oncall" not in text.lower()
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    # smtplib tries each mechanism offered, once: a retry (three bad logins per alert) could lock the account
    assert [mechanism for mechanism, _, _ in mailbox.logins] == ["PLAIN", "LOGIN"]
    assert mailbox.mails == []


def test_a_closed_port_is_a_sink_error_after_three_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    connects: list[tuple[str, int]] = []
    real = smtplib.SMTP.connect

    def counted(
        self: smtplib.SMTP, host: str = "localhost", port: int = 0, source_address: Any = None
    ) -> Any:
        connects.append((host, port))
        return real(self, host, port, source_address)

    monkeypatch.setattr(smtplib.SMTP, "connect", counted)
    with socket.socket() as closed:  # bound, never listening: the port refuses connections
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with pytest.raises(SinkError) as raised:
            sink(port).notify(firing())

    assert str(raised.value) == f"ConnectionRefusedError reaching 127.0.0.1:{port}"
    assert connects == [("127.0.0.1", port)] * 3


@pytest.mark.parametrize(
    ("answers", "datas", "delivered", "error"),
    [
        (["451 4.3.0 try again later"], 2, True, None),
        (["451 4.3.0 try again later"] * 3, 3, False, "SMTPDataError from 127.0.0.1"),
        (["554 5.7.1 rejected"], 1, False, "SMTPDataError from 127.0.0.1"),
    ],
    ids=["4xx-then-ok", "4xx-three-times", "5xx-not-retried"],
)
def test_a_4xx_answer_is_tried_again_and_a_5xx_is_not(
    serve: Callable[..., int], answers: list[str], datas: int, delivered: bool, error: str | None
) -> None:
    mailbox = Mailbox(answers=list(answers))
    port = serve(mailbox)
    try:
        sink(port).notify(firing())
        outcome = None
    except SinkError as exc:
        outcome = str(exc)
    assert (outcome, mailbox.datas, len(mailbox.mails)) == (error, datas, int(delivered))


def test_a_dropped_connection_is_tried_again(serve: Callable[..., int]) -> None:
    mailbox = Mailbox(drops=1)
    sink(serve(mailbox)).notify(firing())
    assert (mailbox.datas, len(mailbox.mails)) == (2, 1)


def test_a_refused_recipient_is_a_sink_error_that_does_not_name_it(serve: Callable[..., int]) -> None:
    mailbox = Mailbox(refuse={"oncall@example.com": "550 5.1.1 no such mailbox"})
    with pytest.raises(SinkError) as raised:
        sink(serve(mailbox)).notify(firing())
    assert str(raised.value) == "1 of 2 recipients refused by 127.0.0.1"
    assert [mail.rcpt_tos for mail in mailbox.mails] == [["ops@example.com"]]  # once: not retried


@pytest.mark.parametrize(
    ("answer", "tries"), [("450 4.2.1 mailbox busy", 3), ("550 5.1.1 no such mailbox", 1)]
)
def test_every_recipient_refused_is_tried_again_only_when_the_refusals_are_4xx(
    serve: Callable[..., int], answer: str, tries: int
) -> None:
    mailbox = Mailbox(refuse=dict.fromkeys(ENVELOPE_TO, answer))
    with pytest.raises(SinkError) as raised:
        sink(serve(mailbox)).notify(firing())
    assert str(raised.value) == "SMTPRecipientsRefused from 127.0.0.1"
    assert (mailbox.rcpts, mailbox.mails) == (2 * tries, [])


def test_starttls_verifies_the_server_certificate(
    serve: Callable[..., int], certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = Mailbox()
    port = serve(mailbox, tls_context=server_tls(certificate), require_starttls=True)

    with pytest.raises(SinkError) as raised:  # self-signed: not trusted by default
        sink(port, starttls=True).notify(firing())
    assert str(raised.value) == f"SSLCertVerificationError reaching 127.0.0.1:{port}"
    assert mailbox.mails == []

    trust(monkeypatch, certificate[0])
    sink(port, starttls=True).notify(firing())
    assert len(mailbox.mails) == 1


def test_port_465_speaks_tls_from_the_start(
    serve: Callable[..., int], certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = Mailbox()
    port = serve(mailbox, ssl_context=server_tls(certificate))
    monkeypatch.setattr(alert_sinks, "SMTPS_PORT", port)  # the test cannot have 465 itself

    with pytest.raises(SinkError, match="SSLCertVerificationError reaching"):
        sink(port).notify(firing())
    trust(monkeypatch, certificate[0])
    sink(port).notify(firing())
    assert len(mailbox.mails) == 1


def test_build_sinks_builds_an_smtp_sink_with_its_defaults() -> None:
    [_, mail] = build_sinks({"mail": smtp()}, {})
    assert isinstance(mail, SmtpSink)
    assert (mail.name, mail.host, mail.port, mail.starttls, mail.timeout) == (
        "mail",
        "mail.example.com",
        25,
        False,
        5.0,
    )
    assert (mail.recipients, mail.credentials, mail.repeats) == (["ops@example.com"], None, False)

    config = smtp(port=587, starttls=True, timeout=2, to=RECIPIENTS, username="smeg", password_env="PW")
    [_, mail] = build_sinks({"mail": config}, {"PW": PASSWORD})
    assert (mail.port, mail.starttls, mail.timeout, mail.recipients) == (587, True, 2.0, RECIPIENTS)
    assert mail.credentials == ("smeg", PASSWORD)


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (smtp(host=None), "host is required"),
        (smtp(host="mail.example.com:587"), "host must be a host name or IP address"),
        (smtp(host="smtp://mail.example.com"), "host must be a host name or IP address"),
        (smtp(host="mail.example.com/smtp"), "host must be a host name or IP address"),
        (smtp(host=""), "host must be a host name or IP address"),
        (smtp(**{"from": None}), "from is required"),
        (smtp(**{"from": "smeg"}), "from must be an email address"),
        (smtp(to=None), "to is required"),
        (smtp(to=[]), "to must be an email address or a list of them"),
        (smtp(to=["ops@example.com", "nobody"]), "to must be an email address"),
        (smtp(to="a@example.com, b@example.com"), "to must be an email address"),
        (smtp(to="ops@example.com\r\nBcc: thief@example.net"), "to must be an email address"),
        (smtp(port=0), "port must be a whole number from 1 to 65535"),
        (smtp(port=65536), "port must be a whole number from 1 to 65535"),
        (smtp(port="25"), "port must be a whole number from 1 to 65535"),
        (smtp(port=True), "port must be a whole number from 1 to 65535"),
        (smtp(starttls="yes"), "starttls must be true or false"),
        (smtp(port=465, starttls=True), "starttls is for a plain port"),
        (smtp(timeout=0), "timeout must be more than 0 and at most 60 seconds"),
        (smtp(timeout=60.5), "timeout must be more than 0 and at most 60 seconds"),
        (smtp(timeout=float("nan")), "timeout must be more than 0 and at most 60 seconds"),
        (smtp(timeout="5"), "timeout must be more than 0 and at most 60 seconds"),
        (
            smtp(tls=True),
            "unknown key 'tls' (known: from, host, password_env, port, starttls, timeout, to, type, "
            "username)",
        ),
        (smtp(username="smeg", password=PASSWORD), "unknown key 'password' (known: from,"),
        (smtp(username="smeg", password_env="SMTP_PW"), "environment variable SMTP_PW is not set"),
        (smtp(username="smeg"), "username needs password_env"),
        (smtp(password_env="PW"), "password_env needs a username"),
        (smtp(username="smeg", password_env=5), "password_env must name an environment variable"),
        (smtp(username="smé", password_env="PW"), "username and password must be ASCII"),
        (smtp(type="email"), "unknown key 'from' (known: token_env, type, url)"),
        (
            {"type": "email", "url": "https://hooks.example.com/x"},
            "type must be webhook, alertmanager or smtp",
        ),
        ({"type": "webhook", "host": "mail.example.com"}, "unknown key 'host' (known: token_env, type, url)"),
        ({"type": "webhook"}, "url must be an http(s) URL"),
    ],
)
def test_build_sinks_rejects_a_bad_table_naming_the_sink(config: dict[str, Any], error: str) -> None:
    config = {key: value for key, value in config.items() if value is not None}
    with pytest.raises(ValueError, match=r"^alert sink ops: ") as raised:
        build_sinks({"ops": config}, {"PW": PASSWORD})
    assert error in str(raised.value)
    assert PASSWORD not in str(raised.value)


def test_an_empty_password_variable_counts_as_missing() -> None:
    with pytest.raises(ValueError, match=r"^alert sink ops: environment variable PW is not set$"):
        build_sinks({"ops": smtp(username="smeg", password_env="PW")}, {"PW": ""})


def test_a_sink_that_is_not_a_table_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^alert sink ops: must be a table$"):
        build_sinks({"ops": "smtp"}, {})  # type: ignore[dict-item]
