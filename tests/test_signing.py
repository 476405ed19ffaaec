"""Standard Webhooks signatures (issue 15), checked by a verifier nobody here wrote.

Every request a real loopback receiver records is verified with the
``standardwebhooks`` package's own ``Webhook(secret).verify(body, headers)``.
That function decodes the body as UTF-8, so a gzip body cannot go through it:
compressed requests are checked with the package's own key decoding
(``Webhook(secret)``) and HMAC helper (``standardwebhooks.webhooks.hmac_data``)
over the raw bytes received, which is what ``verify`` computes.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import logging
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError, hmac_data

import eventmesh_http_sink
from eventmesh_http_sink import (
    BatchConfig,
    ConfigError,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    ResultStoreConfig,
    RetryConfig,
    WebhookSigner,
)
from eventmesh_http_sink.testing import FaultServer, Reply, RequestLog

from .cli_helpers import COMMAND, cli_env, records, run_cli, summary_of, write_jsonl
from .wire_servers import ScriptServer

KEY = b"\x01signing-key-of-32-bytes-\xfe\xff\x00abcd"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OTHER = "whsec_" + base64.b64encode(b"another key, 24 bytes!!!").decode()
FAST = RetryConfig(max_retries=2, initial_backoff=0.01, max_backoff=0.02)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


def _verify(secret: str | bytes, request: RequestLog) -> None:
    """The reference verifier; raises WebhookVerificationError when the request does not verify."""
    Webhook(secret).verify(request.body, dict(request.headers), json_parse=False)


def _verify_bytes(secret: str, request: RequestLog) -> bool:
    """What ``Webhook.verify`` computes, over raw (compressed) bytes it cannot decode as UTF-8."""
    headers = request.headers
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert abs(time.time() - int(stamp)) < 300
    key = Webhook(secret)._whsecret  # the package's own decoding of the whsec_ form
    expected = hmac_data(key, f"{msg_id}.{stamp}.".encode() + request.body)
    given = [base64.b64decode(s.split(",", 1)[1]) for s in headers["webhook-signature"].split(" ")]
    return expected in given


def _send(config: HttpSinkConfig, records: list[ConnectRecord]) -> None:
    with HttpSinkConnector(config) as sink:
        for future in [sink.put(r) for r in records]:
            future.result(timeout=20)


# -- every request verifies ----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "raw", "cloudevents-binary", "cloudevents-structured"])
def test_every_record_request_verifies_and_carries_the_record_id(server: FaultServer, encoding: str) -> None:
    extra = {"ce_source": "s", "ce_type": "t"} if encoding.startswith("cloudevents") else {}
    config = HttpSinkConfig(server.url, signing=WebhookSigner(SECRET), encoding=encoding, **extra)  # type: ignore[arg-type]
    records = [ConnectRecord({"n": i, "text": "zoë ☃"}, record_id=f"rec-{i}") for i in range(5)]
    _send(config, records)
    assert len(server.requests) == 5
    for request in server.requests:
        _verify(SECRET, request)
        assert request.headers["webhook-id"] == request.headers["idempotency-key"]
        assert abs(time.time() - int(request.headers["webhook-timestamp"])) < 60
    assert {r.headers["webhook-id"] for r in server.requests} == {f"rec-{i}" for i in range(5)}


def test_a_retry_keeps_the_id_and_gets_a_new_timestamp() -> None:
    # The first attempt is answered 503 Retry-After: 1, so the retry goes out at least a
    # second later: a timestamp fixed at put() (or at the first attempt) would repeat.
    seen: list[tuple[float, RequestLog]] = []
    lock = threading.Lock()

    def responder(request: RequestLog) -> Reply:
        with lock:
            seen.append((time.time(), request))
            first = len(seen) == 1
        return Reply(503, headers={"Retry-After": "1"}) if first else Reply(200)

    with FaultServer(responder=responder) as server:
        config = HttpSinkConfig(server.url, signing=WebhookSigner(SECRET), retry=FAST)
        _send(config, [ConnectRecord({"a": 1}, record_id="again")])
    assert len(seen) == 2
    for received_at, request in seen:
        _verify(SECRET, request)
        assert request.headers["webhook-id"] == "again"
        assert int(received_at) - 1 <= int(request.headers["webhook-timestamp"]) <= int(received_at)
    first, second = (int(r.headers["webhook-timestamp"]) for _, r in seen)
    assert second > first
    assert seen[0][1].headers["webhook-signature"] != seen[1][1].headers["webhook-signature"]


def test_batches_are_signed_with_the_batch_id(server: FaultServer) -> None:
    config = HttpSinkConfig(
        server.url, signing=WebhookSigner(SECRET), batch=BatchConfig(max_records=4, linger=0.05)
    )
    _send(config, [ConnectRecord({"n": i}, record_id=f"b{i}") for i in range(8)])
    assert len(server.requests) >= 2  # 2 unless the linger timer cut a batch short
    for request in server.requests:
        _verify(SECRET, request)
        assert request.headers["webhook-id"] == request.headers["idempotency-key"]
        assert request.headers["webhook-id"].startswith("batch-")


@pytest.mark.parametrize("batch", [None, BatchConfig(max_records=3, linger=0.05)])
def test_compressed_bodies_are_signed_as_sent(server: FaultServer, batch: BatchConfig | None) -> None:
    config = HttpSinkConfig(
        server.url, signing=WebhookSigner(SECRET), compression="gzip", compress_min_bytes=0, batch=batch
    )
    _send(config, [ConnectRecord({"n": i, "pad": "x" * 200}, record_id=f"gz{i}") for i in range(3)])
    assert server.requests
    for request in server.requests:
        assert request.headers["content-encoding"] == "gzip" and request.body[:2] == b"\x1f\x8b"
        assert _verify_bytes(SECRET, request)
        # Signed over the compressed bytes: the decompressed body does not verify.
        unzipped = gzip.decompress(request.body)
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(unzipped, dict(request.headers), json_parse=False)


def test_broadcast_copies_each_verify(server: FaultServer) -> None:
    with FaultServer() as second:
        config = HttpSinkConfig(
            [server.url, second.url], delivery_strategy="broadcast", signing=WebhookSigner(SECRET)
        )
        _send(config, [ConnectRecord({"a": 1}, record_id="both")])
        for request in [*server.requests, *second.requests]:
            _verify(SECRET, request)
            assert request.headers["webhook-id"] == "both"
        assert len(server.requests) == len(second.requests) == 1


def test_rotation_each_secret_verifies_alone(server: FaultServer) -> None:
    config = HttpSinkConfig(server.url, signing=WebhookSigner(SECRET, OTHER, KEY))
    _send(config, [ConnectRecord({"a": 1}, record_id="rot")])
    request = server.requests[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 3
    _verify(SECRET, request)
    _verify(OTHER, request)
    _verify(KEY, request)  # the raw-bytes form of the first secret
    with pytest.raises(WebhookVerificationError):
        _verify("whsec_" + base64.b64encode(b"a third key nobody gave").decode(), request)


# -- what must not verify ------------------------------------------------------------------------


def test_tampered_body_wrong_secret_and_stale_timestamp_do_not_verify(server: FaultServer) -> None:
    config = HttpSinkConfig(server.url, signing=WebhookSigner(SECRET))
    _send(config, [ConnectRecord({"amount": 10}, record_id="pay-1")])
    request = server.requests[0]
    headers = dict(request.headers)
    _verify(SECRET, request)  # the control: as received, it verifies
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(request.body.replace(b"10", b"99"), headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(OTHER).verify(request.body, headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(request.body, {**headers, "webhook-id": "pay-2"})
    # A request signed ten minutes ago (a replayed capture) is refused by its timestamp.
    stale = WebhookSigner(SECRET).sign_headers({}, "pay-1", request.body, time.time() - 600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(request.body, stale)
    fresh = WebhookSigner(SECRET).sign_headers({}, "pay-1", request.body, time.time())
    Webhook(SECRET).verify(request.body, fresh)


def test_own_verify_agrees_with_the_reference_signer() -> None:
    signer = WebhookSigner(SECRET)
    body = json.dumps({"x": "ü"}).encode()
    now = time.time()
    from datetime import datetime

    reference = Webhook(SECRET).sign("m1", datetime.fromtimestamp(now, tz=UTC), body.decode())
    headers = {"Webhook-Id": "m1", "Webhook-Timestamp": str(int(now)), "Webhook-Signature": reference}
    assert signer.signature("m1", int(now), body) == reference
    assert signer.verify(body, headers) is None
    assert signer.verify(body + b" ", headers) == "no signature matches"
    assert WebhookSigner(OTHER).verify(body, headers) == "no signature matches"
    assert signer.verify(body, headers, now=now + 400) == "webhook-timestamp is outside the tolerance"
    assert signer.verify(body, {}) is not None
    assert signer.verify(body, {**headers, "webhook-timestamp": "1e9"}) is not None


def test_header_fn_cannot_smuggle_a_second_signature_header() -> None:
    # A raw server keeps every header line: a second spelling of a name would show here.
    with ScriptServer() as raw:
        config = HttpSinkConfig(
            raw.url,
            signing=WebhookSigner(SECRET),
            header_fn=lambda r: {"Webhook-Signature": "v1,Zm9yZ2Vk", "Webhook-Id": "forged"},
        )
        _send(config, [ConnectRecord({"a": 1}, record_id="real")])
        [request] = raw.requests
    assert request.header("webhook-id") == [b"real"]
    assert len(request.header("webhook-signature")) == len(request.header("webhook-timestamp")) == 1
    headers = {n.decode(): v.decode() for n, v in request.headers}
    Webhook(SECRET).verify(request.body, headers, json_parse=False)
    assert "Zm9yZ2Vk" not in headers["webhook-signature"]


def test_without_signing_nothing_is_added(server: FaultServer) -> None:
    _send(HttpSinkConfig(server.url), [ConnectRecord({"a": 1})])
    assert not [h for h in server.requests[0].headers if h.startswith("webhook-")]


# -- secrets: accepted forms, refused forms, never shown -----------------------------------------


def test_the_whsec_form_and_raw_bytes_are_the_same_key() -> None:
    unpadded = SECRET.rstrip("=")
    sigs = {WebhookSigner(s).signature("i", 1, b"b") for s in (SECRET, unpadded, KEY, bytearray(KEY))}
    assert len(sigs) == 1
    assert WebhookSigner(SECRET) == WebhookSigner(KEY) != WebhookSigner(OTHER)
    assert "WebhookSigner" in eventmesh_http_sink.__all__


@pytest.mark.parametrize(
    ("secrets", "match"),
    [
        (("whsec_",), "the secret is empty"),
        ((b"",), "the secret is empty"),
        (("whsec_not*base64!",), "the secret is not valid base64 after 'whsec_'"),
        (("plain-text-secret-value",), "without the 'whsec_' prefix"),
        ((SECRET, 12345), "secret 2 of 2 must be a 'whsec_<base64>' str or bytes, got int"),
    ],
)
def test_bad_secrets_are_refused_naming_signing_not_the_secret(
    secrets: tuple[object, ...], match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        WebhookSigner(*secrets)  # type: ignore[arg-type]
    assert info.value.field == "signing"
    for secret in secrets:
        if isinstance(secret, str) and len(secret) > 6:
            assert secret[6:] not in str(info.value) and secret not in repr(info.value)


def test_config_refuses_a_bare_secret_and_the_signature_headers() -> None:
    with pytest.raises(ConfigError, match="signing: must be a WebhookSigner") as info:
        HttpSinkConfig("http://h/", signing=SECRET)  # type: ignore[arg-type]
    assert SECRET not in str(info.value) and SECRET[6:] not in str(info.value)
    for name in ("webhook-id", "Webhook-Timestamp", "WEBHOOK-SIGNATURE"):
        with pytest.raises(ConfigError, match=f"headers: has '{name}', which signing sets"):
            HttpSinkConfig("http://h/", headers={name: "x"}, signing=WebhookSigner(SECRET))
    HttpSinkConfig("http://h/", headers={"webhook-id": "mine"})  # without signing they are the user's


def test_no_repr_pickle_or_copy_shows_the_secret() -> None:
    signer = WebhookSigner(SECRET, OTHER)
    config = HttpSinkConfig("http://h/", signing=signer)
    shown = [repr(signer), str(signer), repr(config)]
    with pytest.raises(TypeError) as info:
        pickle.dumps(signer)
    shown.append(str(info.value))
    assert "WebhookSigner(<2 secret(s)>)" in repr(config)
    assert copy.deepcopy(signer) is signer and copy.copy(signer) is signer
    for text in shown:
        for secret in (SECRET, OTHER):
            assert secret not in text and secret[6:16] not in text
        assert repr(KEY) not in text and KEY.hex() not in text


def test_a_signing_secret_never_leaves_through_any_output(tmp_path: Path) -> None:
    # Secrets grep for signing: failures and retries at DEBUG, dead letters, result store.
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.DEBUG)
    logger = logging.getLogger("eventmesh_http_sink")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    dead = tmp_path / "dead.jsonl"
    texts: list[str] = []
    try:
        with FaultServer() as server:
            server.plan("s-fail", Reply(400, body=b"no"))
            server.plan("s-retry", Reply(503), Reply(200))
            config = HttpSinkConfig(
                server.url,
                signing=WebhookSigner(SECRET, KEY),
                retry=FAST,
                dead_letter=str(dead),
                result_store=ResultStoreConfig(),
            )
            texts.append(repr(config))
            with HttpSinkConnector(config) as sink:
                texts.append(repr(sink))
                futures = [
                    sink.put(ConnectRecord({"a": 1}, record_id=k)) for k in ("s-ok", "s-fail", "s-retry")
                ]
                for future in futures:
                    error = future.exception(timeout=10)
                    if error is not None:
                        texts += [str(error), repr(error)]
                    else:
                        texts.append(repr(future.result()))
                assert sink.flush(10)
                texts.append(json.dumps(sink.export(1, 100)))
                texts.append(repr(sink.stats()))
            for request in server.requests:
                _verify(SECRET, request)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    formatter = logging.Formatter("%(levelname)s %(module)s %(message)s")
    texts += [formatter.format(r) for r in records]
    texts.append(dead.read_text(encoding="utf-8"))
    assert any(r.levelno == logging.DEBUG for r in records) and "s-fail" in texts[-1]
    everything = "\n".join(texts)
    for needle in (
        SECRET,
        SECRET[6:],
        SECRET[6:30],
        base64.b64encode(KEY).decode(),
        KEY.hex(),
        repr(KEY)[2:-1],
    ):
        assert needle not in everything


# -- the command line ----------------------------------------------------------------------------


def _start_receive(*args: str, **env: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*COMMAND, "receive", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(**env),
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("listening on http://127.0.0.1:"), first
    return proc, first.split()[2]


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    return out, err


def test_cli_send_and_replay_sign_with_the_secret_from_the_environment(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(4, "c"))
    dead = tmp_path / "dead.jsonl"
    with FaultServer() as server:
        server.plan("c1", Reply(400))
        proc = run_cli(
            "send", server.url, str(src), "--json", "--dead-letter", str(dead), "--retries", "0",
            "--signing-secret-env", "WH_SECRET", "-vv", cwd=tmp_path, WH_SECRET=f"{SECRET} {OTHER}",
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert summary_of(proc.stdout)["delivered"] == 3
        # The suggested resend command names the variable, never its value.
        assert "--signing-secret-env WH_SECRET" in summary_of(proc.stdout)["resend_command"]
        proc = run_cli(
            "replay", str(dead), server.url, "--json", "--no-dead-letter",
            "--signing-secret-env", "WH_SECRET", cwd=tmp_path, WH_SECRET=SECRET,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert summary_of(proc.stdout)["delivered"] == 1
        assert [r.key for r in server.requests].count("c1") == 2
        for request in server.requests:
            _verify(SECRET, request)
        for request in server.requests[:4]:
            _verify(OTHER, request)  # the send had both secrets, the replay only the first
    for text in (proc.stdout, proc.stderr, dead.read_text()):
        assert SECRET[6:] not in text and OTHER[6:] not in text


@pytest.mark.parametrize("command", ["send", "replay"])
def test_cli_signing_secret_env_unset_or_malformed_is_a_usage_error(tmp_path: Path, command: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(1))
    args = (
        ("send", "http://127.0.0.1:9/", str(src))
        if command == "send"
        else ("replay", str(src), "http://127.0.0.1:9/")
    )
    proc = run_cli(*args, "--signing-secret-env", "NO_SUCH_VAR_X", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--signing-secret-env: environment variable NO_SUCH_VAR_X is not set" in proc.stderr
    bad = "not-a-whsec-secret-1234"
    proc = run_cli(*args, "--signing-secret-env", "WH", cwd=tmp_path, WH=bad)
    assert proc.returncode == 2
    assert "--signing-secret-env: $WH: the secret is a str without the 'whsec_' prefix" in proc.stderr
    assert bad not in proc.stderr + proc.stdout


def test_cli_receive_verifies_counts_and_answers_401(tmp_path: Path) -> None:
    out = tmp_path / "got.jsonl"
    receiver, url = _start_receive("--verify-secret-env", "WH", "--out", str(out), WH=SECRET)
    try:
        good = write_jsonl(tmp_path / "good.jsonl", records(3, "g"))
        proc = run_cli(
            "send", url, str(good), "--json", "--signing-secret-env", "WH", cwd=tmp_path, WH=SECRET
        )
        assert proc.returncode == 0, proc.stderr
        bad = write_jsonl(tmp_path / "bad.jsonl", records(2, "w"))
        proc = run_cli(
            "send", url, str(bad), "--json", "--no-dead-letter", "--signing-secret-env", "WH",
            cwd=tmp_path, WH=OTHER,
        )  # fmt: skip
        assert proc.returncode == 1 and summary_of(proc.stdout)["failures_by_kind"] == {"http_401": 2}
        unsigned = run_cli("send", url, str(good), "--json", "--no-dead-letter", cwd=tmp_path)
        assert summary_of(unsigned.stdout)["failed"] == 3
        # A request signed by the reference implementation verifies too.
        body = b'{"ref": 1}'
        from datetime import datetime

        now = datetime.now(tz=UTC)
        headers = {
            "webhook-id": "ref-1",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(SECRET).sign("ref-1", now, body.decode()),
        }
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            assert response.status == 200
        tampered = urllib.request.Request(url, data=b'{"ref": 2}', headers=headers, method="POST")  # noqa: S310
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(tampered, timeout=10)  # noqa: S310
        assert info.value.code == 401 and b"no signature matches" in info.value.read()
    finally:
        _, err = _stop(receiver)
    assert "received 10 request(s); signatures: 4 verified, 6 failed (answered 401)" in err
    stored = [json.loads(line) for line in out.read_text().splitlines()]
    verdicts = {
        (e["key"] or e["headers"]["webhook-id"]): e["signature"] for e in stored if e["answered"] != 401
    }
    assert verdicts == {"g0": "verified", "g1": "verified", "g2": "verified", "ref-1": "verified"}
    assert {e["signature"] for e in stored if e["answered"] == 401} >= {"no signature matches"}
    assert SECRET[6:] not in err + out.read_text()


def test_cli_receive_prints_the_verdict_and_refuses_an_unset_variable(tmp_path: Path) -> None:
    proc = run_cli("receive", "--port", "0", "--verify-secret-env", "NOPE_UNSET", cwd=tmp_path)
    assert (
        proc.returncode == 2
        and "--verify-secret-env: environment variable NOPE_UNSET is not set" in proc.stderr
    )
    receiver, url = _start_receive("--verify-secret-env", "WH", WH=SECRET)
    try:
        run_cli("send", url, "-", "--signing-secret-env", "WH", stdin='{"record_id": "p1", "data": 1}\n',
                cwd=tmp_path, WH=SECRET)  # fmt: skip
        assert receiver.stdout is not None
        line = receiver.stdout.readline()
    finally:
        _stop(receiver)
    assert line.strip() == "POST / key=p1 1 bytes -> 200 signature verified"


def test_the_readme_example_runs_and_its_request_verifies() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    [code] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "WebhookSigner(os.environ" in b]
    with FaultServer() as server:
        code = code.replace("https://hooks.example.com/orders", server.url + "orders")
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
            env=cli_env(WEBHOOK_SECRET=SECRET),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        [request] = server.requests
    _verify(SECRET, request)
    assert request.headers["webhook-id"] == "order-1" and request.path == "/orders"
