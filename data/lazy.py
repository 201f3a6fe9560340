"""Package-root exports resolved on first use (PEP 562), so importing a package stays cheap.

``python -m data.convert`` imports ``data/__init__`` first: importing the loaders there
eagerly would pull in torch and torchvision (about 3 s) before Spark even starts.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable[[str], Any],
                                                                 Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to
    the module that defines it; the first access imports that module and caches the object."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return sorted(exports), __getattr__, __dir__
