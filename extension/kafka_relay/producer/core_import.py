"""Load confluent-kafka's compiled core without the package's ``__init__``.

The package ``__init__`` imports its consumers' serde helpers, which import ``asyncio``:
~35 ms of CPU before the extension is ready, for code a producer never runs. The extension
process uses only what ``cimpl`` defines (``Producer``, ``KafkaError``, ``KafkaException``),
so it registers a bare package carrying the names of ``cimpl``; ``from confluent_kafka import
Producer`` then works unchanged, and the first name it lacks loads ``_model``'s (the admin
and consumer types the package's own submodules import from it; ~2 ms). ``list_topics()``
(the init probe) builds its answer from ``confluent_kafka.admin``'s metadata classes: that
package is registered bare too, with those classes only (its ``__init__`` loads every admin
type and ``concurrent.futures``, ~4 ms), and runs its ``__init__`` in place the first time
any other name is asked for. Only the extension process does this: a handler's ``import
confluent_kafka`` is untouched.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import ModuleType

PACKAGE = "confluent_kafka"
ADMIN = f"{PACKAGE}.admin"


def import_core() -> ModuleType:
    """The package as imported already, else a bare one carrying its core's names.
    ImportError/OSError from the compiled module propagate (runtime_check names the fix)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"No module named {PACKAGE!r}", name=PACKAGE)
    package = _bare(spec)
    try:
        # Submodules of the bare package: its __init__ does not run.
        from confluent_kafka import cimpl  # noqa: PLC0415
    except BaseException:
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]
        raise
    _carry(package, cimpl)

    def model() -> None:
        from confluent_kafka import _model  # noqa: PLC0415

        _carry(package, _model, keep=True)  # cimpl's names win, as in the package's order

    _complete_on_demand(package, model)
    _bare_admin()
    return package


def _bare(spec: ModuleSpec) -> ModuleType:
    """The package of ``spec`` created and registered, its ``__init__`` not run."""
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    parent, _, child = spec.name.rpartition(".")
    if parent:  # as the import system does for a submodule
        setattr(sys.modules[parent], child, module)
    return module


def _carry(package: ModuleType, module: ModuleType, *, keep: bool = False) -> None:
    """``module``'s public names on ``package`` (``keep``: not over names it has)."""
    for attr, value in vars(module).items():
        if not attr.startswith("_") and not (keep and hasattr(package, attr)):
            setattr(package, attr, value)


def _complete_on_demand(module: ModuleType, complete: Callable[[], None]) -> None:
    """The first name ``module`` lacks runs ``complete`` (once), then is looked up again."""

    def lacking(name: str) -> object:
        del module.__getattr__
        complete()
        return getattr(module, name)

    module.__getattr__ = lacking  # type: ignore[method-assign]  # PEP 562


def _bare_admin() -> None:
    """``confluent_kafka.admin`` with the classes ``list_topics()`` returns; its ``__init__``
    runs (in place) when another name is first asked for."""
    spec = importlib.util.find_spec(ADMIN)
    if spec is None or spec.loader is None:
        return  # list_topics() will say so, as it would have
    loader = spec.loader
    admin = _bare(spec)
    from confluent_kafka.admin import _metadata  # noqa: PLC0415

    _carry(admin, _metadata)
    _complete_on_demand(admin, lambda: loader.exec_module(admin))
