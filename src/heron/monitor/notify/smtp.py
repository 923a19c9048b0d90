"""Mail: one plain-text message per delivery, listing its notices, in English then Russian.

The standard library's smtplib in a thread (a mail every few minutes at most does not
justify an asynchronous client as a new dependency); its socket timeout bounds every step.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import smtplib
import ssl
import time
from email.message import EmailMessage

from heron.models.alerts import Severity, SmtpSettings
from heron.monitor.notify.notice import (
    Context,
    Notice,
    NotifyError,
    labels_text,
    utc_text,
    value_text,
)

log = logging.getLogger(__name__)

SUBJECT_MAX = 160

_SEVERITY_RU = {
    Severity.critical: "критическое",
    Severity.warning: "предупреждение",
    Severity.info: "информация",
}
_STATE = {"firing": ("FIRING", "АКТИВНО"), "resolved": ("RESOLVED", "РАЗРЕШЕНО")}


def subject(notices: list[Notice]) -> str:
    """`[Heron critical] node node2 is down`, `[Heron resolved] …`, or for several
    `[Heron critical] 3 alerts: node node2 is down; …` (the worst severity of those firing)."""
    firing = [n for n in notices if n.state == "firing"]
    worst = max((n.severity for n in firing), key=lambda s: s.rank, default=None)
    tag = worst.value if worst else "resolved"
    if notices and all(n.test for n in notices):
        tag = "test"
    if len(notices) == 1:
        text = f"[Heron {tag}] {notices[0].summary}"
    else:
        text = f"[Heron {tag}] {len(notices)} alerts: " + "; ".join(n.summary for n in notices)
    text = " ".join(text.split())
    return text if len(text) <= SUBJECT_MAX else text[: SUBJECT_MAX - 1] + "…"


def body(notices: list[Notice], cluster: str) -> str:
    """The mail's text: each notice's details in English, then the same in Russian."""
    english = [f"Heron cluster {cluster}: {_count_en(notices)}.", ""]
    russian = [f"Кластер Heron {cluster}: {_count_ru(notices)}.", ""]
    for notice in notices:
        english += _details(notice, russian=False)
        russian += _details(notice, russian=True)
    if any(n.test for n in notices):
        english.insert(1, "This is a test sent from the channel's settings; no alert fired.")
        russian.insert(1, "Это проверка из настроек канала; оповещение не срабатывало.")
    return "\n".join([*english, "-- ", *russian]).rstrip() + "\n"


def _count_en(notices: list[Notice]) -> str:
    firing = sum(n.state == "firing" for n in notices)
    resolved = len(notices) - firing
    parts = [f"{firing} firing"] if firing else []
    parts += [f"{resolved} resolved"] if resolved else []
    noun = "alert" if len(notices) == 1 else "alerts"
    return f"{len(notices)} {noun} ({', '.join(parts)})"


def _count_ru(notices: list[Notice]) -> str:
    firing = sum(n.state == "firing" for n in notices)
    resolved = len(notices) - firing
    parts = [f"активных: {firing}"] if firing else []
    parts += [f"разрешённых: {resolved}"] if resolved else []
    return f"оповещений: {len(notices)} ({', '.join(parts)})"


def _details(notice: Notice, russian: bool) -> list[str]:
    state = _STATE[notice.state][1 if russian else 0]
    severity = _SEVERITY_RU[notice.severity] if russian else notice.severity.value
    words = (
        ("Правило", "Объект", "Значение", "Начало", "Окончание", "Идентификатор", "Ссылка")
        if russian
        else ("Rule", "Object", "Value", "Started", "Resolved", "Alert id", "Link")
    )
    rows = [
        (words[0], notice.rule),
        (words[1], labels_text(notice.labels)),
        (words[2], value_text(notice.value)),
        (words[3], utc_text(notice.started_at)),
        (words[4], utc_text(notice.resolved_at) if notice.resolved_at is not None else ""),
        (words[5], notice.alert_id),
        (words[6], notice.url or ""),
    ]
    width = max(len(word) for word in words) + 1
    lines = [f"{state} {severity}: {notice.summary}"]
    lines += [f"  {word + ':':<{width}} {text}" for word, text in rows if text]
    return [*lines, ""]


def message(settings: SmtpSettings, notices: list[Notice], cluster: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = settings.sender
    mail["To"] = ", ".join(settings.recipients)
    mail["Subject"] = subject(notices)
    mail["Date"] = email.utils.formatdate(usegmt=True)
    mail["Message-ID"] = email.utils.make_msgid("heron")
    # RFC 3834: a machine's message; vacation responders must not answer it.
    mail["Auto-Submitted"] = "auto-generated"
    mail["X-Heron-Cluster"] = cluster
    # Quoted-printable: 7-bit safe through any relay, still readable in the raw.
    mail.set_content(body(notices, cluster), cte="quoted-printable")
    return mail


async def send(settings: SmtpSettings, notices: list[Notice], context: Context) -> None:
    try:
        mail = message(settings, notices, context.cluster_name)
    except ValueError as exc:  # an address or a name that cannot be a header
        raise NotifyError(f"cannot make the mail: {_one_line(exc)}") from exc
    await send_message(settings, mail, context)


async def send_message(settings: SmtpSettings, mail: EmailMessage, context: Context) -> None:
    """Hand `mail` (its own From and To) to the channel's server, as the notices go: TLS,
    login and timeouts of `settings`; NotifyError with a one-line reason if it is refused."""
    await asyncio.to_thread(_send, settings, mail, context)


def _send(settings: SmtpSettings, mail: EmailMessage, context: Context) -> None:
    where = f"{settings.host}:{settings.port}"
    deadline = time.monotonic() + context.timeout

    def step(client: smtplib.SMTP) -> None:
        """Give the next exchange only the time left: the whole conversation ends within
        the timeout, so deliver's own limit never cuts a mail half sent (then sent twice)."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if client.sock is not None:
            client.sock.settimeout(left)

    try:
        client: smtplib.SMTP
        if settings.security == "tls":
            client = smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=context.timeout, context=context.tls
            )
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=context.timeout)
        with client:
            if settings.security == "starttls":
                step(client)
                client.ehlo()
                if not client.has_extn("starttls"):
                    raise NotifyError(f"the mail server {where} does not offer STARTTLS")
                step(client)
                client.starttls(context=context.tls)
                step(client)
                client.ehlo()
            if settings.username:
                step(client)
                client.login(settings.username, settings.password or "")
            step(client)
            refused = client.send_message(mail)
    except NotifyError:
        raise
    except smtplib.SMTPServerDisconnected as exc:
        # smtplib reports a read that timed out as a disconnection (the timeout its context).
        if isinstance(exc.__context__, TimeoutError):
            raise NotifyError(
                f"no answer from the mail server {where} within {context.timeout:g} s"
            ) from exc
        raise NotifyError(f"the mail server {where} closed the connection: {exc}") from exc
    except smtplib.SMTPAuthenticationError as exc:
        raise NotifyError(f"the mail server {where} refused the login: {_reply(exc)}") from exc
    except smtplib.SMTPRecipientsRefused as exc:
        who = ", ".join(sorted(exc.recipients))
        raise NotifyError(f"the mail server {where} refused every recipient ({who})") from exc
    except smtplib.SMTPSenderRefused as exc:
        raise NotifyError(f"the mail server {where} refused the sender: {_reply(exc)}") from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise NotifyError(f"the mail server {where}: {exc}") from exc
    except smtplib.SMTPResponseException as exc:
        raise NotifyError(f"the mail server {where} answered {_reply(exc)}") from exc
    except ssl.SSLCertVerificationError as exc:
        raise NotifyError(
            f"the mail server {where}'s certificate is not trusted: {exc.verify_message}"
        ) from exc
    except TimeoutError as exc:
        raise NotifyError(
            f"no answer from the mail server {where} within {context.timeout:g} s"
        ) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise NotifyError(f"cannot send mail through {where}: {_one_line(exc)}") from exc
    if refused:
        # Sent to the others: failing would send it to them again on the retry.
        log.warning("mail server %s refused recipients %s", where, ", ".join(sorted(refused)))


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
    return f"{exc.smtp_code} {_one_line(text)}".strip()


def _one_line(what: object) -> str:
    return " ".join(str(what).split()) or type(what).__name__
