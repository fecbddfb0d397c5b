"""Camera URLs without their secrets, for logs, errors and the API.

Cameras put passwords in two places: the userinfo (``rtsp://user:pass@host/...``) and,
on some makers (XMEye and others), the path or query (``.../user=admin&password=x``).
Both are replaced by ``***``. The userinfo ends at the last ``@``, so passwords may hold
``@ : / # ?``; an ``@`` in the path of a URL without credentials can mask more than
needed, never less.
"""

from __future__ import annotations

import re

_PARAM = re.compile(r"(?i)\b(password|passwd|pwd|pass|pw)=([^&;/?#]*)")
_LOOSE_USERINFO = re.compile(r"(?<=:)[^:@/\s'\"]+(?=@)")  # user:SECRET@ in free text


def mask_url(url: str) -> str:
    """The URL with every password replaced by ``***`` (user and host kept)."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # not a URL (a typo, or text around one): mask what looks like a secret
        return _PARAM.sub(r"\1=***", _LOOSE_USERINFO.sub("***", url))
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:
        user = rest[:at].split(":", 1)[0]
        rest = f"{user}:***@{rest[at + 1:]}"
    return scheme + "://" + _PARAM.sub(r"\1=***", rest)


def url_secrets(url: str) -> list[str]:
    """The secret strings in a URL, to scrub from any text (e.g. FFmpeg errors). Secrets
    under 4 characters are left out: replacing them would garble the text."""
    out = []
    rest = url.partition("://")[2]
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:
        out.append(rest[:at].split(":", 1)[1])
    out += [m.group(2) for m in _PARAM.finditer(url) if m.group(2)]
    return [s for s in out if len(s) >= 4]
