"""Import the matching core from its ``.py`` sources even where compiled modules exist.

``install()`` puts a finder first on ``sys.meta_path`` that resolves
``trading_system.matching.core.*`` to the source files, so one process can run the
interpreted build next to a compiled one in another (see test_builds_agree.py). With
``TS_MATCHING_CORE=pure`` in the environment, tests/conftest.py installs it for a whole
pytest run, which is how the test command runs the core's tests against both builds.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PREFIX = "trading_system.matching.core."


class _SourceOnly(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PREFIX) or path is None:
            return None
        name = fullname.rsplit(".", 1)[1]
        for entry in path:
            source = Path(entry) / f"{name}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def install() -> None:
    if PREFIX.rstrip(".") in sys.modules:
        raise RuntimeError("the matching core was imported before the source-only finder")
    if not any(isinstance(f, _SourceOnly) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceOnly())
