"""Small widgets shared by the TUI's screens."""
from tui.widgets.messages import AssistantMessage, ErrorLine, Notice, UserMessage

__all__ = ["AssistantMessage", "ErrorLine", "Notice", "UserMessage"]
