"""Redis URLs without their secrets, free of redis-py: the config module masks a URL before it
writes a run's config to disk, and must stay quick to import."""
from __future__ import annotations

import re


def mask_url(url: str) -> str:
    """The URL with any password (user-info or ?password=) replaced by ***, for messages and logs."""
    url = re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if scheme.lower() == "unix":  # unix://[user:pw@]/path: user-info ends at the first '/'
        netloc, slash, path = rest.partition("/")
        rest = netloc if "@" in netloc else ""
        tail = slash + path
    else:  # the last '@' wins, so a password holding an unescaped '/' or '@' is still hidden
        tail = ""
    if not sep or "@" not in rest:
        return url
    userinfo, host = rest.rsplit("@", 1)
    user, has_password, _ = userinfo.partition(":")
    return f"{scheme}://{user + ':***' if has_password else '***'}@{host}{tail}"


def holds_password(url: str | None) -> bool:
    return isinstance(url, str) and mask_url(url) != url
