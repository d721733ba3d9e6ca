"""The SLM Appliance terminal UI (Textual): `appliance tui`. The library never imports this."""
