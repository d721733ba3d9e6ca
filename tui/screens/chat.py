"""The chat screen: talk to the served model through its OpenAI-compatible API.

Enter sends the question (Ctrl+N starts a new line; a paste keeps every line); the reply streams
in, with a waiting line that shows the elapsed time. With RAG on (Ctrl+R) the question is
answered from the workspace's documents (``rag: true``) and the reply lists its numbered sources
(``[n]`` in the answer), each expandable to its passage. Ctrl+T / Ctrl+G send thumbs up / down
(with an optional correction) on the last reply to ``/v1/feedback``. Ctrl+O picks the model (the
served version or one of its adapters, from ``/v1/models``), Ctrl+S sets this chat's parameters,
Ctrl+B asks the last question of the base and the fine-tuned model side by side. PageUp/PageDown
(Home/End with an empty prompt) scroll the conversation; sending scrolls back to the newest.
Escape stops a reply, Ctrl+L clears the conversation.

The server is never assumed to stay put: ``app.server`` (a ServerWatch) re-reads ``serve.json``
when it changes, the model list is fetched again when it does, and a request that fails with a
404 or no connection re-reads both and is retried once, so a promotion or a server restart never
leaves a stale model id behind. Requests run in thread workers (httpx, blocking) that report
through ``post_message``; nothing here blocks the UI.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from appliance.artefacts import served_name, split_served_name
from appliance.serve.client import NO_SERVER, ChatClient, ChatError, ServerInfo
from ..widgets import AssistantMessage, Citations, ErrorLine, Notice, PromptArea, UserMessage
from .dialogs import ChoiceDialog, CorrectionDialog, ParametersDialog

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
RETRY_LIST_S = 3.0  # while no model is known, ask /v1/models this often


@dataclass
class ChatParams:
    """This chat's generation parameters (Ctrl+S)."""

    temperature: float = 0.0
    max_tokens: int | None = None
    top_p: float | None = None
    system_prompt: str | None = None
    rag: bool = False
    rag_k: int | None = None

    def request(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p,
                "rag": True if self.rag else None, "rag_k": self.rag_k if self.rag else None}


@dataclass
class Served:
    """What the server offers now: the base version, then ``BASE:ADAPTER`` names."""

    url: str | None = None
    models: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def base(self) -> str | None:
        return self.models[0] if self.models else None

    def name_for(self, adapter: str | None) -> str | None:
        """The model id to send for ``adapter`` (None: the base); the base when the adapter is gone."""
        if adapter is not None and self.base is not None and served_name(self.base, adapter) in self.models:
            return served_name(self.base, adapter)
        return self.base


class ModelsListed(Message):
    """``GET /models`` answered (``served.models``) or failed (``served.error``)."""

    def __init__(self, served: Served) -> None:
        super().__init__()
        self.served = served


class ReplyChunk(Message):
    """One streamed piece of the reply ``slot`` (``turn`` for the chat, ``compare-N`` side by side)."""

    def __init__(self, slot: object, text: str, response_id: str | None, model: str | None,
                 citations: list[dict] | None) -> None:
        super().__init__()
        self.slot, self.text, self.response_id, self.model, self.citations = slot, text, response_id, model, citations


class ReplyDone(Message):
    def __init__(self, slot: object) -> None:
        super().__init__()
        self.slot = slot


class ReplyFailed(Message):
    def __init__(self, slot: object, error: str) -> None:
        super().__init__()
        self.slot, self.error = slot, error


class FeedbackSent(Message):
    def __init__(self, reply: AssistantMessage, rating: str, error: str | None, record: dict | None) -> None:
        super().__init__()
        self.reply, self.rating, self.error, self.record = reply, rating, error, record


