"""The one URL redactor: a camera or station URL fit for logs and messages, without its password."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str, *, keep_username: bool = False) -> str:
    """``url`` with the userinfo's secret replaced by ``***``.

    The userinfo is everything before the *last* ``@`` of the authority (RFC 3986), so a
    password containing ``@`` or ``:`` (percent-encoded or not) never leaks. By default the whole
    userinfo goes (``rtsp://***@cam/stream``): a user name alone may be a token. With
    ``keep_username`` a ``user:password`` pair keeps the user (``rtsp://viewer:***@cam``), as
    the enrolment request shows it to the station's operator. Anything that is not a URL with
    userinfo is returned unchanged.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        _ = parts.port          # "u:p/ss@cam": an unencoded '/', '?' or '#' in the password
    except ValueError:          # cuts the authority short, or an unbalanced '[' in the host
        return _redact_conservatively(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    shown = f"{user}:***" if keep_username and colon else "***"
    return urlunsplit((parts.scheme, f"{shown}@{host}", parts.path, parts.query, parts.fragment))


def _redact_conservatively(url: str) -> str:
    """For a URL that does not parse: everything up to the last '@' may be secret."""
    scheme, _, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
