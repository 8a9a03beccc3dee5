"""Standard Webhooks signatures, checked by the verifier the README gives
receivers (its text is run here as written): a genuine delivery passes; the
same request again, an old one, or an altered one is rejected."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.notify.delivery import deliver_due
from qrfarm.notify.signing import headers_for, new_secret, verify

from .fakes import FakeNetwork
from .receivers import Recorder
from .test_delivery import POLICY, SECRET, enqueue, sessions  # noqa: F401

README = Path(__file__).parents[2] / "README.md"


def readme_verifier() -> dict[str, Any]:
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    (snippet,) = [b for b in blocks if "def verify_webhook" in b]
    namespace: dict[str, Any] = {}
    # The README's own text, run as a receiver would paste it.
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102
    return namespace


def test_the_readme_verifier_rejects_a_replay(
    sessions: sessionmaker[Session],  # noqa: F811
    fake_network: FakeNetwork,
) -> None:
    receiver = Recorder().start()
    try:
        enqueue(sessions, receiver.url())
        assert deliver_due(sessions, POLICY).delivered
    finally:
        receiver.stop()
    (received,) = receiver.received
    verifier = readme_verifier()
    verify_webhook, rejected = verifier["verify_webhook"], verifier["Rejected"]

    assert verify_webhook(SECRET, received.headers, received.body) == {"job": {"id": 1}}
    with pytest.raises(rejected, match="replay"):
        verify_webhook(SECRET, received.headers, received.body)

    # Another receiver process, whose memory of signatures is empty.
    timestamp = int(received.headers["webhook-timestamp"])
    fresh = readme_verifier()
    verify_webhook, rejected = fresh["verify_webhook"], fresh["Rejected"]
    with pytest.raises(rejected, match="timestamp"):
        verify_webhook(SECRET, received.headers, received.body, now=timestamp + 301)
    with pytest.raises(rejected, match="signature"):
        verify_webhook(SECRET, received.headers, received.body.replace(b"1", b"2"))
    with pytest.raises(rejected, match="signature"):
        verify_webhook(new_secret(), received.headers, received.body)
    assert verify_webhook(SECRET, received.headers, received.body) == {"job": {"id": 1}}


def test_signatures_follow_the_standard_webhooks_example() -> None:
    """The specification's own example: this id, timestamp, body and secret
    give this signature."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    headers = headers_for(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert verify(secret, headers, body, now=1614265330)
    assert not verify(secret, headers, body, now=1614265330 + 301)
    assert not verify(secret, headers, body + b" ", now=1614265330)
