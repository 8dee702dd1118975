"""All configuration, resolved once at start: explicit argument > environment > default.

``load_config(env)`` turns the environment into a frozen ``Config`` or raises
``ConfigError`` naming the variable and the fix. Nothing else in the package
reads ``os.environ``.
"""

import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from kafka_relay import aws_lambda
from kafka_relay.errors import ConfigError
from kafka_relay.protocol import (
    CONTAINER_TOKEN_ENV,
    DEFAULT_PORT,
    FALLBACK_DIRECT,
    FALLBACK_ENV,
    PORT_ENV,
    SESSION_TOKEN_ENV,
    TOKEN_ENV,
    handoff_token,
)
from kafka_relay.ring import RING_DIR_ENV, RING_ENV, ring_dir

EXTENSION_NAME = "kafka-relay"
PRODUCER_PREFIX = "KAFKA_PRODUCER_"
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,249}")  # use fullmatch: "x\n" is no topic

_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
#: KAFKA_AUTH: how the producer authenticates (unset: derived from the other variables).
AUTH_MODES = ("msk-iam", "scram", "plain", "none")
MSK_IAM = "msk-iam"
#: MSK's listener ports (inside AWS, over public access) by how the client authenticates.
MSK_PORTS = {MSK_IAM: (9098, 9198), "scram": (9096, 9196)}


def msk_listener(kind: str) -> str:
    """``port 9098 inside AWS, 9198 over public access`` for MSK_PORTS[kind]."""
    private, public = MSK_PORTS[kind]
    return f"port {private} inside AWS, {public} over public access"


