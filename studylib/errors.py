"""The study's error types, and the one redaction that keeps secrets out of everything a person or a file sees.

Each error message is one sentence: what, the bad value, what is allowed; it passes through `redact`
when it is made, so no message ever repeats a password. The same `redact` cleans records, cells.json,
tables and executed notebooks before they are written, and `find_secret` says where a parameter
carries a secret, so that parameters holding one are refused before any work (secrets travel by
environment variable or by a credentials file named by path, never as a parameter). It lives here,
in the lowest leaf, because the errors themselves need it.
"""
from __future__ import annotations

import os
import re
from typing import Optional
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
# a setting or query key whose value is a secret: any key holding one of these words, unless listed as harmless
SECRET_WORDS = ("secret", "password", "passwd", "passphrase", "pwd", "token", "credential", "key", "session",
                "auth", "signature", "connection_string", "conn_str", "sas", "cookie", "private")
NOT_SECRET = frozenset({"endpoint_url", "region_name", "anon", "use_ssl", "requester_pays", "default_block_size",
                        "default_fill_cache", "version_aware", "cache_regions", "project", "skip_instance_cache",
                        "use_listings_cache", "listings_expiry_time", "max_concurrency", "client_kwargs",
                        "config_kwargs", "auto_mkdir"})
SECRET_QUERY_KEYS = frozenset({"sig", "se", "sp", "st", "sv", "x-amz-security-token"})  # SAS and presigned URLs
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
PAIR = re.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)=(?P<value>[^\s;&,'\"]+)")   # key=value, as in connection strings
MIN_ENV_SECRET = 8   # an environment secret this long or longer is masked wherever it appears in text
SECRETS_ALLOWED = ("free of secrets: a URL without a password and settings without credentials; the storage and "
                   "database libraries read them from the environment (AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                   "GOOGLE_APPLICATION_CREDENTIALS, PGPASSWORD, MYSQL_PWD, ...) or from a credentials file named "
                   "by path (PGPASSFILE, AWS_SHARED_CREDENTIALS_FILE, ...)")


def is_secret_key(key) -> bool:
    """True for a setting or query key whose value is a secret (password, token, account key, ...)."""
    k = str(key).lower()
    return k not in NOT_SECRET and (k in SECRET_QUERY_KEYS or any(w in k for w in SECRET_WORDS))


def url_has_secret(url: str) -> bool:
    """True for a URL with a password in it, or a query parameter that holds a secret (signature, token, ...)."""
    try:
        parts = urlsplit(url)
        return bool(parts.password) or any(is_secret_key(k) for k, _ in parse_qsl(parts.query))
    except ValueError:   # an unparsable URL (bad port, ...): judge it by its text
        return "@" in url.split("://", 1)[-1].split("/", 1)[0]


def redact_url(url: str, keep_user: bool = False) -> str:
    """The URL without its password, and without a ?query or #fragment (they can hold signed tokens).

    `keep_user` keeps the user name (database URLs read better with it); a plain path comes back as it is.
    """
    if not URL.fullmatch(str(url or "")):
        return url
    scheme, rest = url.split("://", 1)
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at and keep_user:
        user = userinfo.split(":", 1)[0]
        host = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{user}@{host}"
    return f"{scheme}://{host}{slash}{path}"


def _masked_url(url: str) -> str:
    """A URL that holds a secret, as text may show it: user and password masked together (an S3 user is an
    access key id, a git user may be a token), the query and fragment dropped."""
    scheme, rest = redact_url(url).split("://", 1)
    netloc = re.split(r"[/?#]", url.split("://", 1)[1], maxsplit=1)[0]
    return f"{scheme}://{MASK}@{rest}" if "@" in netloc else f"{scheme}://{rest}"


def _env_secrets() -> list[str]:
    return sorted((v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= MIN_ENV_SECRET),
                  key=len, reverse=True)


def _redact_text(text: str, env: list[str]) -> str:
    text = URL.sub(lambda m: _masked_url(m.group(0)) if url_has_secret(m.group(0)) else m.group(0), text)
    text = PAIR.sub(lambda m: f"{m['key']}={MASK}" if is_secret_key(m["key"]) and m["value"] != MASK else m.group(0), text)
    for value in env:
        text = text.replace(value, MASK)
    return text


def _redact(value, env: list[str]):
    if isinstance(value, str):
        return _redact_text(value, env) if value else value
    if isinstance(value, dict):
        return {_redact(k, env): MASK if isinstance(v, str) and v and is_secret_key(k) else _redact(v, env)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v, env) for v in value)
    return value


def redact(value):
    """`value` with every secret masked. In text: a URL's user:password and signed query,
    `key=value` pairs whose key names a secret (connection strings), and the value of any secret-named
    environment variable. In a mapping: also the text under a key that names a secret. Dicts, lists and
    tuples are cleaned throughout; numbers and anything else come back as they are."""
    return _redact(value, _env_secrets())


def _file_path(value) -> bool:
    """True for text that names an existing file: a credentials file named by path (gcsfs's token, ...)."""
    try:
        return isinstance(value, str) and "\n" not in value and os.path.isfile(os.path.expanduser(value))
    except (OSError, ValueError):
        return False


def _find(value, where: str):
    """(where, what an error may show) of the first secret in `value`, or None."""
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{where}.{k}" if where else str(k)
            if is_secret_key(k) and v not in (None, "", False, {}, []) and not _file_path(v):
                return path, "<hidden>"
            found = _find(v, path)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _find(v, f"{where}[{i}]")
            if found is not None:
                return found
    elif isinstance(value, str) and any(url_has_secret(u) for u in URL.findall(value)):
        return where, value   # shown redacted, as every error value is
    return None


def find_secret(value) -> Optional[str]:
    """Where in a parameter value a secret sits (a path such as 'storage_options.passphrase' or 'o[0].key';
    '' for the value itself), or None: a mapping key that names a secret (unless its value names an existing
    file: a credentials file passed by path), or text holding a URL with a password or a signed query."""
    found = _find(value, "")
    return None if found is None else found[0]


def check_no_secret(parameter: str, value) -> None:
    """Before any work: the one-sentence ParameterError when `value` (a parameter, or a whole mapping of them
    when `parameter` is '') carries a secret, naming where it sits and never repeating it."""
    found = _find(value, "")
    if found is not None:
        where, shown = found
        raise ParameterError(".".join(p for p in (parameter, where) if p).replace(".[", "["), shown, SECRETS_ALLOWED)


class StudyError(Exception):
    """Base class for errors a user can act on. Its message never holds a secret."""

    def __init__(self, *args):
        super().__init__(*(redact(a) for a in args))


class ParameterError(StudyError, ValueError):
    def __init__(self, parameter: str, value, allowed: str):
        self.parameter, self.value, self.allowed = parameter, redact(value), redact(allowed)
        super().__init__(f"parameter '{parameter}' is {self.value!r}, but it must be {self.allowed}.")


class DatasetUnavailable(StudyError, FileNotFoundError):
    """A dataset is not on disk and could not be downloaded."""


class PretrainedWeightsUnavailable(StudyError, FileNotFoundError):
    """Pretrained weights are not in the library's cache and could not be downloaded."""
