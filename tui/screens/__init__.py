"""The TUI's screens; each one is a front end to public functions of `appliance`."""
from tui.screens.chat import ChatScreen

__all__ = ["ChatScreen"]