# Where botocore's credential chain finds the role's credentials when the environment
# has no keys (SnapStart, containers): the container credentials endpoint.
_CONTAINER_CREDENTIALS = (aws_lambda.CONTAINER_CREDENTIALS_FULL_URI,
                          "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# A variable whose name holds one of these never has its value echoed in an error.
_SECRET_WORDS = ("PASSWORD", "SECRET", "KEY", "TOKEN", "CREDENTIAL", "PEM", "JAAS")
_DIGITS = re.compile(r"[0-9]{1,18}")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_MAX_FLUSH_INTERVAL_MS = 86_400_000

# Lambda's SHUTDOWN phase lasts 2,000 ms once an external extension is registered: the runtime
# gets the first 300 ms of it (500 ms when it runs an internal extension) and external
# extensions the rest. An extension cannot see whether an internal one exists, so it plans for
# the smaller share.
SHUTDOWN_PHASE_MS = 2_000
RUNTIME_SHUTDOWN_SHARE_MS = 500
EXTENSION_SHUTDOWN_MS = SHUTDOWN_PHASE_MS - RUNTIME_SHUTDOWN_SHARE_MS


# -- the variables ---------------------------------------------------------------------
# One table: load_config reads each variable through its entry (name, aliases, default,
# bounds), and the documentation's configuration reference is rendered from it, so the two
# cannot drift apart.
# The value classes here are NamedTuples, not dataclasses: a frozen dataclass costs ~0.4 ms
# of CPU to create at import, and ``dataclasses`` (with ``inspect``) ~6 ms to import, at every
# cold start (docs/cost.md, "Cold start"). For the same reason this module does without
# ``from __future__ import annotations``: NamedTuple compiles each string annotation (~1.5 ms
# for Config's and the others' fields), so annotations naming a later class are quoted.


class Variable(NamedTuple):
    """One environment variable: how it is read and what the reference says about it."""

    name: str
    default: int | bool | str | None  # None: unset (required or optional, see ``doc``)
    kind: str  # what a value is
    doc: str
    aliases: tuple[str, ...] = ()
    reader: str = "extension"  # extension | client | extension, client | launcher
    minimum: int = 0  # integers only
    maximum: int = 0
    shown_default: str | None = None  # when the default is computed, not a constant

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def covers(self, name: str) -> bool:
        """``name`` is this variable, an alias, or one of a family (``KAFKA_PRODUCER_<X>``)."""
        stem, family, _ = self.name.partition("<")
        return name in self.names or (bool(family) and name.startswith(stem))

    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None:
            return "unset"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


BOOTSTRAP = Variable(
    "KAFKA_BOOTSTRAP_SERVERS", None, "host:port[,host:port...]",
    "The brokers (required). MSK: 9098 (IAM), 9096 (SCRAM), 9094 (TLS) inside AWS; 9198, "
    "9196, 9194 over public access. Confluent Cloud: 9092.",
    aliases=("KAFKA_ENDPOINT",), shown_default="required")
AUTH = Variable(
    "KAFKA_AUTH", None, " | ".join(AUTH_MODES),
    "How the producer authenticates; each mode refuses the variables that do not go with "
    "it. Unset: plain with an API key or a secret, else none.", shown_default="derived")
API_KEY = Variable("KAFKA_API_KEY", None, "text",
                   "SASL username (Confluent Cloud API key, or a SCRAM user); with "
                   "KAFKA_API_SECRET.")
API_SECRET = Variable("KAFKA_API_SECRET", None, "text",
                      "SASL password; never echoed in a message.")
SECRET_ARN = Variable(
    "KAFKA_SECRET_ARN", None, "Secrets Manager ARN",
    'A secret {"api_key", "api_secret"} or MSK\'s {"username", "password"}, read once at '
    "init (the role needs secretsmanager:GetSecretValue, and kms:Decrypt on a customer key).")
SECURITY_PROTOCOL = Variable(
    "KAFKA_SECURITY_PROTOCOL", None, " | ".join(_SECURITY_PROTOCOLS),
    "Set by KAFKA_AUTH; give it only to choose SSL (none) or SASL_PLAINTEXT (plain, scram).",
    shown_default="derived")
SASL_MECHANISM = Variable(
    "KAFKA_SASL_MECHANISM", None, " | ".join(_SASL_MECHANISMS),
    "Set by KAFKA_AUTH (scram: SCRAM-SHA-512 unless SCRAM-SHA-256 is given); OAUTHBEARER "
    "only with KAFKA_AUTH=msk-iam.", shown_default="derived")
TOPIC = Variable("KAFKA_TOPIC", None, "topic name",
                 "The default topic of client.send() (a record without a topic).")
DLQ_TOPIC = Variable("KAFKA_DLQ_TOPIC", None, "topic name",
                     "Where records Kafka refused for good go.", aliases=("DLQ_TOPIC",),
                     shown_default="dlq.<topic>")
PRODUCER_PROPERTY = Variable(
    f"{PRODUCER_PREFIX}<PROPERTY>", None, "librdkafka property value",
    "Any librdkafka producer property, '_' for '.', e.g. KAFKA_PRODUCER_LINGER_MS=5; wins "
    "over the defaults.", shown_default="acks=all, idempotence, zstd, linger.ms=5")
FLUSH = Variable(
    "KAFKA_RELAY_FLUSH", "auto", "auto | end | periodic:<ms> | shutdown",
    "Whether the extension waits for acknowledgements before the environment freezes.")
MAX_LATENCY_MS = Variable(
    "KAFKA_RELAY_MAX_LATENCY_MS", 5_000, "milliseconds",
    "auto: no record waits longer than this (plus one freeze) because a flush was deferred.",
    minimum=100, maximum=900_000)
FLUSH_BUDGET_MS = Variable(
    "KAFKA_RELAY_FLUSH_BUDGET_MS", 10_000, "milliseconds",
    "Cap on a flush before /next (also capped by the invocation's deadline; a flush that "
    "settles nothing for 1.5 s, 3 s before the broker's first delivery, stops early, after "
    "0.2 s while connection attempts to Kafka fail; after an outage each flush is capped at "
    "0.5 s until the backlog is delivered).",
    minimum=1, maximum=900_000)
MAX_BUFFER_RECORDS = Variable(
    "KAFKA_RELAY_MAX_BUFFER_RECORDS", 0, "records",
    "Back-pressure: past it /v1/records answers 429. Derived from the function's memory "
    "and what SHUTDOWN can spill; an explicit value wins.", minimum=1,
    maximum=10_000_000, shown_default="derived")
MAX_BUFFER_BYTES = Variable(
    "KAFKA_RELAY_MAX_BUFFER_BYTES", 0, "bytes",
    "The same limit in record bytes.", minimum=1, maximum=10 * 1024**3,
    shown_default="derived")
MAX_BODY_BYTES = Variable("KAFKA_RELAY_MAX_BODY_BYTES", 16 * 1024 * 1024, "bytes",
                          "Request body limit of /v1/records (413 past it).", minimum=1,
                          maximum=256 * 1024**2)
MAX_ATTEMPTS = Variable("KAFKA_RELAY_MAX_ATTEMPTS", 3, "count",
                        "Produce cycles with a transient error before the DLQ.", minimum=1,
                        maximum=100)
RETRY_BACKOFF_MS = Variable("KAFKA_RELAY_RETRY_BACKOFF_MS", 500, "milliseconds",
                            "First retry backoff (doubles, capped at 30 s).",
                            maximum=600_000)
SPILL_BUCKET = Variable("KAFKA_RELAY_SPILL_BUCKET", None, "S3 bucket name",
                        "Where records not sent by SHUTDOWN go (the role needs "
                        "s3:PutObject); unset: log lines.")
SPOOL_DIR = Variable("KAFKA_RELAY_SPOOL_DIR", None, "directory",
                     "The local spool the next invocation re-sends.",
                     shown_default="$TMPDIR/kafka-relay-spool (/tmp/...)")
SPOOL_MAX_BYTES = Variable(
    "KAFKA_RELAY_SPOOL_MAX_BYTES", None, "bytes",
    "The outage spool's limit: batches that do not fit in memory wait on disk up to it, "
    "past it /v1/records answers 507; 0 turns the spool off (429 when memory is full). Unset, "
    "the spool holds what SHUTDOWN can read back and spill (it shares the spill window with "
    "the memory buffer); a larger value is kept and warned about at init, as records past "
    "it are lost if the broker is down at SHUTDOWN without KAFKA_RELAY_SPILL_BUCKET.",
    maximum=2**50, shown_default="what SHUTDOWN can spill (663 KB at 256 MB, 4.6 MB at "
                                 "1,769 MB), at most half of /tmp's free space")
JOURNAL = Variable("KAFKA_RELAY_JOURNAL", True, "true | false",
                   "Journal every accepted batch to /tmp before the 202, so records survive "
                   "the extension process dying; a batch it cannot write is refused (507). "
                   "Off saves ~1-2 µs of CPU per record.")
JOURNAL_DIR = Variable("KAFKA_RELAY_JOURNAL_DIR", None, "directory",
                       "Where the journal goes (one extension per directory).",
                       shown_default="$TMPDIR/kafka-relay-journal (/tmp/...)")
RING = Variable(RING_ENV, True, "true | false",
                "Hand each batch over through a ring file of the handler process's own in "
                "KAFKA_RELAY_RING_DIR and one message on a Unix socket, instead of a loopback "
                "HTTP request; the ring is also the crash journal of the records it carries. "
                "Off: every batch goes over HTTP.", reader="extension, client")
RING_DIR = Variable(RING_DIR_ENV, None, "directory",
                    "Where the handler processes' ring files go (4 MiB each, one per process).",
                    reader="extension, client",
                    shown_default="$TMPDIR/kafka-relay-ring (/tmp/...)")
PORT = Variable(PORT_ENV, DEFAULT_PORT, "port", "The handoff port on 127.0.0.1 (set the "
                "same on both sides).", reader="extension, client", minimum=1,
                maximum=65535)
TOKEN = Variable(TOKEN_ENV, None, "text",
                 "The handoff token (set the same on both sides).",
                 reader="extension, client",
                 shown_default=f"{SESSION_TOKEN_ENV}, else {CONTAINER_TOKEN_ENV}")
TELEMETRY = Variable("KAFKA_RELAY_TELEMETRY", True, "true | false",
                     "Subscribe to the Telemetry API (platform.runtimeDone, restoreStart).")
SHUTDOWN_MARGIN_MS = Variable("KAFKA_RELAY_SHUTDOWN_MARGIN_MS", 300, "milliseconds",
                              "SHUTDOWN safety margin before the deadline.",
                              maximum=EXTENSION_SHUTDOWN_MS)
INIT_PROBE_MS = Variable(
    "KAFKA_RELAY_INIT_PROBE_MS", 3_000, "milliseconds",
    "Init-time broker probe (ends at the first transport error: a refused or unresolvable "
    "broker costs ~20 ms, not the whole probe).",
    maximum=10_000)
LOG_LEVEL = Variable("KAFKA_RELAY_LOG_LEVEL", "INFO", " | ".join(_LOG_LEVELS),
                     "The extension's log level.")
FALLBACK = Variable(FALLBACK_ENV, None, FALLBACK_DIRECT,
                    "On the function: produce in-process when no extension takes a batch.",
                    reader="client")
PYTHON = Variable("KAFKA_RELAY_PYTHON", "python3", "interpreter",
                  "The interpreter the layer's launcher runs (container images).",
                  reader="launcher")
# Lambda sets it; read with the same bounds check, not a setting of kafka-relay.
_FUNCTION_MEMORY = Variable("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 0, "MB", "", maximum=32_768)

#: Every variable kafka-relay reads, in the order the reference lists them.
VARIABLES = (
    BOOTSTRAP, AUTH, API_KEY, API_SECRET, SECRET_ARN, SECURITY_PROTOCOL, SASL_MECHANISM,
    TOPIC, DLQ_TOPIC, PRODUCER_PROPERTY, FLUSH, MAX_LATENCY_MS, FLUSH_BUDGET_MS,
    MAX_BUFFER_RECORDS, MAX_BUFFER_BYTES, MAX_BODY_BYTES, MAX_ATTEMPTS, RETRY_BACKOFF_MS,
    SPILL_BUCKET, SPOOL_DIR, SPOOL_MAX_BYTES, JOURNAL, JOURNAL_DIR, RING, RING_DIR, PORT, TOKEN,
    TELEMETRY, SHUTDOWN_MARGIN_MS, INIT_PROBE_MS, LOG_LEVEL, FALLBACK, PYTHON,
)


def valid_topic_name(name: str) -> bool:
    """Kafka's rule, matched whole: 1-249 of ``[A-Za-z0-9._-]``, and not ``.`` or ``..``."""
    return TOPIC_PATTERN.fullmatch(name) is not None and name not in (".", "..")


class FlushMode(str, Enum):
    AUTO = "auto"
    END = "end"
    PERIODIC = "periodic"
    SHUTDOWN = "shutdown"


class FlushStrategy(NamedTuple):
    mode: FlushMode
    interval_ms: int = 0

    @classmethod
    def parse(cls, text: str) -> "FlushStrategy":
        text = text.strip().lower()
        if text in (FlushMode.AUTO.value, FlushMode.END.value, FlushMode.SHUTDOWN.value):
            return cls(FlushMode(text))
        name, _, interval = text.partition(":")
        if (name == FlushMode.PERIODIC.value and _DIGITS.fullmatch(interval)
                and 0 < int(interval) <= _MAX_FLUSH_INTERVAL_MS):
            return cls(FlushMode.PERIODIC, int(interval))
        raise ConfigError(
            f"KAFKA_RELAY_FLUSH={text!r} is not a flush strategy: use 'auto' (the default: flush "
            "after invocations until they come often enough, within KAFKA_RELAY_MAX_LATENCY_MS), "
            "'end' (flush after every invocation), 'periodic:<ms>' (1 to 86400000 ms, e.g. "
            "periodic:1000) or 'shutdown'"
        )

    def __str__(self) -> str:
        if self.mode is FlushMode.PERIODIC:
            return f"periodic:{self.interval_ms}"
        return str(self.mode.value)


class LambdaMode(str, Enum):
    """How Lambda runs the environment (values as in ``aws_lambda``)."""

    ON_DEMAND = aws_lambda.ON_DEMAND  # INVOKE per invocation, frozen in between
    MANAGED_INSTANCES = aws_lambda.MANAGED_INSTANCES  # SHUTDOWN only, concurrent, never frozen
    SNAP_START = aws_lambda.SNAP_START  # init, snapshot, then restored copies


class AwsCredentials(NamedTuple):
    """AWS credentials that sign MSK IAM tokens (the execution role's, in Lambda)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    expiration: float | None = None  # epoch seconds; None when the source does not say

    def __repr__(self) -> str:  # the secret and the session token never reach a log
        return (f"AwsCredentials(access_key_id={self.access_key_id!r}, "
                f"expiration={self.expiration!r})")


_AUTO = FlushStrategy(FlushMode.AUTO)
_NO_OVERRIDES: Mapping[str, str] = MappingProxyType({})
# Never in a repr: a Config may be logged or shown in a traceback.
_SECRET_FIELDS = frozenset({"api_key", "api_secret", "token"})


class Config(NamedTuple):
    bootstrap_servers: str
    default_topic: str | None = None
    dlq_topic: str | None = None
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    auth: str = "none"  # one of AUTH_MODES, resolved (KAFKA_AUTH or derived)
    api_key: str | None = None
    api_secret: str | None = None
    secret_arn: str | None = None
    producer_overrides: Mapping[str, str] = _NO_OVERRIDES
    flush: FlushStrategy = _AUTO
    flush_budget_ms: int = 10_000
    # ``auto``: no record waits longer than this (plus one freeze) because a flush was deferred
    max_latency_ms: int = 5_000
    shutdown_margin_ms: int = 300
    init_probe_ms: int = 3_000
    port: int = DEFAULT_PORT
    token: str | None = None
    # 0: derived from the spill rate and the function's memory (delivery/budget.py)
    max_buffer_records: int = 0
    max_buffer_bytes: int = 0
    max_body_bytes: int = 16 * 1024 * 1024
    max_attempts: int = 3
    retry_backoff_ms: int = 500
    spill_bucket: str | None = None
    spool_dir: Path = Path("/tmp/kafka-relay-spool")
    # The outage spool's byte limit (delivery/overflow.py); None: what SHUTDOWN can spill
    # (delivery/budget.py); 0: no outage spool (a full buffer answers 429).
    spool_max_bytes: int | None = None
    # Write-ahead journal of accepted records (delivery/journal.py). On by default: nothing a
    # 202 answered is lost to a killed extension (its cost: bench/journal_cost.py,
    # docs/durability.md).
    journal: bool = True
    journal_dir: Path = Path("/tmp/kafka-relay-journal")
    # The ring transport (kafka_relay.ring): its listener, and the rings it takes over.
    ring: bool = True
    ring_dir: Path = Path("/tmp/kafka-relay-ring")
    telemetry: bool = True
    log_level: str = "INFO"
    function_name: str = ""
    function_memory_mb: int = 0  # AWS_LAMBDA_FUNCTION_MEMORY_SIZE; 0 outside Lambda
    region: str | None = None
    # What the environment suggests (aws_lambda.mode_hint); modes.mode.decide has the last
    # word, with the registration's answer.
    mode_hint: LambdaMode = LambdaMode.ON_DEMAND
    # msk-iam: the role's credentials from the environment, or None for botocore's chain
    # (the container credentials endpoint under SnapStart), which refreshes them.
    aws_credentials: AwsCredentials | None = None

    def dlq_for(self, topic: str) -> str:
        """Where a record of ``topic`` is dead-lettered."""
        return self.dlq_topic or f"dlq.{topic}"

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(self._fields, self,
                                                                     strict=True)
                          if name not in _SECRET_FIELDS)
        return f"Config({shown})"


def _text(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _int(env: Mapping[str, str], variable: Variable) -> int:
    name, minimum, maximum = variable.name, variable.minimum, variable.maximum
    raw = _text(env, name)
    if raw is None:
        return int(variable.default or 0)
    if not _DIGITS.fullmatch(raw):
        raise ConfigError(f"{name}={_shown(name, raw)} is not a whole number: write it in "
                          f"digits (e.g. 1000000, not 1e6), from {minimum} to {maximum}")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value} is out of range: use {minimum} to {maximum}")
    return value


def _shown(name: str, raw: str) -> str:
    """How a value appears in an error message: never the value of a secret."""
    if any(word in name.upper() for word in _SECRET_WORDS):
        return f"<{len(raw)} characters, not shown>"
    return repr(raw)


def _bool(env: Mapping[str, str], variable: Variable) -> bool:
    name = variable.name
    raw = _text(env, name)
    if raw is None:
        return bool(variable.default)
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={_shown(name, raw)} must be true or false")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = _text(env, name)
    if raw is None:
        return None
    if raw.upper() not in choices:
        raise ConfigError(
            f"{name}={_shown(name, raw)} is not supported: use one of {', '.join(choices)}"
        )
    return raw.upper()


def _topic(env: Mapping[str, str], variable: Variable) -> str | None:
    value = _text(env, *variable.names)
    if value is not None and not valid_topic_name(value):
        raise ConfigError(
            f"{variable.name}={value!r} is not a valid Kafka topic name: use 1-249 characters "
            "from letters, digits, '.', '_' and '-'"
        )
    return value


def check_bootstrap(name: str, servers: str) -> str:
    """``servers`` normalised (spaces dropped), or ConfigError naming ``name`` and the entry."""
    entries = [entry.strip() for entry in servers.split(",")]
    for entry in entries:
        problem = _bootstrap_problem(entry)
        if problem:
            raise ConfigError(
                f"{name}={servers!r}: entry {entry!r} {problem}; list the brokers as "
                "host:port[,host:port...], e.g. pkc-xxxx.us-east-1.aws.confluent.cloud:9092"
            )
    return ",".join(entries)


def _bootstrap_problem(entry: str) -> str | None:
    scheme, sep, rest = entry.partition("://")
    if sep:
        if scheme.upper() not in _SECURITY_PROTOCOLS:
            return f"has an unknown scheme {scheme!r}"
        entry = rest
    if entry.startswith("["):
        host, sep, port = entry[1:].partition("]:")
        if not sep:
            return "is not [ipv6]:port"
        import ipaddress  # noqa: PLC0415 - ~3 ms at every start, for bracketed hosts only

        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"has {host!r}, not an IPv6 address, in brackets"
    else:
        host, sep, port = entry.rpartition(":")
        if not sep or not host:
            return "is not host:port (the port is required)"
        if ":" in host:
            return "has an IPv6 address without brackets: write [address]:port"
        if not _plausible_host(host):
            return f"has {host!r}, which is not a hostname or IP address"
    if not _DIGITS.fullmatch(port) or not 1 <= int(port) <= 65535:
        return f"has port {port!r}, not 1-65535"
    return None


def _plausible_host(host: str) -> bool:
    name = host[:-1] if host.endswith(".") else host
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(label)
                                        for label in name.split("."))


def producer_overrides(env: Mapping[str, str]) -> dict[str, str]:
    """``KAFKA_PRODUCER_LINGER_MS=5`` → ``{"linger.ms": "5"}`` (any librdkafka property)."""
    overrides: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(PRODUCER_PREFIX):
            continue
        prop = name[len(PRODUCER_PREFIX):].lower().replace("_", ".")
        if not re.fullmatch(r"[a-z0-9]+(\.[a-z0-9]+)*", prop) or not value.strip():
            raise ConfigError(
                f"{name}={_shown(name, value)} is malformed: name a librdkafka producer "
                "property with '_' for '.', e.g. KAFKA_PRODUCER_LINGER_MS=5, and give it a value"
            )
        overrides[prop] = value.strip()
    return overrides


def load_config(env: Mapping[str, str], **explicit: Any) -> Config:
    """Resolve the configuration once. ``explicit`` keyword arguments win over ``env``."""
    unknown = set(explicit) - set(Config._fields)
    if unknown:
        raise TypeError(f"unknown Config fields: {sorted(unknown)}")

    bootstrap_from = "bootstrap_servers" if explicit.get("bootstrap_servers") else next(
        (n for n in BOOTSTRAP.names if _text(env, n)), BOOTSTRAP.name)
    bootstrap = explicit.get("bootstrap_servers") or _text(env, *BOOTSTRAP.names)
    if not bootstrap:
        raise ConfigError(
            "KAFKA_BOOTSTRAP_SERVERS is not set: set it (or its alias KAFKA_ENDPOINT) to the "
            "brokers, e.g. pkc-xxxx.us-east-1.aws.confluent.cloud:9092"
        )
    bootstrap = check_bootstrap(bootstrap_from, bootstrap)

    auth = _auth(env)
    flush_raw = _text(env, FLUSH.name)
    log_level = _choice(env, LOG_LEVEL.name, _LOG_LEVELS) or str(LOG_LEVEL.default)

    resolved = Config(
        bootstrap_servers=bootstrap,
        default_topic=_topic(env, TOPIC),
        dlq_topic=_topic(env, DLQ_TOPIC),
        security_protocol=auth.protocol,
        sasl_mechanism=auth.mechanism,
        auth=auth.mode,
        api_key=auth.api_key,
        api_secret=auth.api_secret,
        secret_arn=auth.secret_arn,
        aws_credentials=auth.aws_credentials,
        producer_overrides=producer_overrides(env),
        flush=FlushStrategy.parse(flush_raw or str(FLUSH.default)),
        flush_budget_ms=_int(env, FLUSH_BUDGET_MS),
        max_latency_ms=_int(env, MAX_LATENCY_MS),
        shutdown_margin_ms=_int(env, SHUTDOWN_MARGIN_MS),
        init_probe_ms=_int(env, INIT_PROBE_MS),
        port=_int(env, PORT),
        token=handoff_token(env),
        max_buffer_records=_int(env, MAX_BUFFER_RECORDS),
        max_buffer_bytes=_int(env, MAX_BUFFER_BYTES),
        max_body_bytes=_int(env, MAX_BODY_BYTES),
        max_attempts=_int(env, MAX_ATTEMPTS),
        retry_backoff_ms=_int(env, RETRY_BACKOFF_MS),
        spill_bucket=_text(env, SPILL_BUCKET.name),
        spool_dir=Path(_text(env, SPOOL_DIR.name)
                       or Path(_text(env, "TMPDIR") or "/tmp") / "kafka-relay-spool"),
        spool_max_bytes=(None if _text(env, SPOOL_MAX_BYTES.name) is None
                         else _int(env, SPOOL_MAX_BYTES)),
        journal=_bool(env, JOURNAL),
        journal_dir=Path(_text(env, JOURNAL_DIR.name)
                         or Path(_text(env, "TMPDIR") or "/tmp") / "kafka-relay-journal"),
        ring=_bool(env, RING),
        ring_dir=ring_dir(env),
        telemetry=_bool(env, TELEMETRY),
        log_level=log_level,
        function_name=_text(env, "AWS_LAMBDA_FUNCTION_NAME") or "",
        function_memory_mb=_int(env, _FUNCTION_MEMORY),
        region=auth.region,
        mode_hint=LambdaMode(aws_lambda.mode_hint(env)),
    )
    return resolved._replace(**explicit) if explicit else resolved


# -- authentication ----------------------------------------------------------------------


class _Auth(NamedTuple):
    mode: str
    protocol: str
    mechanism: str | None
    region: str | None
    api_key: str | None = None
    api_secret: str | None = None
    secret_arn: str | None = None
    aws_credentials: AwsCredentials | None = None


def _auth(env: Mapping[str, str]) -> _Auth:
    """KAFKA_AUTH and the variables it goes with; unset, the mode follows from the others
    (API key or secret ARN -> SASL_SSL/PLAIN, nothing -> PLAINTEXT), as before KAFKA_AUTH."""
    raw_mode = _text(env, AUTH.name)
    mode = raw_mode.lower() if raw_mode else None
    if mode is not None and mode not in AUTH_MODES:
        raise ConfigError(f"KAFKA_AUTH={raw_mode!r} is not supported: use one of "
                          f"{', '.join(AUTH_MODES)} (or leave it unset)")
    region = _text(env, "AWS_REGION", "AWS_DEFAULT_REGION")
    api_key, api_secret = _text(env, API_KEY.name), _text(env, API_SECRET.name)
    secret_arn = _text(env, SECRET_ARN.name)
    protocol = _choice(env, SECURITY_PROTOCOL.name, _SECURITY_PROTOCOLS)
    mechanism = _choice(env, SASL_MECHANISM.name, _SASL_MECHANISMS)
    if mode == MSK_IAM:
        return _msk_iam(env, protocol, mechanism, region)
    if mechanism == "OAUTHBEARER":
        raise ConfigError("KAFKA_SASL_MECHANISM=OAUTHBEARER is supported for MSK IAM only: "
                          "set KAFKA_AUTH=msk-iam (and unset KAFKA_SASL_MECHANISM)")
    if (api_key is None) != (api_secret is None):
        missing = "KAFKA_API_SECRET" if api_secret is None else "KAFKA_API_KEY"
        raise ConfigError(
            f"{missing} is not set but its pair is: set both KAFKA_API_KEY and KAFKA_API_SECRET "
            "(or neither, and use KAFKA_SECRET_ARN or a PLAINTEXT cluster)"
        )
    has_credentials = api_key is not None or secret_arn is not None
    if mode == "none":
        if has_credentials:
            raise ConfigError("KAFKA_AUTH=none sends no credentials: unset KAFKA_API_KEY/"
                              "KAFKA_API_SECRET and KAFKA_SECRET_ARN, or use KAFKA_AUTH=plain "
                              "or scram")
        _must(protocol, "KAFKA_SECURITY_PROTOCOL", ("PLAINTEXT", "SSL"), "KAFKA_AUTH=none")
        _must(mechanism, "KAFKA_SASL_MECHANISM", (), "KAFKA_AUTH=none")
        return _Auth("none", protocol or "PLAINTEXT", None, region)
    if mode in ("scram", "plain") and not has_credentials:
        raise ConfigError(f"KAFKA_AUTH={mode} needs credentials: set KAFKA_API_KEY and "
                          "KAFKA_API_SECRET, or KAFKA_SECRET_ARN (a Secrets Manager secret)")
    if mode == "scram":
        _must(mechanism, "KAFKA_SASL_MECHANISM", ("SCRAM-SHA-256", "SCRAM-SHA-512"),
              "KAFKA_AUTH=scram")
        mechanism = mechanism or "SCRAM-SHA-512"
    if mode == "plain":
        _must(mechanism, "KAFKA_SASL_MECHANISM", ("PLAIN",), "KAFKA_AUTH=plain")
    if mode is not None:
        _must(protocol, "KAFKA_SECURITY_PROTOCOL", ("SASL_SSL", "SASL_PLAINTEXT"),
              f"KAFKA_AUTH={mode}")
    protocol = protocol or ("SASL_SSL" if has_credentials else "PLAINTEXT")
    if protocol.startswith("SASL") and mechanism is None:
        mechanism = "PLAIN"
    if protocol.startswith("SASL") and not has_credentials:
        raise ConfigError(
            f"KAFKA_SECURITY_PROTOCOL={protocol} needs credentials: set KAFKA_API_KEY and "
            "KAFKA_API_SECRET, or KAFKA_SECRET_ARN (or KAFKA_AUTH=msk-iam for MSK IAM)"
        )
    derived = "none" if not protocol.startswith("SASL") else (
        "plain" if mechanism == "PLAIN" else "scram")
    return _Auth(mode or derived, protocol, mechanism, region, api_key, api_secret, secret_arn)


def _msk_iam(env: Mapping[str, str], protocol: str | None, mechanism: str | None,
             region: str | None) -> _Auth:
    """KAFKA_AUTH=msk-iam: SASL_SSL + OAUTHBEARER signed with the role; no keys, no secret."""
    given = [v.name for v in (API_KEY, API_SECRET, SECRET_ARN) if _text(env, v.name)]
    if given:
        raise ConfigError(
            f"KAFKA_AUTH=msk-iam signs with the execution role, so {' and '.join(given)} "
            f"must not be set: unset them for MSK IAM ({msk_listener(MSK_IAM)}), or use "
            f"KAFKA_AUTH=scram with KAFKA_SECRET_ARN for MSK SCRAM ({msk_listener('scram')})")
    _must(protocol, "KAFKA_SECURITY_PROTOCOL", ("SASL_SSL",), "KAFKA_AUTH=msk-iam")
    _must(mechanism, "KAFKA_SASL_MECHANISM", ("OAUTHBEARER",), "KAFKA_AUTH=msk-iam")
    if region is None:
        raise ConfigError("KAFKA_AUTH=msk-iam needs the cluster's region in AWS_REGION "
                          "(Lambda sets it; set it yourself outside Lambda)")
    return _Auth(MSK_IAM, "SASL_SSL", "OAUTHBEARER", region,
                 aws_credentials=_role_credentials(env))


def _must(value: str | None, name: str, allowed: tuple[str, ...], because: str) -> None:
    """``value`` (when set) is one of ``allowed``, else a ConfigError saying why not."""
    if value is not None and value not in allowed:
        fix = f"use {' or '.join(allowed)}, or unset it" if allowed else "unset it"
        raise ConfigError(f"{name}={value} does not go with {because}: {fix}")


def _role_credentials(env: Mapping[str, str]) -> AwsCredentials | None:
    """The role's keys from the environment (on-demand Lambda); None when they are not
    there and botocore's chain must find them (SnapStart: the container endpoint)."""
    key, secret = _text(env, "AWS_ACCESS_KEY_ID"), _text(env, "AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return AwsCredentials(key, secret, _text(env, "AWS_SESSION_TOKEN"),
                              _expiration(env, "AWS_CREDENTIAL_EXPIRATION"))
    if key or secret:
        missing = "AWS_SECRET_ACCESS_KEY" if key else "AWS_ACCESS_KEY_ID"
        raise ConfigError(f"KAFKA_AUTH=msk-iam: {missing} is not set but its pair is: set "
                          "both (Lambda sets them from the execution role) or neither")
    if not any(_text(env, name) for name in _CONTAINER_CREDENTIALS):
        raise ConfigError(
            "KAFKA_AUTH=msk-iam signs with the execution role's credentials, but neither "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY nor AWS_CONTAINER_CREDENTIALS_FULL_URI "
            "is set: run in Lambda (it sets them) or set them")
    return None


def _expiration(env: Mapping[str, str], name: str) -> float | None:
    raw = _text(env, name)
    if raw is None:
        return None
    from datetime import datetime  # noqa: PLC0415 - MSK IAM only, not at every start

    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not an ISO 8601 time: write it like "
                          "2026-01-31T12:00:00Z") from exc
    if when.tzinfo is None:
        raise ConfigError(f"{name}={raw!r} has no time zone: end it with Z (UTC)")
    return when.timestamp()
