"""Whole answers are redacted as one text: the server's non-stream responses and `appliance ask`.

The server runs in-process over the scripted engine of test_serve_api.py (it replies with the
text after ``say:`` in 3-character chunks). RAG citations through the real server and store are
checked in tests/integration/test_pii_sweep.py. About 1 s.
"""
from __future__ import annotations

from appliance.ask import redact_answer
from appliance.rag.answer import Answer, format_answer
from appliance.rag.store import Hit
from tests.unit.test_serve_api import chat, log_lines, make  # noqa: F401  (make: the fixture)

SECRET = "jane.doe.with.a.rather.long.local.part@accounts.example-company.org"
IBAN = "GB82WEST12345698765432"
# 192 characters without a space, then a value longer than the old 48-character hold window
REPLY = f"Write to {'=' * 200}{SECRET} or pay {'-' * 200}{IBAN} today."


def test_non_stream_answers_are_redacted_whole(make):  # noqa: F811 - the imported fixture
    ws, _, client = make()
    r = chat(client, f"say: {REPLY}")
    assert r.status_code == 200
    text = r.json()["choices"][0]["message"]["content"]
    assert SECRET not in text and IBAN not in text and "[EMAIL]" in text and "[IBAN]" in text
    r = client.post("/v1/completions", json={"prompt": f"say: {REPLY}"})
    assert SECRET not in r.json()["choices"][0]["text"] and "[IBAN]" in r.json()["choices"][0]["text"]
    assert [line["redacted_types"] for line in log_lines(ws)] == [["email", "iban"], ["email", "iban"]]
    with client.stream("POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": f"say: {REPLY}"}],
                                                              "stream": True}) as s:
        body = "".join(s.iter_lines())
    assert SECRET not in body and IBAN not in body and "[EMAIL]" in body
    assert SECRET not in (ws.logs / "requests.jsonl").read_text()


def test_ask_redacts_the_answer_and_every_cited_passage():
    hit = Hit(id="c1", source=f"/site/docs/{SECRET}.md", title=f"Notes for {SECRET}", section="Dear Alice Smith,",
              position=0, text=f"Pay {IBAN} and write to {SECRET}.", doc_sha256="0" * 64, score=0.5)
    answer = Answer(text=f"Write to {SECRET} [1]", citations=[hit])
    shown = format_answer(redact_answer(answer))
    assert SECRET not in shown and "Alice" not in shown and "[EMAIL]" in shown
    safe = redact_answer(answer).citations[0]
    assert safe.text == "Pay [IBAN] and write to [EMAIL]." and safe.source == "/site/docs/[EMAIL]"
    assert SECRET in format_answer(answer)  # the unfiltered answer (`--no-output-filter`) is as it was
