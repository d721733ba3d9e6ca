"""Small widgets shared by the TUI's screens."""
from .messages import AssistantMessage, Citations, ErrorLine, Notice, UserMessage
from .prompt import PromptArea

__all__ = ["AssistantMessage", "Citations", "ErrorLine", "Notice", "PromptArea", "UserMessage"]
