"""Small modal dialogs: pick one of a list, confirm an action, a correction, chat parameters.

Each is keyboard-first (Enter chooses or confirms, Escape cancels) and returns its answer through
``dismiss`` (``push_screen(dialog, callback)``).
"""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option


class ChoiceDialog(ModalScreen):
    """One of ``options`` ((label, value) pairs); Escape answers :attr:`CANCELLED`."""

    CANCELLED = object()
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, options: list[tuple[str, object]], detail: str = "") -> None:
        super().__init__(classes="dialog")
        self.title_text, self.options, self.detail = title, options, detail

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-body"):
            yield Static(self.title_text, classes="dialog-title", markup=False)
            if self.detail:
                yield Static(self.detail, classes="dialog-detail", markup=False)
            yield OptionList(*(Option(Content(label), id=str(i)) for i, (label, _) in enumerate(self.options)),
                             id="choices")
            yield Static("Enter chooses, Escape cancels", classes="dialog-hint", markup=False)

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.options[int(event.option.id or 0)][1])

    def action_cancel(self) -> None:
        self.dismiss(self.CANCELLED)


class ConfirmDialog(ModalScreen):
    """``text`` and Yes / No: answers True or False (Escape, N: False; Y, Enter on Yes: True)."""

    BINDINGS = [Binding("escape,n", "answer(False)", "No"), Binding("y", "answer(True)", "Yes")]

    def __init__(self, title: str, text: str, yes: str = "Yes") -> None:
        super().__init__(classes="dialog")
        self.title_text, self.text, self.yes = title, text, yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-body"):
            yield Static(self.title_text, classes="dialog-title", markup=False)
            yield Static(self.text, classes="dialog-detail", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(Content(f"{self.yes} (y)"), id="yes", variant="primary")
                yield Button(Content("No (n, Escape)"), id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # the safe answer is the default

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class CorrectionDialog(ModalScreen):
    """Thumbs down: an optional correction (the right answer). Ctrl+S sends, Escape cancels (None)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "send", "Send", priority=True)]

    def __init__(self, answer: str) -> None:
        super().__init__(classes="dialog")
        self.answer = answer

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-body"):
            yield Static("Thumbs down: what should the answer have been? (optional)", classes="dialog-title",
                         markup=False)
            yield Static(f"The model said: {self.answer[:300]}", classes="dialog-detail", markup=False)
            yield TextArea(id="correction", soft_wrap=True, compact=True)
            yield Static("Ctrl+S sends the rating (with the correction, if any), Escape cancels",
                         classes="dialog-hint", markup=False)

    def on_mount(self) -> None:
        self.query_one("#correction", TextArea).focus()

    def action_send(self) -> None:
        self.dismiss(self.query_one("#correction", TextArea).text)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ParametersDialog(ModalScreen):
    """This chat's parameters; Enter in a field or Ctrl+S applies, Escape cancels (None)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "apply", "Apply", priority=True)]
    FIELDS = (("temperature", "temperature (0 = greedy)"), ("max_tokens", "max tokens (empty: the server's)"),
              ("top_p", "top-p (empty: the server's)"), ("rag_k", "passages per RAG answer (empty: default)"),
              ("system_prompt", "system prompt (empty: none)"))

    def __init__(self, params) -> None:
        super().__init__(classes="dialog")
        self.params = params

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-body"):
            yield Static("Chat parameters (this conversation only)", classes="dialog-title", markup=False)
            for name, label in self.FIELDS:
                value = getattr(self.params, name)
                yield Label(Content(label))
                yield Input("" if value is None else str(value), id=f"param-{name}", compact=True)
            yield Static("", id="param-error", classes="error-text", markup=False)
            yield Static("Enter or Ctrl+S applies, Escape cancels", classes="dialog-hint", markup=False)

    def on_mount(self) -> None:
        self.query_one("#param-temperature", Input).focus()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_apply()

    def action_apply(self) -> None:
        from dataclasses import replace

        values = {name: self.query_one(f"#param-{name}", Input).value.strip() for name, _ in self.FIELDS}
        try:
            temperature = float(values["temperature"] or 0)
            max_tokens = int(values["max_tokens"]) if values["max_tokens"] else None
            top_p = float(values["top_p"]) if values["top_p"] else None
            rag_k = int(values["rag_k"]) if values["rag_k"] else None
            if not 0 <= temperature <= 2:
                raise ValueError("temperature must be between 0 and 2")
            if max_tokens is not None and max_tokens < 1:
                raise ValueError("max tokens must be at least 1")
            if top_p is not None and not 0 < top_p <= 1:
                raise ValueError("top-p must be in (0, 1]")
            if rag_k is not None and not 1 <= rag_k <= 20:
                raise ValueError("passages per RAG answer must be 1 to 20")
        except ValueError as exc:
            self.query_one("#param-error", Static).update(f"✗ {exc}")
            return
        self.dismiss(replace(self.params, temperature=temperature, max_tokens=max_tokens, top_p=top_p, rag_k=rag_k,
                             system_prompt=values["system_prompt"] or None))

    def action_cancel(self) -> None:
        self.dismiss(None)
