"""The TUI's screens; each one is a front end to public functions of `appliance`."""
from tui.screens.chat import ChatScreen
from tui.screens.models import ModelsScreen

__all__ = ["ChatScreen", "ModelsScreen"]
