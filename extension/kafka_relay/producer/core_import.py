"""Load confluent-kafka's compiled core without the package's ``__init__``.

The package ``__init__`` imports its consumers' serde helpers, which import ``asyncio``:
~10 ms of CPU before the extension is ready, for code a producer never runs. The extension
process uses only what ``cimpl`` defines (``Producer``, ``KafkaError``, ``KafkaException``),
so it registers a bare package carrying the names of ``cimpl`` and ``_model`` (what the
package's own submodules import from it: ``list_topics`` loads ``confluent_kafka.admin``);
``from confluent_kafka import Producer`` then works unchanged.
Only the extension process does this: a handler's ``import confluent_kafka`` is untouched.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

PACKAGE = "confluent_kafka"
#: The package's modules whose names the bare package carries, in the package's order.
CORE_MODULES = ("_model", "cimpl")


def import_core(name: str = PACKAGE, modules: tuple[str, ...] = CORE_MODULES) -> ModuleType:
    """The package as imported already, else a bare one carrying ``modules``' names.
    ImportError/OSError from the compiled module propagate (runtime_check names the fix)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"No module named {name!r}", name=name)
    package = importlib.util.module_from_spec(spec)  # created, not executed
    sys.modules[name] = package
    try:
        cores = [importlib.import_module(f"{name}.{module}") for module in modules]
    except BaseException:
        for loaded in [name, *(f"{name}.{module}" for module in modules)]:
            sys.modules.pop(loaded, None)
        raise
    for core in cores:
        for attr, value in vars(core).items():
            if not attr.startswith("_"):
                setattr(package, attr, value)
    return package
