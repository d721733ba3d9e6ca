"""Small widgets shared by the TUI's screens."""
from .loss_curve import LossCurve, sparkline
from .messages import AssistantMessage, Citations, ErrorLine, Notice, UserMessage
from .prompt import PromptArea
from .status import Problem, TitleBar, human_bytes, human_seconds, server_url_of, workspace_of

__all__ = ["AssistantMessage", "Citations", "ErrorLine", "LossCurve", "Notice", "Problem", "PromptArea", "TitleBar",
           "UserMessage", "human_bytes", "human_seconds", "server_url_of", "sparkline", "workspace_of"]
