"""Load confluent-kafka's compiled core without the package's ``__init__``.

The package ``__init__`` imports its consumers' serde helpers, which import ``asyncio``:
~35 ms of CPU before the extension is ready, for code a producer never runs. The extension
process uses only what ``cimpl`` defines (``Producer``, ``KafkaError``, ``KafkaException``),
so it registers a bare package carrying the names of ``cimpl`` and ``_model`` (what the
package's own submodules import from it: ``list_topics`` loads ``confluent_kafka.admin``);
``from confluent_kafka import Producer`` then works unchanged. Only the extension process
does this: a handler's ``import confluent_kafka`` is untouched.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

PACKAGE = "confluent_kafka"


def import_core() -> ModuleType:
    """The package as imported already, else a bare one carrying its core's names.
    ImportError/OSError from the compiled module propagate (runtime_check names the fix)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"No module named {PACKAGE!r}", name=PACKAGE)
    package = importlib.util.module_from_spec(spec)  # created, not executed
    sys.modules[PACKAGE] = package
    try:
        # Submodules of the bare package: its __init__ does not run.
        from confluent_kafka import _model, cimpl  # noqa: PLC0415
    except BaseException:
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]
        raise
    for core in (_model, cimpl):  # the package's own order
        for attr, value in vars(core).items():
            if not attr.startswith("_"):
                setattr(package, attr, value)
    return package
