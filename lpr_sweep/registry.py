"""Named plug-ins (runtimes, quant backends), each registered by the module that defines it.

A name is looked up in the registry; when absent, its module is imported first: the configured
module, else ``<package>.<name>``. So a plug-in needs no central list: its module registers it.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from lpr_sweep import ConfigError


class Registry:
    def __init__(self, kind: str, package: str, path: list[str]):
        self.kind, self.package, self.path = kind, package, path  # kind is the config key, e.g. "runtime"
        self.entries: dict[str, Any] = {}

    def add(self, name: str, entry: Any) -> Any:
        if name in self.entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self.entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """Every one the package ships, and any registered from elsewhere."""
        return sorted({*(m.name for m in pkgutil.iter_modules(self.path)), *self.entries})

    def get(self, name: str, module: str = "") -> Any:
        if name not in self.entries:
            module = module or f"{self.package}.{name}"
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:
                parts = module.split(".")
                if e.name not in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
                    raise  # the module exists but needs a package that is missing: that is the error to show
            if name not in self.entries:
                raise ConfigError(f"{self.kind}={name!r} is unknown; choose one of {self.names()}")
        return self.entries[name]
