"""What Lambda names, defined once: event types, environment variables, initialization types,
where the runtime keeps the AWS SDK.

The one module that reads ``AWS_LAMBDA_INITIALIZATION_TYPE``. It imports nothing:
``__main__`` uses it before registering, when every import still counts against init.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds before registering
if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

# Extensions API event types.
INVOKE = "INVOKE"
SHUTDOWN = "SHUTDOWN"

# Environment variables Lambda sets.
RUNTIME_API = "AWS_LAMBDA_RUNTIME_API"
INITIALIZATION_TYPE = "AWS_LAMBDA_INITIALIZATION_TYPE"
ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
CONTAINER_CREDENTIALS_FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
CONTAINER_AUTHORIZATION_TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"

# The modes the environment can suggest (``config.LambdaMode`` holds the same values).
ON_DEMAND = "on-demand"
SNAP_START = "snap-start"
MANAGED_INSTANCES = "managed-instances"
# Lambda's spelling of managed instances in AWS_LAMBDA_INITIALIZATION_TYPE.
_MANAGED_INSTANCES_TYPE = "lambda-managed-instances"
# Values that say "not restored from a snapshot, not managed instances" outright.
_PLAIN_TYPES = frozenset({ON_DEMAND, "provisioned-concurrency"})


def mode_hint(env: Mapping[str, str]) -> str:
    """The mode the environment suggests: ON_DEMAND, SNAP_START or MANAGED_INSTANCES.

    The initialization type decides when it names a mode. When it is missing or unknown
    (an extension may not be shown it), a SnapStart environment still tells itself apart:
    its credentials come from the container credentials endpoint, never as static keys,
    which would be frozen into the snapshot. The registration's answer has the last word
    (``modes.mode.decide``): no INVOKE means managed instances whatever this says."""
    kind = env.get(INITIALIZATION_TYPE, "").strip().lower()
    if kind in (_MANAGED_INSTANCES_TYPE, MANAGED_INSTANCES):
        return MANAGED_INSTANCES
    if kind == SNAP_START:
        return SNAP_START
    if kind not in _PLAIN_TYPES and _container_credentials_only(env):
        return SNAP_START
    return ON_DEMAND


def _container_credentials_only(env: Mapping[str, str]) -> bool:
    return (bool(env.get(CONTAINER_CREDENTIALS_FULL_URI, "").strip())
            and bool(env.get(CONTAINER_AUTHORIZATION_TOKEN, "").strip())
            and not env.get(ACCESS_KEY_ID, "").strip())


def registration_events(env: Mapping[str, str]) -> list[str]:
    """The events to register for: managed instances accept SHUTDOWN only."""
    return [SHUTDOWN] if mode_hint(env) == MANAGED_INSTANCES else [INVOKE, SHUTDOWN]


def ready_before_assembly(env: Mapping[str, str], events: Collection[str]) -> bool:
    """Whether the extension calls ``/next`` before it assembles the delivery engine, the mode
    and the handoff server (``prepare.py``): only on demand, where the invocation that started
    the environment waits behind init anyway. Provisioned concurrency initializes ahead of
    its invocations (init is the time to do the work), a SnapStart snapshot is taken after
    init (everything must be settled before it), and managed instances (no INVOKE) run no
    invocation loop; an unknown initialization type is treated like them."""
    return INVOKE in events and env.get(INITIALIZATION_TYPE, "").strip().lower() == ON_DEMAND


def sdk_importable() -> None:
    """Make the runtime's boto3 and botocore importable. Lambda's Python runtimes keep them
    in the interpreter's site-packages, which ``site`` puts on ``sys.path``; the layer's
    launcher starts the extension without ``site`` (``python3 -S``: ~1.5-2.5 ms of CPU at
    every start), so what needs the SDK (a secret, an S3 spill bucket, MSK IAM) calls this
    first: the site-packages directories are added after everything else, their ``.pth``
    files read, as ``site`` would."""
    import sys  # noqa: PLC0415 - this module imports nothing at load

    if not sys.flags.no_site:
        return
    import site  # noqa: PLC0415

    for directory in site.getsitepackages():
        site.addsitedir(directory)
