"""Camera URLs lose their passwords before they reach logs, errors or the API."""

from __future__ import annotations

import pytest

from hub.urls import mask_url, url_secrets


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("rtsp://10.0.0.5:554/Streaming/Channels/101", "rtsp://10.0.0.5:554/Streaming/Channels/101"),
        ("rtsp://admin:S3cret@10.0.0.5/s", "rtsp://admin:***@10.0.0.5/s"),
        ("rtsp://admin:pa#ss@h/x", "rtsp://admin:***@h/x"),
        ("rtsp://admin:pa?ss@h/x", "rtsp://admin:***@h/x"),
        ("rtsp://admin:p@ss/word@cam/s", "rtsp://admin:***@cam/s"),
        ("rtsp://admin@h/x", "rtsp://admin@h/x"),
        ("rtsp://ip:554/user=admin&password=S3cret&channel=1&stream=0.sdp",
         "rtsp://ip:554/user=admin&password=***&channel=1&stream=0.sdp"),
        ("rtsp://u:secret1@h:554/a?PWD=zzzz&x=1", "rtsp://u:***@h:554/a?PWD=***&x=1"),
        ("not a url password=hunter2", "not a url password=***"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    """Userinfo and password parameters are masked; everything else is kept."""
    assert mask_url(url) == masked
    for secret in url_secrets(url):
        assert secret not in mask_url(url)


def test_short_secrets_are_not_scrubbed_from_text() -> None:
    """A one-letter password is masked in the URL but not hunted for in free text."""
    assert url_secrets("rtsp://u:p@h/x") == []
    assert url_secrets("rtsp://u:longer@h/x?pwd=abcd") == ["longer", "abcd"]
