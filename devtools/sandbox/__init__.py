"""A local Lambda execution environment: real processes, real Lambda APIs on loopback.

No Lambda or Docker is needed. The sandbox serves the Runtime API, the
Extensions API and the Telemetry API on ``127.0.0.1`` at their real paths
with their real headers, unpacks the layers and the function into a temp dir
(playing ``/opt`` and ``/var/task`` — code must never assume those paths),
starts every executable in ``<opt>/extensions/`` as Lambda does, then the
real runtime interface client (``python -m awslambdaric <handler>``), and
drives the lifecycle::

    from devtools.sandbox import Sandbox, SandboxInitError

    with Sandbox(layers=[Path("dist/kafka-relay-layer-x86_64.zip")],   # zips or dirs, in order
                 function=Path("dist/producer-functions.zip"),          # zip or dir
                 handler="rss_producer.handler",
                 env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"},     # the function's own env
                 function_name="kafka-relay-demo", memory_mb=256, timeout_s=30.0,
                 cpu_quota=None,             # vCPUs: True (from memory), a number, False
                 init_timeout_s=10.0, shutdown_budget_ms=2000,
                 log_path=None,              # the log stream file (default: in the temp dir)
                 python=sys.executable,      # interpreter for the runtime and `python3`
                 isolated=True,              # only stdlib + awslambdaric + boto3 + zips
                 echo=None) as sb:           # a text stream to mirror the log stream to
        sb.start()                                 # init phase (else the first invoke runs it)
        r = sb.invoke({"any": "event"})            # -> InvokeResult
        s = sb.shutdown("spindown")                # -> ShutdownResult
        sb.log_lines(); sb.wait_for_log(r"REPORT", timeout=5)
        sb.pids(); sb.runtime_api; sb.opt_dir; sb.task_root; sb.log_path
        sb.telemetry_subscriptions(); sb.telemetry_stats(); sb.extension_names()
    # leaving the block spins a running environment down and removes the temp dir

``InvokeResult``: ``request_id``, ``status`` (``success|error|timeout``),
``payload`` (parsed JSON of the response or error document), ``raw_payload``,
``error`` (the error document or None), ``caller_ms`` = ``runtime_ms``
(invoke start -> response posted), ``post_runtime_ms`` (response -> the
runtime and every extension called ``/next``), ``duration_ms`` (the sum: the
REPORT line's Duration), ``billed_ms`` (ceil of it), ``init_ms`` (first
invoke after an init, else None), ``max_memory_mb`` (sum of the processes'
VmHWM), ``started_ms``/``deadline_ms`` (epoch ms), ``reset`` (a
``ShutdownResult`` when this invoke ended the environment), ``cpu_runtime_ms``,
``cpu_extensions_ms`` and ``cpu_ms`` (user + sys of the runtime's and the
extensions' processes since the previous invoke ended), ``cpu_quota_vcpus``.

CPU as in Lambda (``devtools.sandbox.cgroup``): each environment gets a cgroup
with a CPU quota of ``memory_mb / 1769`` vCPUs (256 MB = 0.145 vCPU), every
extension and the runtime joining it before running their own code; the REPORT
line adds ``CPU Quota: 0.145 vCPU`` and ``CPU Time: 12.34 ms``. ``cpu_quota=None``
(the default) applies it only when ``memory_mb`` is given (the bench, the CLI):
tests run unthrottled unless they ask. Where no cgroup can be made (not root, no
cpu controller) the environment runs unthrottled with a one-time warning on
stderr, and CPU time comes from ``/proc``.

``ShutdownResult``: ``reason``, ``deadline_ms``, ``duration_ms``,
``exit_codes`` (extension file name -> code, -9 when SIGKILLed), ``killed``,
``notified`` (extensions that received SHUTDOWN).

Lifecycle, as in Lambda:

- init: extensions start in parallel, each in its own process group; the
  runtime starts once all have registered; init ends when the runtime and
  every extension called ``/next`` (limit ``init_timeout_s``). An
  ``init/error``, a crash or the time limit raise ``SandboxInitError``
  (``error_type`` e.g. ``Extension.ConfigError``) after the environment is torn
  down; the log stream keeps the processes' output.
- invoke: INVOKE goes to every extension registered for it, the event to the
  runtime; the environment is frozen (SIGSTOP to every process group) once the
  runtime and all extensions called ``/next``, and thawed on the next invoke.
- function timeout, runtime crash, extension crash or ``exit/error``: the
  result says so and the environment is reset — runtime SIGKILLed, SHUTDOWN
  (``timeout`` or ``failure``) to the extensions, SIGKILL at the deadline; the
  next invoke inits a fresh environment (new pids, new Init Duration) with the
  same ``/tmp`` (``TMPDIR``): Lambda does not clear it on a reset. A spun-down
  environment's successor gets an empty one.
- ``shutdown()``: thaw, SIGKILL the runtime, SHUTDOWN with ``deadlineMs = now +
  shutdown_budget_ms``, wait for the extensions to exit, SIGKILL the rest.

Extensions get the function's environment minus ``_HANDLER``,
``LAMBDA_TASK_ROOT`` and ``LAMBDA_RUNTIME_DIR`` (Lambda hides them), with
``PYTHONPATH`` holding only the runtime's packages: a launcher puts its
layer's ``python/`` on the path itself. ``TMPDIR`` is a fresh directory per
environment. Telemetry destinations may use ``sandbox.localdomain`` (resolved
to 127.0.0.1 here, as inside Lambda), ``127.0.0.1`` or ``localhost``.

Modes (``Sandbox(..., mode=...)``, see ``modes.py`` and ``concurrent.py``):

- ``"managed-instances"`` (``max_concurrency=N``, ``runtime_processes=K``, K <= N,
  default K = N): ``AWS_LAMBDA_INITIALIZATION_TYPE=lambda-managed-instances``
  everywhere and ``AWS_LAMBDA_MAX_CONCURRENCY`` for the runtime only, as in Lambda (K:
  awslambdaric forks one worker per its value). Registering for INVOKE is refused (403
  ``Extension.InvalidEventType``, message ``INVOKE: ErrorInvalidEventType``);
  Telemetry subscriptions need ``schemaVersion`` ``2025-01-29`` (else 400); per
  request Telemetry sends ``platform.start`` and ``platform.report`` (status
  success/error/failure/timeout), never an invoke ``platform.runtimeDone``, as AWS's
  Managed Instances platform does (``docs/lambda-behaviour.md``). Init ends
  when the extensions and one runtime worker called ``/next``. No freeze.
  ``sb.invoke_many(events, concurrency=C)`` dispatches up to min(C, N) at once and
  returns results in order; ``invoke()`` is one of them. A timed-out invocation is
  reported (``status="timeout"``) without a reset; an extension or runtime exit
  ends the environment (its in-flight invocations fail with ``reset`` set) and the
  next invocations init a fresh one. SHUTDOWN as above.
- ``"snap-start"``: ``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start``; awslambdaric runs
  its before-snapshot hooks and blocks in ``/runtime/restore/next``; init ends there
  and the sandbox "snapshots": SIGSTOP, and ``sb.snapshot_report()`` lists the
  established TCP connections of the environment's processes (not those to the
  Lambda APIs) and the log position. ``sb.restore(after_s=...)`` (or the first
  invoke) thaws it, emits ``platform.restoreStart``, answers ``/restore/next``, and
  once the runtime calls ``/invocation/next`` emits ``platform.restoreRuntimeDone``
  and ``platform.restoreReport``, logs ``RESTORE_START``/``RESTORE_REPORT`` and
  leaves it running until the first invoke. No ``AWS_ACCESS_KEY_ID``/``..._SECRET_...``/
  ``AWS_SESSION_TOKEN``: ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` +
  ``AWS_CONTAINER_AUTHORIZATION_TOKEN`` name a credentials endpoint instead.
  ``hide_init_type=True`` hides ``AWS_LAMBDA_INITIALIZATION_TYPE`` from extensions
  (the runtime still sees it): an extension must tell SnapStart some other way.
  Processes are not checkpointed: no memory is copied, the clock does not jump
  (the pause is real), and sockets die only if the caller cuts them (e.g. with a
  ``FaultProxy`` between snapshot and restore).

Also a command: ``python -m devtools.sandbox --layer L.zip --function F.zip
--handler mod.fn --event '{}' --invocations 3 [--env K=V] [--timeout 30]
[--log out.log]``.
"""

from devtools.sandbox.errors import SandboxError, SandboxInitError
from devtools.sandbox.modes import Connection, RestoreResult, SnapshotReport
from devtools.sandbox.sandbox import InvokeResult, Sandbox, ShutdownResult

__all__ = ["Connection", "InvokeResult", "RestoreResult", "Sandbox", "SandboxError",
           "SandboxInitError", "ShutdownResult", "SnapshotReport"]