class ChatScreen(Screen):
    """A conversation with the served model; the history is resent with each question."""

    HELP_TITLE = "Chat"
    BINDINGS = [
        Binding("escape", "stop", "Stop", tooltip="Stop the reply being streamed"),
        Binding("ctrl+r", "toggle_rag", "RAG", priority=True,
                tooltip="RAG on/off: answer from the workspace's documents, with numbered sources"),
        Binding("ctrl+o", "pick_model", "Model", priority=True,
                tooltip="Pick the model: the served version or one of its adapters"),
        Binding("ctrl+t", "feedback('up')", "Good", priority=True, tooltip="Thumbs up on the last reply"),
        Binding("ctrl+g", "feedback('down')", "Bad+fix", priority=True,
                tooltip="Thumbs down on the last reply, with an optional correction"),
        Binding("ctrl+s", "parameters", "Params", priority=True, show=False,
                tooltip="This chat's temperature, max tokens, top-p, RAG passages, system prompt"),
        Binding("ctrl+b", "compare", "Base vs tuned", priority=True, show=False,
                tooltip="The last question to the served version and an adapter, side by side"),
        Binding("ctrl+l", "clear", "Clear", priority=True, show=False, tooltip="Clear the conversation"),
        Binding("ctrl+n", "newline", "New line", show=False, tooltip="A new line in the prompt (Enter sends)"),
        Binding("pageup,pagedown", "noop", "Scroll", show=False,
                tooltip="Scroll the conversation (Home/End too while the prompt is empty)"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.served = Served()
        self.adapter: str | None = None  # the picked adapter (None: the served version itself)
        self.params = ChatParams()
        self.history: list[dict[str, str]] = []
        self.busy = False
        self._turn = 0  # bumped per question and on clear/stop: late chunks of old turns are dropped
        self._reply: AssistantMessage | None = None
        self._compare: dict[str, AssistantMessage] = {}
        self._started: float | None = None
        self._first_text: float | None = None
        self._last_list = 0.0
        self.last_question: str | None = None

    # layout -----------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static("", id="server-info", markup=False)
        yield VerticalScroll(id="conversation")
        yield Static("", id="chat-status", markup=False)
        yield PromptArea(placeholder="Ask the model: Enter sends, Ctrl+N new line", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        options = getattr(self.app, "chat_options", {})
        self.params = ChatParams(temperature=options.get("temperature") or 0.0, max_tokens=options.get("max_tokens"),
                                 system_prompt=options.get("system_prompt"), rag=self._rag_store_exists())
        self.history = self._fresh_history()
        self.conversation.anchor()
        self.prompt.focus()
        info = self.info
        if info.base_url is None:
            self._show_no_server(info)
        self._list_models()
        self.set_interval(1.0, self._watch_server)
        self.set_interval(0.1, self._tick)
        self._refresh_header()

    @property
    def conversation(self) -> VerticalScroll:
        return self.query_one("#conversation", VerticalScroll)

    @property
    def prompt(self) -> PromptArea:
        return self.query_one("#prompt", PromptArea)

    @property
    def info(self) -> ServerInfo:
        return self.app.server.current()

    @property
    def model_id(self) -> str | None:
        """The model the next question goes to."""
        return self.served.name_for(self.adapter)

    def _rag_store_exists(self) -> bool:
        rag = getattr(self.app, "workspace_root", None)
        try:
            return rag is not None and (rag / "rag").is_dir() and any((rag / "rag").iterdir())
        except OSError:
            return False

    def header_text(self) -> str:
        info = self.info
        model = self.model_id or ("…" if info.base_url else "none")
        where = (info.base_url or "no server").removeprefix("http://")
        p = self.params
        extra = f"  max {p.max_tokens}" if p.max_tokens else ""
        return (f"chat  model {model}  temperature {p.temperature:g}{extra}  RAG {'on' if p.rag else 'off'}"
                f"  server {where}")

    def _refresh_header(self) -> None:
        self.query_one("#server-info", Static).update(self.header_text())

    def _fresh_history(self) -> list[dict[str, str]]:
        prompt = self.params.system_prompt
        return [{"role": "system", "content": prompt}] if prompt else []

    def _show_no_server(self, info: ServerInfo) -> None:
        self.conversation.mount(Notice(info.problem or NO_SERVER).set_class(True, "error"))

    def palette_commands(self):
        return [
            ("Toggle RAG (answers from the documents, with sources)", "Ctrl+R", self.action_toggle_rag),
            ("Pick the model or adapter", "Ctrl+O: from /v1/models", self.action_pick_model),
            ("Chat parameters", "Ctrl+S: temperature, max tokens, top-p, system prompt", self.action_parameters),
            ("Compare base and fine-tuned", "Ctrl+B: the last question, side by side", self.action_compare),
            ("Thumbs up on the last reply", "Ctrl+T: POST /v1/feedback", lambda: self.action_feedback("up")),
            ("Thumbs down + correction", "Ctrl+G: POST /v1/feedback", lambda: self.action_feedback("down")),
            ("Clear the conversation", "Ctrl+L", self.action_clear),
        ]

    # the server and its models ------------------------------------------------
    def _watch_server(self) -> None:
        """Once a second: serve.json changed, or no model known yet -> ask /v1/models again."""
        stale = not self.served.models and time.monotonic() - self._last_list > RETRY_LIST_S
        if self.app.server.changed() or stale:
            self._list_models()

    @work(thread=True, group="models", exclusive=True, exit_on_error=False)
    def _list_models(self) -> None:
        self._last_list = time.monotonic()
        self.post_message(ModelsListed(self._fetch_models()))

    def _fetch_models(self) -> Served:
        info = self.app.server.current()
        if info.base_url is None:
            return Served(None, [], info.problem or NO_SERVER)
        try:
            return Served(info.base_url, ChatClient(info.base_url).models())
        except ChatError as exc:
            return Served(info.base_url, [], str(exc))

    @on(ModelsListed)
    def _models_listed(self, message: ModelsListed) -> None:
        before = self.model_id
        if message.served.models and not self.served.models and self.conversation.query(Notice):
            self.conversation.mount(Notice(f"connected: {message.served.url} serves {message.served.base}"))
        self.served = message.served
        if message.served.models and self.adapter is not None and self.model_id == message.served.base:
            self.notify(f"adapter {self.adapter} is not served any more: asking {self.model_id}", severity="warning")
            self.adapter = None
        if before and self.model_id and before != self.model_id:
            self.notify(f"the server now serves {self.model_id}", title="Model changed", timeout=4)
        self._refresh_header()

    # asking -----------------------------------------------------------------
    def action_noop(self) -> None:
        """PageUp/PageDown are handled by the prompt (listed for the help screen)."""

    def action_newline(self) -> None:
        self.prompt.insert("\n")

    @on(PromptArea.ScrollRequest)
    def _scroll(self, event: PromptArea.ScrollRequest) -> None:
        view = self.conversation
        if event.key == "pageup":
            view.scroll_page_up(animate=False)
        elif event.key == "pagedown":
            view.scroll_page_down(animate=False)
        elif event.key == "home":
            view.scroll_home(animate=False)
        else:
            view.scroll_end(animate=False)

    @on(PromptArea.Submitted, "#prompt")
    async def _submitted(self, event: PromptArea.Submitted) -> None:
        text = event.value.strip("\n").rstrip()
        if not text.strip():
            return
        if self.busy:
            self.notify("Still answering: wait, or press Escape to stop the reply.", severity="warning")
            return
        event.prompt.clear()
        self.last_question = text
        self.conversation.anchor()  # follow-on-send: back to the newest, and stay there while it streams
        await self.conversation.mount(UserMessage(text))
        self.history.append({"role": "user", "content": text})
        self._turn += 1
        self._start_wait()
        self._reply = AssistantMessage(self.model_id)
        self._reply.add_class("streaming")
        await self.conversation.mount(self._reply)
        self.conversation.scroll_end(animate=False)
        self._ask(self._turn, [dict(m) for m in self.history], self.adapter, self.params.request())

    def _start_wait(self) -> None:
        self.busy = True
        self._started, self._first_text = time.monotonic(), None
        self._tick()

    def _tick(self) -> None:
        status = self.query_one("#chat-status", Static)
        if not self.busy or self._started is None:
            status.display = False
            return
        elapsed = time.monotonic() - self._started
        frame = SPINNER[int(elapsed * 10) % len(SPINNER)]
        what = "streaming the reply" if self._first_text else f"waiting for {self.model_id or 'the server'}"
        status.update(f"{frame} {what}  {elapsed:.1f} s  (Escape stops)")
        status.display = True

    def waiting_text(self) -> str:
        return str(self.query_one("#chat-status", Static).render())

    @work(thread=True, exclusive=True, group="chat", exit_on_error=False)
    def _ask(self, slot: object, messages: list[dict], adapter: str | None, params: dict) -> None:
        self._stream(slot, messages, adapter, params)

    def _stream(self, slot: object, messages: list[dict], adapter: str | None, params: dict,
                model: str | None = None) -> None:
        """Stream one reply into ``slot``; on a 404 or no connection, re-read where the server is and
        what it serves, and try once more (nothing was shown yet, so nothing is repeated)."""
        worker = get_current_worker()
        for attempt in (1, 2):
            served = self.served
            if attempt == 2 or self.app.server.changed() or not served.models:
                if attempt == 2:
                    self.app.server.refresh()
                served = self._fetch_models()
                self.post_message(ModelsListed(served))
            if served.url is None:
                self.post_message(ReplyFailed(slot, served.error or NO_SERVER))
                return
            name = model if model and attempt == 1 else served.name_for(adapter)
            shown = False
            try:
                client = ChatClient(served.url)
                for piece in client.stream_reply(messages, stop_when=lambda: worker.is_cancelled, model=name,
                                                 **params):
                    shown = shown or bool(piece.text)
                    self.post_message(ReplyChunk(slot, piece.text, piece.response_id, piece.model, piece.citations))
            except ChatError as exc:
                if attempt == 1 and not shown and exc.status in (None, 404):
                    continue
                self.post_message(ReplyFailed(slot, str(exc)))
                return
            except Exception as exc:  # never let a surprise take the app down
                self.post_message(ReplyFailed(slot, f"{type(exc).__name__}: {exc}"))
                return
            self.post_message(ReplyDone(slot))
            return

    def _reply_for(self, slot: object) -> AssistantMessage | None:
        if isinstance(slot, str):
            return self._compare.get(slot)
        return self._reply if slot == self._turn else None

    @on(ReplyChunk)
    async def _chunk(self, message: ReplyChunk) -> None:
        reply = self._reply_for(message.slot)
        if reply is None:
            return
        reply.response_id = message.response_id or reply.response_id
        reply.set_model(message.model)
        if message.citations:
            reply.citations = message.citations
        if message.text:
            if reply is self._reply and self._first_text is None:
                self._first_text = time.monotonic()
            await reply.add(message.text)

    @on(ReplyDone)
    async def _done(self, message: ReplyDone) -> None:
        if isinstance(message.slot, str):
            reply = self._compare.pop(message.slot, None)
            if reply is not None:
                await reply.finish()
            return
        if message.slot != self._turn or self._reply is None:
            return
        reply = await self._end_reply()
        self.history.append({"role": "assistant", "content": reply.text})
        if reply.citations:
            await self.conversation.mount(Citations(reply.citations), after=reply)
        if not reply.text:
            await self.conversation.mount(Notice("(the model returned an empty reply)"))

    @on(ReplyFailed)
    async def _failed(self, message: ReplyFailed) -> None:
        if isinstance(message.slot, str):
            reply = self._compare.pop(message.slot, None)
            if reply is not None:
                await reply.finish()
                await reply.add(f"✗ {message.error}")
            return
        if message.slot != self._turn or self._reply is None:
            return
        reply = await self._end_reply()
        if not reply.text:
            await reply.remove()
        if self.history and self.history[-1]["role"] == "user":
            self.history.pop()  # keep user/assistant alternation for the next question
        error = message.error
        if self.params.rag and "rag" in error:
            error += "  (Ctrl+R turns RAG off)"
        await self.conversation.mount(ErrorLine(error))

    async def _end_reply(self) -> AssistantMessage:
        reply, self._reply = self._reply, None
        assert reply is not None
        await reply.finish()
        self.busy = False
        self._tick()
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
        self.workers.cancel_group(self, "compare")
        self._turn += 1
        if self._reply is not None:
            await self._end_reply()
        self._compare.clear()
        self.busy = False
        self.history = self._fresh_history()
        await self.conversation.remove_children()
        if self.info.base_url is None:
            self._show_no_server(self.info)

    def action_toggle_rag(self) -> None:
        self.params.rag = not self.params.rag
        self._refresh_header()
        self.notify(f"RAG {'on: answers cite the documents' if self.params.rag else 'off'}", timeout=2)

    def action_pick_model(self) -> None:
        if not self.served.models:
            self.notify(self.served.error or "no model listed yet", title="No models", severity="warning")
            return
        base = self.served.base
        options = [(f"{base} (the served version)", None)]
        options += [(name, split_served_name(name)[1]) for name in self.served.models[1:]]

        def picked(adapter) -> None:
            if adapter is not ChoiceDialog.CANCELLED:
                self.adapter = adapter
                self._refresh_header()
        self.app.push_screen(ChoiceDialog("Ask which model?", options), picked)

    def action_parameters(self) -> None:
        def done(params: ChatParams | None) -> None:
            if params is not None:
                changed_prompt = params.system_prompt != self.params.system_prompt
                self.params = params
                if changed_prompt:
                    self.history = [m for m in self.history if m["role"] != "system"]
                    if params.system_prompt:
                        self.history.insert(0, {"role": "system", "content": params.system_prompt})
                self._refresh_header()
        self.app.push_screen(ParametersDialog(self.params), done)

    def action_feedback(self, rating: str) -> None:
        replies = [r for r in self.query(AssistantMessage) if r.response_id and not r.has_class("streaming")
                   and r not in self._compare.values()]
        if not replies:
            self.notify("no finished reply to rate yet", severity="warning")
            return
        reply = replies[-1]
        if rating == "up":
            self._send_feedback(reply, "up", None)
            return

        def corrected(text: str | None) -> None:
            if text is not None:
                self._send_feedback(reply, "down", text.strip() or None)
        self.app.push_screen(CorrectionDialog(reply.text), corrected)

    @work(thread=True, group="feedback", exit_on_error=False)
    def _send_feedback(self, reply: AssistantMessage, rating: str, correction: str | None) -> None:
        info = self.app.server.current()
        try:
            record = ChatClient(info.base_url or "").feedback(reply.response_id or "", rating, correction)
        except ChatError as exc:
            self.post_message(FeedbackSent(reply, rating, str(exc), None))
            return
        self.post_message(FeedbackSent(reply, rating, None, record))

    @on(FeedbackSent)
    def _feedback_sent(self, message: FeedbackSent) -> None:
        if message.error:
            self.notify(message.error, title="Feedback not stored", severity="error")
            return
        message.reply.rate(message.rating)
        self.notify(f"feedback {message.record.get('id', '')} stored", timeout=3)

    async def action_compare(self) -> None:
        """The last question (or the prompt's text) to the served version and to an adapter, side by side."""
        question = self.prompt.text.strip() or self.last_question
        if not question:
            self.notify("ask something first (or type the question, then Ctrl+B)", severity="warning")
            return
        served = self.served
        adapters = [split_served_name(n)[1] for n in served.models[1:]]
        if not adapters:
            self.notify("only one model is served: serve an adapter (`appliance serve --adapter NAME=ad-ID`) "
                        "to compare the base with a fine-tune", title="Nothing to compare", severity="warning")
            return
        tuned = self.adapter if self.adapter in adapters else adapters[0]
        self.workers.cancel_group(self, "compare")
        self._turn += 1
        messages = [m for m in self._fresh_history()] + [{"role": "user", "content": question}]
        await self.conversation.mount(UserMessage(f"{question}\n(base vs {tuned}, side by side)"))
        row = Horizontal(classes="compare")
        await self.conversation.mount(row)
        self._compare = {}
        for slot, adapter in (("compare-base", None), ("compare-tuned", tuned)):
            reply = AssistantMessage(served.name_for(adapter))
            reply.add_class("streaming")
            self._compare[slot] = reply
            await row.mount(reply)
            self._ask_compare(slot, messages, adapter, self.params.request())
        self.conversation.anchor()

    @work(thread=True, group="compare", exit_on_error=False)
    def _ask_compare(self, slot: str, messages: list[dict], adapter: str | None, params: dict) -> None:
        self._stream(slot, messages, adapter, params)
