"""Small widgets shared by the TUI's screens."""
from .messages import AssistantMessage, ErrorLine, Notice, UserMessage

__all__ = ["AssistantMessage", "ErrorLine", "Notice", "UserMessage"]
