"""HTTP(S) URLs that may carry `user:password@`: urllib can't use them as they are.

urllib takes the credentials for part of the host (and quotes them in its errors), so the URL is
fetched without them and the server's auth challenge is answered with them instead, Digest first
(many IP cameras accept only Digest; it hands Basic challenges on). The credentials are bound to
that URL, so a redirect to another host does not get them.
"""

from __future__ import annotations

import urllib.parse
import urllib.request


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
