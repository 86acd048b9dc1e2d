"""Names a package exports without importing their modules until first use (PEP 562)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps each name to ``"module"`` or ``"module:attribute"``,
    the module relative to the package (``".harness"``) or absolute.

    >>> getattr_, dir_ = lazy_exports("vaemotion", {"load_artemo": ".benchmark.artemo", "fit": ".demo:run_demo"})
    >>> getattr_("fit").__name__, "load_artemo" in dir_()
    ('run_demo', True)
    """

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = exports[name].partition(":")
        return getattr(importlib.import_module(module, package), attribute or name)

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
