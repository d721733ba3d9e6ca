"""The pieces of a conversation: the operator's turn, the model's (growing) reply, citations, errors.

Text from the operator and from the server is never read as Rich markup: a ``[`` in a question
must show as itself.
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Collapsible, Markdown, Static
from textual.widgets.markdown import MarkdownStream

RATING_MARKS = {"up": "+1", "down": "-1"}


class UserMessage(Static):
    """What the operator asked (every line of it)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False, classes="message")
        self.text = text
        self.border_title = "you"


class AssistantMessage(Markdown):
    """The model's reply, rendered as Markdown and grown chunk by chunk while it streams.

    ``response_id`` is the server's id for it (``chatcmpl-...``), what feedback refers to;
    ``model`` the model that answered; ``rating`` the feedback already sent (``up``/``down``)."""

    def __init__(self, model: str | None = None) -> None:
        super().__init__("", classes="message")
        self.text = ""  # everything received so far, exactly as the server sent it
        self.model = model
        self.response_id: str | None = None
        self.rating: str | None = None
        self.citations: list[dict] = []
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

    def set_model(self, model: str | None) -> None:
        if model and model != self.model:
            self.model = model
            self.border_title = model

    def rate(self, rating: str) -> None:
        self.rating = rating
        self.border_subtitle = f"feedback {RATING_MARKS.get(rating, rating)} sent"


class Citations(Vertical):
    """The numbered sources of a RAG answer: ``[n] source § section``, each expandable to its passage.

    ``[n]`` in the answer is citation ``n`` (the server's ``citations[n-1]``)."""

    def __init__(self, citations: list[dict]) -> None:
        super().__init__(classes="citations")
        self.citations = citations

    @staticmethod
    def label(citation: dict, n: int) -> str:
        index = citation.get("index", n)
        where = str(citation.get("source") or "?")
        section = citation.get("section") or citation.get("title")
        if section:
            where += f" § {section}"
        return f"[{index}] {where}"

    def compose(self) -> ComposeResult:
        yield Static(f"sources ({len(self.citations)}), Enter on one shows its passage", classes="citations-title",
                     markup=False)
        for n, citation in enumerate(self.citations, 1):
            with Collapsible(title=Content(self.label(citation, n)), collapsed=True, classes="citation"):
                yield Static(str(citation.get("text") or ""), markup=False, classes="passage")


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
