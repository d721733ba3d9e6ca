"""The pieces of a conversation: the operator's turn, the model's (growing) reply, error lines.

Text from the operator and from the server is never read as Rich markup: a ``[`` in a question
must show as itself.
"""
from __future__ import annotations

from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream


class UserMessage(Static):
    """What the operator asked."""

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False, classes="message")
        self.text = text
        self.border_title = "you"


class AssistantMessage(Markdown):
    """The model's reply, rendered as Markdown and grown chunk by chunk while it streams."""

    def __init__(self, model: str | None = None) -> None:
        super().__init__("", classes="message")
        self.text = ""  # everything received so far, exactly as the server sent it
        self.border_title = model or "assistant"
        self._stream: MarkdownStream | None = None

    async def add(self, chunk: str) -> None:
        """Append one streamed chunk (updates are batched when chunks come faster than redraws)."""
        if self._stream is None:
            self._stream = Markdown.get_stream(self)
        self.text += chunk
        await self._stream.write(chunk)

    async def finish(self) -> None:
        """Flush what is still queued; after this ``self.source == self.text``."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.remove_class("streaming")


class ErrorLine(Static):
    """A request that failed, shown in the conversation instead of a reply."""

    def __init__(self, text: str) -> None:
        super().__init__(f"✗ {text}", markup=False)
        self.text = text


class Notice(Static):
    """A line from the app itself (no server, conversation cleared, ...)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False)
        self.text = text
