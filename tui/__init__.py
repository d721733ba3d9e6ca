"""The SLM Appliance terminal UI (Textual): `appliance tui`. The library never imports this.

The repository folder is ``tui/``; installed, the package is ``appliance_tui`` (pyproject.toml),
so its modules import each other relatively. `appliance tui` reaches ``appliance_tui.app:main``
through the ``slm_appliance.frontends`` entry point.
"""
