"""Load transformers' own common model tests (``ModelTesterMixin``, ``ConfigTester``) from its source distribution.

The wheel of transformers ships no tests; its sdist on PyPI ships ``tests/test_modeling_common.py`` and
``tests/test_configuration_common.py`` (but not the rest of the test tree they import from). Rather than vendoring
those 7000+ lines, this module extracts the two files from the sdist at import time into a private temporary
package, replaces the few missing relative imports with stubs, and imports it.

Where the sdist is looked for, in order:

1. ``$VAEMOTION_TRANSFORMERS_SDIST`` (a path to ``transformers-<version>.tar.gz``);
2. ``~/.cache/vaemotion/transformers-<version>.tar.gz`` (``$XDG_CACHE_HOME`` is honoured), where
   ``scripts/fetch_transformers_tests.sh`` puts it.

``<version>`` is the installed transformers version: the common tests exercise library internals, so they must come
from exactly the release we run against. When the sdist is absent, ``load()`` returns ``None`` and ``SKIP_REASON``
says how to fetch it; test modules then skip themselves (they never fail for a missing download).
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import transformers


TRANSFORMERS_VERSION = transformers.__version__
SDIST_ENV_VAR = "VAEMOTION_TRANSFORMERS_SDIST"
FETCH_COMMAND = "scripts/fetch_transformers_tests.sh"
PACKAGE_NAME = "_vaemotion_transformers_tests"  # private name, so it can never shadow a real `tests` package
MEMBERS = ("tests/test_modeling_common.py", "tests/test_configuration_common.py")

# Modules that the two files import relatively but that the sdist does not contain. They only provide optional
# mixins or data that our tests do not use; each stub says why it is safe.
STUBS = {
    "exporters/test_export.py": '''"""Stub: the sdist ships no tests/exporters/. ModelTesterMixin inherits ExportTesterMixin, whose torch.export
tests are therefore absent (VAEmotion composes three towers with data-dependent scatter; export is not a goal)."""


class ExportTesterMixin:
    pass
''',
    "generation/test_utils.py": '''"""Stub: the sdist ships no tests/generation/. GenerationTesterMixin is imported but not used by ModelTesterMixin
itself; VAEmotion's generation is tested in tests/test_modeling.py."""


class GenerationTesterMixin:
    pass
''',
    "utils/test_configuration_utils.py": '''"""Stub: the sdist ships no tests/utils/. ``config_common_kwargs`` is read only by
ConfigTester.check_config_arguments_init, which returns early for composite configs such as VAEmotionConfig."""

config_common_kwargs = {}
''',
}


def default_sdist_path() -> Path:
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "vaemotion" / f"transformers-{TRANSFORMERS_VERSION}.tar.gz"


def find_sdist() -> Path | None:
    """The sdist to read, or None. An explicitly set but missing ``$VAEMOTION_TRANSFORMERS_SDIST`` counts as absent."""
    configured = os.environ.get(SDIST_ENV_VAR)
    path = Path(configured).expanduser() if configured else default_sdist_path()
    return path if path.is_file() else None


SKIP_REASON = (
    f"transformers {TRANSFORMERS_VERSION} source distribution not found (set ${SDIST_ENV_VAR} or put it at "
    f"{default_sdist_path()}); fetch it with `{FETCH_COMMAND}` (pip download --no-deps --no-binary :all: "
    f"transformers=={TRANSFORMERS_VERSION})"
)


def _extract(sdist: Path, destination: Path) -> None:
    package = destination / PACKAGE_NAME
    package.mkdir(parents=True)
    # Empty on purpose: ConfigTester's module executes `<its dir>/__init__.py` via direct_transformers_import.
    (package / "__init__.py").write_text("")
    with tarfile.open(sdist) as archive:
        by_suffix = {}
        for member in archive.getmembers():
            for wanted in MEMBERS:
                # Members are `transformers-<version>/tests/...`; match on the path inside the project.
                if member.isfile() and member.name.split("/", 1)[-1] == wanted:
                    by_suffix[wanted] = member
        missing = [name for name in MEMBERS if name not in by_suffix]
        if missing:
            raise RuntimeError(f"{sdist} does not contain {missing}: is it a transformers sdist?")
        for wanted, member in by_suffix.items():
            source = archive.extractfile(member)
            (package / Path(wanted).name).write_bytes(source.read())
    for relative, text in STUBS.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)


_loaded: ModuleType | None = None


def load() -> ModuleType | None:
    """The extracted test package (with ``test_modeling_common`` and ``test_configuration_common`` imported), or
    None when the sdist is absent. Extracted once per process into a temporary directory removed at exit."""
    global _loaded
    if _loaded is not None:
        return _loaded
    sdist = find_sdist()
    if sdist is None:
        return None
    destination = Path(tempfile.mkdtemp(prefix="vaemotion-transformers-tests-"))
    atexit.register(shutil.rmtree, destination, ignore_errors=True)
    _extract(sdist, destination)
    sys.path.insert(0, str(destination))
    try:
        with warnings.catch_warnings():
            # The file marks tests with transformers' own pytest marks (flash_attn_test, ...), unknown here.
            warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
            package = importlib.import_module(PACKAGE_NAME)
            package.test_modeling_common = importlib.import_module(f"{PACKAGE_NAME}.test_modeling_common")
            package.test_configuration_common = importlib.import_module(f"{PACKAGE_NAME}.test_configuration_common")
    finally:
        sys.path.remove(str(destination))
    _loaded = package
    return package
