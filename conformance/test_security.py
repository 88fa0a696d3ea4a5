"""security: the client's key never reaches the upstream, the channel key never reaches the
client, keys in URLs are not accepted, no public endpoint shows a key. No profile can waive
these. A bring-your-own-key relay (``[auth] client_key_is_provider_key``, cited from its docs)
issues no keys: the key its client sends is the provider's, so forwarding it is a deviation
once the case has seen that design at work, and a key in the URL is judged by whether it
travels upstream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import shlex
import threading
from collections.abc import Callable, Mapping

import httpx
import pytest

from relaygate.bounded import tls_context
from relaygate.directives import directive
from relaygate.keys import mask_key
from relaygate.suite.checks import check_not_forwarded, is_chat_completion
from relaygate.suite.client import Exchange, chat_body, header_pairs
from relaygate.suite.failures import deviation, fail, require
from relaygate.suite.live import live_body, skip_outside_view

#: Where popular relays serve request logs, metrics or admin views on their API port. The case
#: reads each without credentials while, and just after, the funded key is used.
PUBLIC_READER_PATHS: tuple[str, ...] = (
    # Portkey AI Gateway (Node build) with its published defaults (no --headless): an SSE feed
    # of every /v1 request, the caller's provider key included (docs/relays/portkey.md F-1).
    "/log/stream",
    # LiteLLM proxy: Prometheus metrics, served without auth unless
    # require_auth_for_metrics_endpoint is set; its labels name keys (hashed_api_key, alias).
    "/metrics",
    # LiteLLM proxy: per-request spend logs; every route is open when no master_key is set.
    "/spend/logs",
    # one-api / new-api: the site-wide request log (AdminAuth there).
    "/api/log/",
)
#: Seconds the readers get to connect before the request, and to read after it (≤ 2 s in all).
READER_CONNECT_S = 0.5
READER_LISTEN_S = 1.5
#: The plain GETs after the request wait this long: relays write their logs after answering.
READER_AFTER_DELAY_S = 0.25
#: Bytes read from one answer at most.
READER_MAX_BYTES = 256 * 1024


@pytest.mark.case(
    "security.client-key-not-forwarded",
    title="The client's key never reaches the upstream",
    area="security",
    spec="relay design; RELAY_SPEC §10.28",
)
def test_client_key_not_forwarded(client, _journal, funded_key, tag, relay, baseline, profile):
    if _journal is None:
        skip_outside_view("the credentials the upstream received with the request (the "
                          "client's key must not be among them)")  # fmt: skip
    upstream = _journal
    baseline.require_forwarding_seen()
    ex = client.chat(chat_body(directive=directive(tag=tag)))
    require(
        is_chat_completion(ex),
        "the request is served",
        "HTTP 200 with a chat completion",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
    entries = upstream.wait_entries(tag)
    # "Not in what the upstream received" needs something the upstream received.
    require(
        bool(entries),
        "the served request reached the mock upstream (so what it received can be checked)",
        "the request in the mock upstream's journal",
        "no journal entry: is --upstream-url the relay's upstream?",
        ex.curl,
        relay.secrets,
    )
    forwarded = [entry for entry in entries if funded_key in _received(entry)]
    if forwarded and profile.auth.client_key_is_provider_key:
        _byok_deviation(forwarded, funded_key, ex, relay, profile)
    require(
        not forwarded,
        "the relay authenticates upstream with its channel key, never the client's key",
        "the client's key absent from what the upstream received",
        f"the upstream received the client's key {mask_key(funded_key)}",
        ex.curl,
        relay.secrets,
    )


def _received(entry: Mapping[str, object]) -> str:
    """Everything of one journal entry a key could travel in: headers, body, query string."""
    return repr(entry.get("headers")) + repr(entry.get("body")) + repr(entry.get("query"))


def _byok_deviation(forwarded, funded_key, ex, relay, profile):
    """A bring-your-own-key relay (its profile says so, with the relay's documentation): the
    client's key *is* the provider key, so the rule that protects a relay key has no relay key
    to protect. Reported as a deviation, never a pass, once it is established that the relay
    really works that way: the upstream was authenticated with exactly the client's key."""
    __tracebackhide__ = True
    sent = {
        value.partition(" ")[2] or value
        for entry in forwarded
        for name, value in header_pairs(entry)
        if name.lower() == "authorization"
    }
    require(
        sent == {funded_key},
        "a bring-your-own-key relay authenticates upstream with the client's key and no other",
        "Authorization: Bearer <the client's key> on every upstream request",
        f"upstream Authorization {sorted(mask_key(s) for s in sent) or 'absent'}; the client's "
        f"key {mask_key(funded_key)} elsewhere in what the upstream received",
        ex.curl,
        relay.secrets,
    )
    reason = profile.deviation("auth.client_key_is_provider_key") or "bring your own key"
    deviation(f"the client's key is the provider's key: {reason}")


@pytest.mark.case(
    "security.channel-key-not-leaked",
    title="The channel key never appears in any answer",
    area="security",
    spec="relay design",
)
def test_channel_key_not_leaked(client, _journal, funded_key, tag, relay, baseline):
    if _journal is None:
        _live_channel_key_not_leaked(client, funded_key, relay)
        return
    upstream = _journal
    baseline.require_forwarding_seen()
    ex = client.chat(chat_body(directive=directive(tag=tag)))
    entries = upstream.wait_entries(tag)
    require(
        is_chat_completion(ex) and bool(entries),
        "the request is served through the mock upstream (where the channel key is seen)",
        "HTTP 200 with a chat completion, and the request in the journal",
        f"{ex.describe()}; {len(entries)} journal entries",
        ex.curl,
        relay.secrets,
    )
    auth = next(
        (v for e in entries for k, v in header_pairs(e) if k.lower() == "authorization"), ""
    )
    channel_key = auth.partition(" ")[2] or auth
    if not channel_key:
        pytest.skip("the relay sent no Authorization upstream: no channel key to look for")
    answers = [ex]
    for i, fields in enumerate(
        [
            {"error": 401, "error_code": "invalid_api_key"},
            {"error": 500},
            {"error": 400},
            {"error": 429},
        ]
    ):
        answers.append(client.chat(chat_body(directive=directive(tag=f"{tag}.{i}", **fields))))
    answers.append(
        client.stream(chat_body(directive=directive(tag=f"{tag}.s", stream_error_after=1)))
    )
    for answer in answers:
        dump = answer.body.decode("utf-8", "replace") + repr(dict(answer.headers))
        require(
            channel_key not in dump,
            "no answer ever shows the relay's upstream (channel) key",
            "the channel key absent",
            f"the channel key {mask_key(channel_key)} appears in {answer.describe()}",
            answer.curl,
            (*relay.secrets, channel_key),
        )


#: Something shaped like a credential: a provider key (sk-…, sk-proj-…, rk-…, key-…) or a
#: bearer token. Provider error messages mask keys with '*' ("sk-proj-****abcd"): no match.
KEY_SHAPED = re.compile(rb"\b(?:sk|rk|pk|key)-[A-Za-z0-9_-]{16,}|\bBearer\s+[A-Za-z0-9._~+/-]{16,}")

#: Requests the upstream (not the relay) is likely to refuse: its error message is where a
#: relay that leaks its channel key shows it.
LIVE_UPSTREAM_REFUSALS: tuple[dict[str, object], ...] = (
    {"max_tokens": 10_000_000},
    {"temperature": 5},
    {"messages": []},
    {"model": "relaygate-no-such-model"},
)


def _live_channel_key_not_leaked(client, funded_key, relay):
    """Live: the channel key is unknown, so look for any credential in the answers (served,
    streamed and refused) that is not one the client itself sent."""
    __tracebackhide__ = True
    body = live_body("Say hello.", max_tokens=16)
    served = client.chat(body)
    require(
        is_chat_completion(served),
        "the request is served (the relay does use its channel key)",
        "HTTP 200 with a chat completion",
        served.describe(),
        served.curl,
        relay.secrets,
    )
    answers = [served, client.stream(body)]
    answers += [client.chat({**body, **fields}) for fields in LIVE_UPSTREAM_REFUSALS]
    refused = [a for a in answers if a.status >= 400]
    require(
        bool(refused),
        "requests the upstream refuses are refused (their error messages are checked too)",
        "at least one 4xx/5xx among " + ", ".join(map(str, LIVE_UPSTREAM_REFUSALS)),
        f"statuses {[a.status for a in answers]}",
        answers[-1].curl,
        relay.secrets,
    )
    own = {s.encode() for s in relay.secrets if s}
    for answer in answers:
        dump = answer.body + repr(dict(answer.headers)).encode()
        found = [m.group(0) for m in KEY_SHAPED.finditer(dump)]
        foreign = [k for k in found if not any(o in k for o in own)]
        require(
            not foreign,
            "no answer ever shows a credential the client did not send (the relay's upstream "
            "key above all)",
            "no key-shaped string but the client's own",
            f"{mask_key(foreign[0].decode('utf-8', 'replace'))} in {answer.describe()}"
            if foreign
            else "",
            answer.curl,
            (*relay.secrets, *(k.decode("utf-8", "replace") for k in foreign)),
        )


@pytest.mark.case(
    "security.query-key-rejected",
    title="A key in the query string is not accepted",
    area="security",
    spec="relay design",
)
def test_query_key_rejected(client, funded_key, tag, relay, profile, _journal, baseline):
    # The refusal must be about where the key travels: in the header it is served.
    baseline.require_served()
    ex = client.request(
        "POST",
        f"/v1/chat/completions?key={funded_key}&api_key={funded_key}",
        json=chat_body(directive=directive(tag=tag)),
        key=None,
    )
    # Without an Authorization header this is a request without a key: refused with the status
    # the profile documents for that (401 unless the relay's docs say 403).
    missing = profile.expect("missing_key")
    status = missing.status if missing.applicable and missing.status in (401, 403) else 401
    require(
        ex.status == status,
        "keys travel in the Authorization header only: a key in the URL (logged by every proxy) "
        "is refused",
        f"HTTP {status}",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
    if _journal is None:
        return
    if not profile.auth.client_key_is_provider_key:
        # The relay's own keys decide: a request that reached the upstream went there on the
        # relay's channel key, whatever the answer says.
        check_not_forwarded(
            _journal,
            tag,
            "a request with its key in the URL is not sent upstream",
            ex.curl,
            baseline=baseline,
        )
        return
    # Bring your own key: the only credential the upstream sees is the one the client's
    # request carries. The key in the URL must not travel, in the query string or moved into a
    # header or the body; a request forwarded without it is refused by the provider (above).
    baseline.require_forwarding_seen()
    entries = _journal.wait_entries(tag, count=1, timeout_s=0.05)
    leaked = [entry for entry in entries if funded_key in _received(entry)]
    require(
        not leaked,
        "a key in the URL never travels upstream (with bring your own key the provider would "
        "accept it)",
        "the key absent from what the upstream received",
        f"{len(leaked)} upstream request(s) carried the key {mask_key(funded_key)}",
        ex.curl,
        relay.secrets,
    )


@dataclasses.dataclass
class _Reading:
    """What one unauthenticated GET answered, as far as it was read."""

    path: str
    when: str
    status: int | None = None
    content_type: str = ""
    head: bytes = b""
    body: bytearray = dataclasses.field(default_factory=bytearray)

    def describe(self) -> str:
        answer = f"HTTP {self.status} {self.content_type or '-'}" if self.status else "no answer"
        return f"GET {self.path} ({self.when}: {answer})"


async def _read(http: httpx.AsyncClient, reading: _Reading, connected: asyncio.Event) -> None:
    try:
        async with http.stream("GET", reading.path) as response:
            reading.status = response.status_code
            reading.content_type = response.headers.get("content-type", "")
            reading.head = "".join(
                f"{name}: {value}\n" for name, value in response.headers.multi_items()
            ).encode()
            connected.set()
            async for chunk in response.aiter_bytes():
                reading.body += chunk[: READER_MAX_BYTES - len(reading.body)]
                if len(reading.body) >= READER_MAX_BYTES:
                    break
    except httpx.HTTPError:
        pass  # a path that cannot be read shows nothing
    finally:
        connected.set()


def _in_daemon_thread(send: Callable[[], Exchange]) -> asyncio.Future[Exchange]:
    """``send()`` in a daemon thread: an answer that never ends can neither hold the event
    loop's shutdown (as ``asyncio.to_thread``'s executor would) nor the process's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Exchange] = loop.create_future()

    def settle(outcome: Exchange | BaseException) -> None:
        if future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def run() -> None:
        try:
            outcome: Exchange | BaseException = send()
        except BaseException as exc:  # handed to the awaiting case
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="relaygate-public-endpoints-send", daemon=True).start()
    return future


async def _read_around(
    base_url: str, headers: Mapping[str, str], timeout_s: float, send: Callable[[], Exchange]
) -> tuple[Exchange, list[_Reading]]:
    """Open a reader on every public path, ``send`` the request, then read for a bounded time:
    the open readers go on, and a plain GET of every path follows. Nothing outlives the window.
    """
    timeout = httpx.Timeout(timeout_s + READER_LISTEN_S, connect=timeout_s)
    readings: list[_Reading] = []
    tasks: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(
        base_url=base_url,
        headers=dict(headers),
        timeout=timeout,
        follow_redirects=False,
        verify=tls_context(),
    ) as http:

        def start(path: str, when: str) -> asyncio.Event:
            reading, connected = _Reading(path, when), asyncio.Event()
            readings.append(reading)
            tasks.append(asyncio.create_task(_read(http, reading, connected)))
            return connected

        try:
            opened = [start(path, "open during the request") for path in PUBLIC_READER_PATHS]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(event.wait() for event in opened)), READER_CONNECT_S
                )
            ex = await asyncio.wait_for(_in_daemon_thread(send), timeout_s + 1)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + READER_LISTEN_S
            await asyncio.sleep(READER_AFTER_DELAY_S)
            for path in PUBLIC_READER_PATHS:
                start(path, "after the request")
            await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return ex, readings


@pytest.mark.case(
    "security.no-key-in-public-endpoints",
    title="No key appears on a public log, metrics or admin endpoint",
    area="security",
    spec="relay design; OWASP API Security Top 10 API3:2019 (excessive data exposure)",
)
def test_no_key_in_public_endpoints(client, profile, funded_key, tag, relay):
    secrets = [s for s in dict.fromkeys(relay.secrets) if s and len(s) >= 8]
    # The readers are anonymous: no Authorization, nor any extra header that carries a secret.
    headers = {
        name: value
        for name, value in {**profile.http.extra_headers, **relay.extra_headers}.items()
        if name.lower() != "authorization" and not any(s in value for s in secrets)
    }
    try:
        ex, readings = asyncio.run(
            _read_around(
                relay.base_url,
                headers,
                relay.timeout_s,
                lambda: client.chat(chat_body(directive=directive(tag=tag))),
            )
        )
    except TimeoutError:
        fail(
            "the funded key is used while the public endpoints are read",
            f"an answer within the request timeout ({relay.timeout_s:g} s)",
            "no complete answer",
            None,
            relay.secrets,
        )
    leaks = []
    for reading in readings:
        dump = reading.head + bytes(reading.body)
        for secret in secrets:
            at = dump.find(secret.encode())
            if at < 0:
                continue
            what = "the funded key" if secret == funded_key else "a relay secret"
            around = dump[max(0, at - 80) : at + len(secret) + 40].decode("utf-8", "replace")
            leaks.append(
                (reading, f"{reading.describe()} shows {what} {mask_key(secret)}: {around!r}")
            )
    if leaks:
        first = leaks[0][0]
        reader = ["curl", "-sSN", relay.base_url + first.path]
        for name, value in headers.items():
            reader += ["-H", f"{name}: {value}"]
        fail(
            "an endpoint anyone can read (log feed, metrics, debug or admin view) never shows "
            "a caller's key or a relay secret",
            f"no secret in what GET {', '.join(PUBLIC_READER_PATHS)} answer without "
            "credentials, while and after the funded key is used",
            "; ".join(text for _, text in leaks),
            f"{shlex.join(reader)} &  {ex.curl}",
            relay.secrets,
        )
    # A relay that did not serve the key had nothing to leak: the window proved nothing.
    require(
        is_chat_completion(ex),
        "the funded key is used while the public endpoints are read",
        "HTTP 200 with a chat completion",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
