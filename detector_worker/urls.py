"""URLs that may carry `user:password@` or secret query values: shown masked, fetched safely.

`mask_url` is the one way a URL is shown in a log line or a message (camera sources, model
archives). For fetching: urllib takes the credentials for part of the host (and quotes them in
its errors), so the URL is fetched without them and the server's auth challenge is answered
with them instead, Digest first (many IP cameras accept only Digest; it hands Basic challenges
on). The credentials are bound to that URL, so a redirect to another host does not get them.
"""

from __future__ import annotations

import re
import urllib.parse
import urllib.request

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]*\]|[^:@\[\]]*)(:\d*)?")
_DELIMS = re.compile(r"[/?#]")
_SECRET_KEY = re.compile(r"pass|pwd|token|secret|key|auth|sig|cred|^user|^usr|^login", re.IGNORECASE)


def mask_url(url: str, *, hide_query: bool = False) -> str:
    """The URL with its user:password@ replaced by `***@` and secret-looking query values by `***`.

    `hide_query`: the whole query becomes `?...` (a presigned archive URL's query is all token).
    Text without a `scheme://` (a plain path) is returned as it is.
    """
    m = _SCHEME.match(url)
    if m is None:
        return url
    prefix, rest = url[: m.end()], url[m.end() :]
    first_at = rest.find("@")
    if first_at >= 0:
        authority = _DELIMS.split(rest, maxsplit=1)[0]
        # An unescaped / ? # inside the password ends the parsed authority early; a host:port
        # that does not parse as one is treated as credentials too (over-masking is harmless).
        if "@" in authority or not _HOST_PORT.fullmatch(authority):
            end = _DELIMS.search(rest, first_at)
            rest = "***@" + rest[rest.rfind("@", 0, end.start() if end else len(rest)) + 1 :]
    path, sep, query = rest.partition("?")
    if sep and hide_query:
        query = "..."
    elif sep:
        parts = [p.partition("=") for p in query.split("&")]
        query = "&".join(k + "=***" if eq and _SECRET_KEY.search(k) else k + eq + v for k, eq, v in parts)
    return prefix + path + sep + query


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(url without user:password@, user, password), the two percent-decoded."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return (urllib.parse.urlunsplit(parts._replace(netloc=hostport)), urllib.parse.unquote(user),
            urllib.parse.unquote(password))


def opener_for(url: str, *handlers: urllib.request.BaseHandler) -> tuple[str, urllib.request.OpenerDirector]:
    """The URL to request (credentials removed) and an opener that authenticates with them."""
    clean, user, password = split_credentials(url)
    chain = list(handlers)
    if user is not None:
        passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        passwords.add_password(None, clean, user, password or "")
        chain += [urllib.request.HTTPDigestAuthHandler(passwords), urllib.request.HTTPBasicAuthHandler(passwords)]
    return clean, urllib.request.build_opener(*chain)
