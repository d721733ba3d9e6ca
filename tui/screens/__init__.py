"""The TUI's screens; each one is a front end to public functions of `appliance`."""
from .chat import ChatScreen
from .models import ModelsScreen

__all__ = ["ChatScreen", "ModelsScreen"]
