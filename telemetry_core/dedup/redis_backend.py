"""Built-in plugin: the dedup backend shared by many nodes, in Redis.

``dedup.backend: redis`` with ``dedup.redis_url``.  Needs the optional
``redis`` package (``pip install 'telemetry-core[redis]'``).

Each session is one Redis hash, ``<dedup.redis_prefix><session>``, with
two fields: ``v``, the version of its last decision, and ``s``, the
session's state (:class:`~telemetry_core.dedup.rules.SessionState` as
JSON).  A decision applies
:func:`telemetry_core.dedup.rules.decide` in Python to the state it
believes current and writes the new state with a compare-and-set Lua
script that succeeds only if ``v`` is still the version it decided on.
Otherwise the script answers with the stored version and state, and the
decision is made again on those.  The first attempt guesses that the
session is new, so a session's first submission takes one round trip and
the others two; a lost race (another node decided on the same session in
between) costs one more.  So decisions are atomic and the rules are
implemented once, in Python.
Every write sets the key's time to live to ``dedup.expire_days``: Redis
itself expires idle sessions.

**Redis unavailable** (connection refused or reset, a timeout, a replica
that is read-only or loading): the decision is retried with exponential
back-off (50 ms doubling to 1 s) for up to ``dedup.redis_retry_s``
seconds; then :class:`~telemetry_core.dedup.rules.DedupUnavailableError`
is raised and nothing was recorded, so the processor keeps its input and
retries it later.  A record is never stored without a decision, and a
decision is never guessed.  A retried write that did reach Redis before
the connection broke is recognised on the next attempt (the submission is
then in the state, and its decision is returned as a replay).

Durability is Redis's: run it with ``appendonly yes`` (``appendfsync
everysec`` loses at most a second of decisions when Redis crashes,
``always`` none).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable
from urllib.parse import urlparse

from . import rules
from .rules import DedupUnavailableError, SessionState
from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..metrics.stats import counter_stats
from ..records import Decision, DedupKey

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
#: Lost compare-and-set races on one decision before giving up (each is another node's decision).
MAX_CONFLICTS = 1000

#: KEYS[1] = session key; ARGV = expected version ("" = no state yet), new version, new state, ttl ms.
#: Returns {1} when written, else {0, current version, current state} (so no separate read is needed).
CAS_SCRIPT = """
local current = redis.call('HMGET', KEYS[1], 'v', 's')
local version = current[1] or ''
if version ~= ARGV[1] then
  return {0, version, current[2] or ''}
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1}
"""


class RedisDedupBackend:
    """Dedup decisions in a Redis shared by every node.

    ``client`` may be given (a ``redis.Redis``); otherwise one is made from
    ``url`` with ``timeout_s`` for connecting and for each command and with
    redis-py's own retries turned off (this class retries, with a deadline).
    ``clock`` returns seconds since the epoch; it only feeds decision
    versions.
    """

    name = "redis"

    def __init__(self, url: str | None = None, *, prefix: str = "telemetry:dedup:", expire_days: float = 30.0,
                 timeout_s: float = 5.0, retry_s: float = 30.0, client: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:  # pragma: no cover - the test extra installs redis
            raise ConfigError("the redis dedup backend needs the redis package: "
                              "pip install 'telemetry-core[redis]'", key="dedup.backend") from exc
        self._errors = redis.exceptions
        self.prefix = prefix
        self.ttl_ms = max(1, int(expire_days * DAY_MS))
        self.retry_s = retry_s
        self.clock = clock
        if client is None:
            if not url:
                raise ConfigError("dedup.backend is redis but dedup.redis_url is not set", key="dedup.redis_url")
            client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                          retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.redis = client
        self.where = _where(url) if url else "redis"
        self._cas = client.register_script(CAS_SCRIPT)
        self.stats = counter_stats("/dedup/redis", "decisions", "replays", "conflicts", "retries", "unavailable")

    def decide(self, key: DedupKey, record_id: str, received_at_ms: int, *, copy_id: str = "") -> Decision:
        """Decide on one submission atomically (see the module docstring, and
        :func:`telemetry_core.dedup.rules.decide` for ``copy_id``)."""
        session, _, _ = rules.check_key(key, record_id, received_at_ms)
        if key.kind not in rules.DEDUPLICATED_KINDS:
            return rules.decide(SessionState(), key, record_id, received_at_ms, now_us=0)
        redis_key = self.prefix + session
        conflicts = 0
        deadline: float | None = None
        backoff = FIRST_BACKOFF_S
        seen: tuple[bytes, bytes] | None = None  # (version, state) last read; None = guess "no state yet"
        while True:
            guessed = seen is None
            try:
                decision, seen = self._attempt(redis_key, seen, key, record_id, received_at_ms, copy_id)
            except (self._errors.ConnectionError, self._errors.TimeoutError, self._errors.BusyLoadingError,
                    self._errors.ReadOnlyError, OSError) as exc:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_s
                if now >= deadline:
                    self.stats.unavailable += 1
                    raise DedupUnavailableError(
                        f"Redis dedup backend at {self.where} is unavailable ({type(exc).__name__}: {exc}); "
                        f"gave up after {self.retry_s:g}s of retries, nothing was recorded; "
                        f"the input is kept and retried later") from exc
                self.stats.retries += 1
                log.warning("dedup: Redis at %s unavailable (%s); retrying in %.2fs", self.where, exc, backoff)
                time.sleep(min(backoff, max(0.0, deadline - now)))
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            except self._errors.RedisError as exc:
                self.stats.unavailable += 1
                raise DedupUnavailableError(f"Redis dedup backend at {self.where} failed: "
                                            f"{type(exc).__name__}: {exc}") from exc
            if decision is not None:
                self.stats.decisions += 1
                if decision.replayed:
                    self.stats.replays += 1
                return decision
            if guessed:  # the guess "new session" was wrong: that was just the first read
                continue
            conflicts += 1
            self.stats.conflicts += 1
            if conflicts >= MAX_CONFLICTS:
                raise DedupUnavailableError(f"Redis dedup backend at {self.where}: session {session!r} changed "
                                            f"under {conflicts} attempts in a row; retry later")

    def _attempt(self, redis_key: str, seen: tuple[bytes, bytes] | None, key: DedupKey, record_id: str,
                 received_at_ms: int, copy_id: str) -> tuple[Decision | None, tuple[bytes, bytes] | None]:
        """Decide on the state last seen (first: guess the session is new) and
        compare-and-set it.  Returns ``(decision, seen)``; the decision is
        ``None`` when the stored state was not the one decided on, and then
        ``seen`` is the stored state, which the next attempt decides on."""
        version, blob = seen if seen is not None else (b"", b"")
        state = SessionState.from_bytes(blob) if blob else SessionState()
        decision = rules.decide(state, key, record_id, received_at_ms, now_us=int(self.clock() * 1e6),
                                copy_id=copy_id)
        if decision.replayed:
            return decision, seen
        reply = self._cas(keys=[redis_key], args=[version, state.version, state.to_bytes(), self.ttl_ms])
        if reply[0] == 1:
            return decision, seen
        return None, (reply[1], reply[2])

    def session_state(self, session: str) -> SessionState | None:
        """The stored state of ``session`` (for tests and inspection), or ``None``."""
        blob = self.redis.hget(self.prefix + session, "s")
        return SessionState.from_bytes(blob) if blob else None

    def expire(self) -> int:
        """Nothing to do: Redis expires each session ``expire_days`` after its last decision."""
        return 0

    def sync(self) -> None:
        """Nothing to do: durability is Redis's persistence (``appendonly``/``appendfsync``)."""

    def close(self) -> None:
        self.redis.close()


def _where(url: str) -> str:
    """``host:port`` of a Redis URL, without credentials (for messages)."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return parsed.path
    return f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}"


@hookimpl
def telemetry_config_choices(key: str) -> list[str] | None:
    return ["redis"] if key == "dedup.backend" else None


@hookimpl(trylast=True)
def telemetry_dedup_backend(engine: Any) -> RedisDedupBackend | None:
    """The Redis backend when ``dedup.backend`` is ``redis``."""
    config = engine.config
    if config.get("dedup.backend") != "redis":
        return None
    return RedisDedupBackend(config.get("dedup.redis_url"), prefix=config.get("dedup.redis_prefix"),
                             expire_days=config.get("dedup.expire_days"),
                             timeout_s=config.get("dedup.redis_timeout_s"),
                             retry_s=config.get("dedup.redis_retry_s"))
