"""The extension loads confluent-kafka's compiled core without the package's asyncio-heavy
``__init__``; the names it uses are cimpl's own, so isinstance checks agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kafka_relay.producer.core_import import import_core

EXTENSION = Path(__file__).resolve().parents[2] / "extension"


def _run(code: str, *, isolated: bool = False) -> str:
    """Run ``code`` in a fresh interpreter (isolated: stdlib and kafka_relay only)."""
    if isolated:
        code = f"import sys\nsys.path.insert(0, {str(EXTENSION)!r})\n" + code
    argv = [sys.executable, *(["-I", "-S"] if isolated else []), "-c", code]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(EXTENSION)}).stdout


def test_the_core_loads_without_asyncio_and_exports_cimpl_names() -> None:
    out = _run(
        "import sys\n"
        "from kafka_relay.producer.core_import import import_core\n"
        "package = import_core()\n"
        "from confluent_kafka import KafkaError, KafkaException, Producer\n"
        "import confluent_kafka.cimpl as cimpl\n"
        "import confluent_kafka.admin  # what Producer.list_topics() loads\n"
        "print('asyncio' in sys.modules, Producer is cimpl.Producer,\n"
        "      KafkaError is cimpl.KafkaError, KafkaException is cimpl.KafkaException,\n"
        "      sys.modules['confluent_kafka'] is package,\n"
        "      confluent_kafka.admin.ClusterMetadata.__name__)\n")
    assert out.split() == ["False", "True", "True", "True", "True", "ClusterMetadata"]


def test_the_model_types_load_when_first_asked_for_and_cimpl_names_win() -> None:
    out = _run(
        "import sys\n"
        "from kafka_relay.producer.core_import import import_core\n"
        "package = import_core()\n"
        "import confluent_kafka.cimpl as cimpl\n"
        "print('confluent_kafka._model' in sys.modules)\n"
        "from confluent_kafka import TopicCollection, TopicPartition\n"
        "print('confluent_kafka._model' in sys.modules, TopicCollection.__module__,\n"
        "      TopicPartition is cimpl.TopicPartition, hasattr(package, 'NoSuchName'))\n")
    assert out.split() == ["False", "True", "confluent_kafka._model", "True", "False"]


def test_the_admin_package_carries_the_metadata_classes_until_another_name_is_asked_for(
) -> None:
    out = _run(
        "import sys\n"
        "from kafka_relay.producer.core_import import import_core\n"
        "import_core()\n"
        "import confluent_kafka.admin as admin\n"
        "from confluent_kafka.admin import _metadata\n"
        "print(admin.TopicMetadata is _metadata.TopicMetadata,\n"
        "      'concurrent.futures' in sys.modules)\n"
        "from confluent_kafka.admin import AdminClient, ConfigResource\n"
        "print(AdminClient.__module__, ConfigResource.__name__,\n"
        "      'concurrent.futures' in sys.modules, hasattr(admin, 'NoSuchName'))\n")
    assert out.split() == ["True", "False", "confluent_kafka.admin", "ConfigResource", "True",
                           "False"]


def test_a_package_already_imported_is_returned_as_it_is() -> None:
    import confluent_kafka  # noqa: PLC0415

    assert import_core() is confluent_kafka


def test_a_missing_package_is_an_import_error() -> None:
    out = _run(  # -I -S: no site-packages, so no confluent_kafka
        "import sys\n"
        "from kafka_relay.producer.core_import import import_core\n"
        "try:\n"
        "    import_core()\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, 'confluent_kafka' in sys.modules)\n", isolated=True)
    assert out.split() == ["ImportError", "False"]


def test_a_core_that_cannot_load_unregisters_the_bare_package(tmp_path: Path) -> None:
    package = tmp_path / "confluent_kafka"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('the package init ran')\n")
    (package / "_model.py").write_text("")
    (package / "cimpl.py").write_text("raise ImportError('wrong glibc')\n")
    out = _run(
        f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n"
        "from kafka_relay.producer.core_import import import_core\n"
        "try:\n"
        "    import_core()\n"
        "except ImportError as exc:\n"
        "    print(exc, [m for m in sys.modules if m.startswith('confluent_kafka')])\n",
        isolated=True)
    assert out.strip() == "wrong glibc []"
