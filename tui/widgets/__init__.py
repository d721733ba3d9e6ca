"""Small widgets shared by the TUI's screens."""
from .loss_curve import LossCurve, sparkline
from .messages import AssistantMessage, ErrorLine, Notice, UserMessage
from .status import Problem, TitleBar, human_bytes, human_seconds, server_url_of, workspace_of

__all__ = ["AssistantMessage", "ErrorLine", "LossCurve", "Notice", "Problem", "TitleBar", "UserMessage",
           "human_bytes", "human_seconds", "server_url_of", "sparkline", "workspace_of"]
