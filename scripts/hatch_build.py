"""Hatch build hook: an editable install imports the repository's ``tui/`` folder as ``appliance_tui``.

The wheel renames ``tui/`` to ``appliance_tui`` with ``[tool.hatch.build.targets.wheel.sources]``
(the repository layout keeps ``tui/``; a top-level package named ``tui`` would clash with any
other). Hatchling's editable builds refuse a rename (editables issue 20), so the project sets
``dev-mode-dirs = ["."]`` (the repository root on ``sys.path``, as before) and this hook adds to
the editable wheel a ``.pth`` plus a ten-line import finder that maps the one name
``appliance_tui`` onto ``<repo>/tui``: edits to ``tui/`` show at once, as with any editable
install, and ``appliance tui`` finds its entry point (``appliance_tui.app:main``) either way.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGE = "appliance_tui"
FINDER = '''"""Editable install of slm-appliance: import {package} from {folder} (scripts/hatch_build.py)."""
import importlib.util
import sys

FOLDER = {folder!r}


class _Finder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != {package!r}:
            return None
        return importlib.util.spec_from_file_location(name, FOLDER + "/__init__.py", submodule_search_locations=[FOLDER])


sys.meta_path.append(_Finder)
'''


class EditableTuiAlias(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if version != "editable":
            return
        self._scratch = Path(tempfile.mkdtemp(prefix="slm-appliance-editable-"))
        finder = self._scratch / f"_{PACKAGE}_editable.py"
        finder.write_text(FINDER.format(package=PACKAGE, folder=str(Path(self.root) / "tui")), encoding="utf-8")
        pth = self._scratch / f"_{PACKAGE}_editable.pth"
        pth.write_text(f"import _{PACKAGE}_editable\n", encoding="utf-8")
        # force_include_editable replaces the configured force-include in editable builds: keep both
        build_data["force_include_editable"] = {
            **self.build_config.get_force_include(), str(finder): finder.name, str(pth): pth.name}

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        if version == "editable":
            shutil.rmtree(self._scratch, ignore_errors=True)
