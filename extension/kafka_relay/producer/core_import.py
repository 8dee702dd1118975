"""Load confluent-kafka's compiled core without the package's ``__init__``.

The package ``__init__`` imports its consumers' serde helpers, which import ``asyncio``:
~10 ms of CPU before the extension is ready, for code a producer never runs. The extension
process uses only what ``cimpl`` defines (``Producer``, ``KafkaError``, ``KafkaException``),
so it registers a bare package whose attributes are cimpl's; ``from confluent_kafka import
Producer`` then works unchanged, and a submodule (``confluent_kafka.admin``) still imports.
Only the extension process does this: a handler's ``import confluent_kafka`` is untouched.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

PACKAGE = "confluent_kafka"


def import_core(name: str = PACKAGE) -> ModuleType:
    """The package as imported already, else a bare one carrying cimpl's names.
    ImportError/OSError from the compiled module propagate (runtime_check names the fix)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"No module named {name!r}", name=name)
    package = importlib.util.module_from_spec(spec)  # created, not executed
    sys.modules[name] = package
    try:
        core = importlib.import_module(f"{name}.cimpl")
    except BaseException:
        del sys.modules[name]
        raise
    for attr, value in vars(core).items():
        if not attr.startswith("__"):
            setattr(package, attr, value)
    return package
