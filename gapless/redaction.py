"""Keep secrets (the tardis API key, database passwords) out of every log line and error message.

gapless never puts a secret into a message on purpose (URLs are shown through
:func:`gapless.urls.redact_url`, replay options with ``apiKey="***"``), but libraries do: urllib3 logs
every request URL at DEBUG, and the API key travels in the replay URL's query string. A
:class:`SecretFilter` on the log handlers is the last line of defence: it replaces every form in which
a secret can appear (plain, URL-encoded, doubly URL-encoded) before the line is written.
"""
import logging
from urllib.parse import quote, quote_plus, urlsplit

MASK = "***"


def secret_forms(secret):
    """The spellings of ``secret`` that may show up in text, longest first."""
    if not secret:
        return []
    forms = {secret, quote(secret, safe=""), quote_plus(secret), quote(quote(secret, safe=""), safe="")}
    return sorted(forms, key=len, reverse=True)


def url_password(url):
    """The password in a database URL, or None."""
    try:
        return urlsplit(url or "").password
    except ValueError:
        # unparseable (e.g. a bad port): take what sits between "user:" and "@"
        rest = (url or "").split("://", 1)[-1]
        if "@" in rest and ":" in rest.rsplit("@", 1)[0]:
            return rest.rsplit("@", 1)[0].split(":", 1)[1] or None
        return None


def redact(text, secrets):
    """``text`` with every form of every secret replaced by ``***``."""
    for secret in secrets:
        for form in secret_forms(secret):
            if form in text:
                text = text.replace(form, MASK)
    return text


class SecretFilter(logging.Filter):
    """A handler filter that masks secrets in the message, the arguments and the traceback."""

    def __init__(self, secrets):
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]  # a 1-3 character "secret" would mask noise

    def filter(self, record):
        if not self.secrets:
            return True
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def install_secret_filter(secrets):
    """Mask ``secrets`` in everything the root logger's handlers write (call after configuring them)."""
    secret_filter = SecretFilter(secrets)
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, SecretFilter)]:
            handler.removeFilter(old)
        handler.addFilter(secret_filter)
    return secret_filter


# loggers of libraries that write request URLs (and so the API key) into their messages
URL_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "websocket")


def protect_url_loggers(secrets):
    """Mask ``secrets`` at the source, in the URL-logging library loggers, whatever handlers the
    application (e.g. legacy code importing gapless) has configured."""
    secret_filter = SecretFilter(secrets)
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, SecretFilter)]:
            secret_filter.secrets = sorted(set(secret_filter.secrets) | set(old.secrets))
            logger.removeFilter(old)
        logger.addFilter(secret_filter)
    return secret_filter
