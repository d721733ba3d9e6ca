"""The chat prompt: multi-line (a pasted ticket keeps every line), Enter sends.

Enter sends the text; Ctrl+N (or Shift+Enter where the terminal reports it) starts a new line;
a paste is inserted whole. PageUp/PageDown always scroll the conversation above, and Home/End
do too while the prompt is empty (with text in it they move within the line, as in any editor).
"""
from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea

SCROLL_KEYS = ("pageup", "pagedown")
SCROLL_KEYS_WHEN_EMPTY = ("home", "end")


class PromptArea(TextArea):
    """A TextArea whose Enter submits and whose scroll keys scroll the conversation."""

    class Submitted(Message):
        def __init__(self, prompt: "PromptArea", value: str) -> None:
            super().__init__()
            self.prompt, self.value = prompt, value

        @property
        def control(self) -> "PromptArea":
            return self.prompt

    class ScrollRequest(Message):
        """The operator pressed a scroll key in the prompt: ``key`` is pageup/pagedown/home/end."""

        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    def __init__(self, placeholder: str = "", **kwargs) -> None:
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False, compact=True,
                         highlight_cursor_line=False,
                         placeholder=placeholder, **kwargs)

    @property
    def value(self) -> str:
        return self.text

    def clear(self) -> None:  # type: ignore[override]
        self.load_text("")

    async def _on_key(self, event: events.Key) -> None:
        key = event.key
        if key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self, self.text))
            return
        if key in ("ctrl+n", "shift+enter", "ctrl+j"):
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        if key in SCROLL_KEYS or (key in SCROLL_KEYS_WHEN_EMPTY and not self.text):
            event.stop()
            event.prevent_default()
            self.post_message(self.ScrollRequest(key))
            return
        await super()._on_key(event)
