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
``ShutdownResult`` when this invoke ended the environment).

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

Also a command: ``python -m devtools.sandbox --layer L.zip --function F.zip
--handler mod.fn --event '{}' --invocations 3 [--env K=V] [--timeout 30]
[--log out.log]``.
"""

from devtools.sandbox.errors import SandboxError, SandboxInitError
from devtools.sandbox.sandbox import InvokeResult, Sandbox, ShutdownResult

__all__ = ["InvokeResult", "Sandbox", "SandboxError", "SandboxInitError", "ShutdownResult"]
