"""The chat screen: talk to the served model through its OpenAI-compatible API.

Enter sends the question; the reply streams in token by token. Escape stops a reply, Ctrl+L
clears the conversation, Ctrl+Q quits. Requests run in a thread worker (httpx, blocking) that
hands every chunk back with ``post_message``; nothing here blocks the UI.
"""
from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static
from textual.worker import get_current_worker

from appliance.serve.client import ChatClient, ChatError, ServerInfo
from ..widgets import AssistantMessage, ErrorLine, Notice, UserMessage


class ModelsListed(Message):
    """``GET /models`` answered (``model`` is the first id) or failed (``error``)."""

    def __init__(self, model: str | None, error: str | None = None) -> None:
        super().__init__()
        self.model, self.error = model, error


class ReplyChunk(Message):
    """One streamed piece of the reply to question number ``turn``."""

    def __init__(self, turn: int, text: str) -> None:
        super().__init__()
        self.turn, self.text = turn, text


class ReplyDone(Message):
    """The server sent ``data: [DONE]`` for question number ``turn``."""

    def __init__(self, turn: int) -> None:
        super().__init__()
        self.turn = turn


class ReplyFailed(Message):
    """Question number ``turn`` failed; ``error`` is the line to show."""

    def __init__(self, turn: int, error: str) -> None:
        super().__init__()
        self.turn, self.error = turn, error


class ChatScreen(Screen):
    """A conversation with the served model; the history is resent with each question."""

    BINDINGS = [
        Binding("ctrl+l", "clear", "Clear"),
        Binding("escape", "stop", "Stop reply"),
    ]

    def __init__(
        self,
        server: ServerInfo,
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__()
        self.server = server
        self.model_id: str | None = server.model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        self.history: list[dict[str, str]] = self._fresh_history()
        self.busy = False
        self._turn = 0  # bumped per question and on clear/stop: late chunks of old turns are dropped
        self._reply: AssistantMessage | None = None

    # layout -----------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(self._header_text(), id="server-info", markup=False)
        yield VerticalScroll(id="conversation")
        yield Input(placeholder="Ask the model, then Enter", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.conversation.anchor()
        self.query_one("#prompt", Input).focus()
        if self.server.base_url is None:
            self._show_no_server()
        else:
            self._list_models()

    @property
    def conversation(self) -> VerticalScroll:
        return self.query_one("#conversation", VerticalScroll)

    def _header_text(self) -> str:
        url = self.server.base_url or "no server"
        model = self.model_id or ("…" if self.server.base_url else "none")
        return f"SLM Appliance · chat   server {url}   model {model}   temperature {self.temperature:g}"

    def _refresh_header(self) -> None:
        self.query_one("#server-info", Static).update(self._header_text())

    def _fresh_history(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []

    def _show_no_server(self) -> None:
        self.conversation.mount(Notice(self.server.problem or "No server running").set_class(True, "error"))

    # the model id -----------------------------------------------------------
    @work(thread=True, group="models", exit_on_error=False)
    def _list_models(self) -> None:
        try:
            models = ChatClient(self.server.base_url or "").models()
        except ChatError as exc:
            self.post_message(ModelsListed(None, str(exc)))
            return
        self.post_message(ModelsListed(models[0] if models else None, None if models else "the server lists no model"))

    @on(ModelsListed)
    def _models_listed(self, message: ModelsListed) -> None:
        if message.model:
            self.model_id = message.model
        elif message.error and not self.model_id:
            self.notify(message.error, title="Cannot list models", severity="warning")
        self._refresh_header()

    # asking -----------------------------------------------------------------
    @on(Input.Submitted, "#prompt")
    async def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.busy:
            self.notify("Still answering: wait, or press Escape to stop the reply.", severity="warning")
            return
        event.input.clear()
        await self.conversation.mount(UserMessage(text))
        if self.server.base_url is None:
            await self.conversation.mount(ErrorLine(self.server.problem or "No server running"))
            return
        self.history.append({"role": "user", "content": text})
        self._turn += 1
        self.busy = True
        self._reply = AssistantMessage(self.model_id)
        self._reply.add_class("streaming")
        await self.conversation.mount(self._reply)
        self._ask(self._turn, [dict(m) for m in self.history])

    @work(thread=True, exclusive=True, group="chat", exit_on_error=False)
    def _ask(self, turn: int, messages: list[dict[str, str]]) -> None:
        worker = get_current_worker()
        client = ChatClient(self.server.base_url or "")
        model = self.model_id
        try:
            if model is None:
                try:
                    model = next(iter(client.models()), None)
                except ChatError:
                    pass  # the chat request below reports what is wrong
            params = {"model": model, "temperature": self.temperature, "max_tokens": self.max_tokens}
            for chunk in client.stream_chat(messages, stop_when=lambda: worker.is_cancelled, **params):
                self.post_message(ReplyChunk(turn, chunk))
        except ChatError as exc:
            self.post_message(ReplyFailed(turn, str(exc)))
        except Exception as exc:  # never let a surprise take the app down
            self.post_message(ReplyFailed(turn, f"{type(exc).__name__}: {exc}"))
        else:
            self.post_message(ReplyDone(turn))

    @on(ReplyChunk)
    async def _chunk(self, message: ReplyChunk) -> None:
        if message.turn == self._turn and self._reply is not None:
            await self._reply.add(message.text)

    @on(ReplyDone)
    async def _done(self, message: ReplyDone) -> None:
        if message.turn != self._turn or self._reply is None:
            return
        reply = await self._end_reply()
        self.history.append({"role": "assistant", "content": reply.text})
        if not reply.text:
            await self.conversation.mount(Notice("(the model returned an empty reply)"))

    @on(ReplyFailed)
    async def _failed(self, message: ReplyFailed) -> None:
        if message.turn != self._turn or self._reply is None:
            return
        reply = await self._end_reply()
        if not reply.text:
            await reply.remove()
        if self.history and self.history[-1]["role"] == "user":
            self.history.pop()  # keep user/assistant alternation for the next question
        await self.conversation.mount(ErrorLine(message.error))

    async def _end_reply(self) -> AssistantMessage:
        reply, self._reply = self._reply, None
        assert reply is not None
        await reply.finish()
        self.busy = False
        return reply

    # keys -------------------------------------------------------------------
    async def action_stop(self) -> None:
        """Stop the reply being streamed; what arrived so far stays in the history."""
        if not self.busy or self._reply is None:
            return
        self.workers.cancel_group(self, "chat")
        self._turn += 1
        reply = await self._end_reply()
        self.history.append({"role": "assistant", "content": reply.text})
        await self.conversation.mount(Notice("(reply stopped)"))

    async def action_clear(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.workers.cancel_group(self, "chat")
        self._turn += 1
        if self._reply is not None:
            await self._end_reply()
        self.busy = False
        self.history = self._fresh_history()
        await self.conversation.remove_children()
        if self.server.base_url is None:
            self._show_no_server()
