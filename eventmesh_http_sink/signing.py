"""Standard Webhooks signatures: who sent a request, and that its body is the one signed.

With ``HttpSinkConfig(signing=WebhookSigner("whsec_..."))`` every request
carries the three headers of the Standard Webhooks specification
(https://www.standardwebhooks.com):

* ``webhook-id``: the record's id (its ``Idempotency-Key``), the same on every
  retry; for a batch, the batch's ``Idempotency-Key``.
* ``webhook-timestamp``: integer seconds since the epoch, set *per attempt*, so
  a retry an hour later is not refused as stale by the receiver.
* ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256 of
  ``"{id}.{timestamp}.".encode() + body`` under each secret, space-separated.

The body signed is the exact byte string sent (after encoding and compression):
the connector calls :meth:`WebhookSigner.sign_headers` right before the
transport, once per attempt. Secrets are key material: they appear in no repr,
message, log line, dead letter or result-store entry, and a signer refuses to
be pickled (build one in each process from the secret).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any, NoReturn

from eventmesh_http_sink.errors import ConfigError

__all__ = ["SIGNATURE_HEADERS", "WebhookSigner"]

#: The headers the signer sets (lower case); a user may not set them when signing is on.
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_PREFIX = "whsec_"
#: The receiver's default tolerance in the specification's reference libraries (5 minutes).
DEFAULT_TOLERANCE = 300.0


def _key(secret: object, position: int, count: int) -> bytes:
    # The message says which secret is wrong, never what it is.
    where = "the secret" if count == 1 else f"secret {position} of {count}"
    if isinstance(secret, (bytes, bytearray, memoryview)):
        key = bytes(secret)
    elif isinstance(secret, str):
        if not secret.startswith(_PREFIX):
            raise ConfigError(
                "signing",
                f"{where} is a str without the 'whsec_' prefix: give 'whsec_<base64>' or the key as bytes",
            )
        text = secret[len(_PREFIX) :]
        try:
            # Unpadded base64 is common in the wild; the reference libraries pad it the same way.
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("signing", f"{where} is not valid base64 after 'whsec_'") from None
    else:
        raise ConfigError(
            "signing", f"{where} must be a 'whsec_<base64>' str or bytes, got {type(secret).__name__}"
        )
    if not key:
        raise ConfigError("signing", f"{where} is empty")
    return key


class WebhookSigner:
    """Signs requests per the Standard Webhooks specification.

    Several secrets may be given while a receiver rotates from one to the next:
    each request then carries one ``v1,<signature>`` per secret, space-separated,
    and the receiver accepts it if any one verifies.

    Args:
        secret: ``"whsec_<base64 key>"`` (the form the specification's tools
            print) or the raw key as ``bytes``; 24 to 64 random bytes are advised.
        *more_secrets: More secrets of the same forms, for rotation.

    Raises:
        ConfigError: naming ``signing`` (and the secret's position, never its value)
            for a secret that is empty, not valid base64, or of another type.

    Example::

        config = HttpSinkConfig("https://example.com/hook", signing=WebhookSigner(os.environ["WH_SECRET"]))
    """

    __slots__ = ("_keys", "_macs")

    def __init__(self, secret: str | bytes, *more_secrets: str | bytes) -> None:
        secrets = (secret, *more_secrets)
        self._keys = tuple(_key(s, i, len(secrets)) for i, s in enumerate(secrets, 1))
        # Keyed once: copying a keyed HMAC is ~3x cheaper than keying one per request.
        self._macs = tuple(hmac.new(key, digestmod=hashlib.sha256) for key in self._keys)

    def __repr__(self) -> str:
        return f"WebhookSigner(<{len(self._keys)} secret(s)>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WebhookSigner):
            return NotImplemented
        return len(self._keys) == len(other._keys) and all(
            hmac.compare_digest(a, b) for a, b in zip(self._keys, other._keys, strict=True)
        )

    def __hash__(self) -> int:
        return hash(len(self._keys))  # equal signers hash alike; the keys stay out of hashes

    def __reduce__(self) -> NoReturn:
        # A pickle would carry the keys into queues, result backends and caches.
        raise TypeError(f"{self!r} is not picklable: its secrets are not serialised; build one per process")

    def __copy__(self) -> WebhookSigner:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, Any]) -> WebhookSigner:
        return self

    @property
    def secret_count(self) -> int:
        """How many secrets sign each request."""
        return len(self._keys)

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>`` per secret, space-separated.

        Args:
            msg_id: The ``webhook-id``.
            timestamp: The ``webhook-timestamp`` (integer seconds).
            body: The exact bytes of the request body.
        """
        head = f"{msg_id}.{timestamp}.".encode()
        parts = []
        for keyed in self._macs:
            mac = keyed.copy()
            mac.update(head)
            mac.update(body)  # no copy of a large body into the signed string
            parts.append("v1," + base64.b64encode(mac.digest()).decode("ascii"))
        return " ".join(parts)

    def sign_headers(
        self, headers: Mapping[str, str], msg_id: str, body: bytes, now: float
    ) -> dict[str, str]:
        """``headers`` plus the three signature headers, for one attempt (a new dict).

        ``headers`` is left as it is (a record's headers are shared by its retries
        and broadcast copies). Any header of the same names (any case) is replaced.

        Args:
            headers: The attempt's final headers.
            msg_id: The record's id, or a batch's ``Idempotency-Key``.
            body: The exact bytes sent (encoded, compressed).
            now: The current time (``time.time()``), truncated to seconds.
        """
        timestamp = int(now)
        signed = {k: v for k, v in headers.items() if k.lower() not in SIGNATURE_HEADERS}
        signed["webhook-id"] = msg_id
        signed["webhook-timestamp"] = str(timestamp)
        signed["webhook-signature"] = self.signature(msg_id, timestamp, body)
        return signed

    def verify(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        now: float | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> str | None:
        """Check a received request as a Standard Webhooks receiver would.

        Args:
            body: The raw request body, as received (not decompressed).
            headers: The request headers (names in any case).
            now: The current time; ``time.time()`` when ``None``.
            tolerance: Seconds a timestamp may be off the current time.

        Returns:
            ``None`` when one ``v1`` signature matches one of the secrets, otherwise
            why not (a short reason, never a secret).
        """
        lower = {k.lower(): v for k, v in headers.items()}
        msg_id = lower.get("webhook-id")
        stamp = lower.get("webhook-timestamp")
        given = lower.get("webhook-signature")
        if not (msg_id and stamp and given):
            return "missing webhook-id, webhook-timestamp or webhook-signature"
        if not stamp.isascii() or not stamp.isdigit():
            return "webhook-timestamp is not integer seconds"
        timestamp = int(stamp)
        current = time.time() if now is None else now
        if abs(current - timestamp) > tolerance:
            return "webhook-timestamp is outside the tolerance"
        received = set()
        for item in given.split(" "):
            version, _, value = item.partition(",")
            if version == "v1":
                try:
                    received.add(base64.b64decode(value, validate=True))
                except (binascii.Error, ValueError):
                    continue
        expected = [base64.b64decode(s[3:]) for s in self.signature(msg_id, timestamp, body).split(" ")]
        for mac in expected:
            if any(hmac.compare_digest(mac, got) for got in received):
                return None
        return "no signature matches"
