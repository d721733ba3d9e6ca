"""Planted personal data comes out nowhere: no response with the output filter on, no workspace file.

Unique values (e-mail, IBAN, phone, a name after a cue) are planted in the site's documents: in
file names, in metadata (a .docx title, an HTML <title>, an e-mail's subject, front matter), in
section headings and in the body text that RAG passages quote. Then the real path runs:
``data ingest`` -> ``data pairs`` -> ``data report`` -> ``rag index`` (real LanceDB, MiniLM) ->
``appliance serve`` (the trained tiny model of conftest.py, real llama.cpp) -> chat with
``rag: true`` streamed and not, ``/v1/completions``, and ``appliance ask``. A grammar makes the
model write planted values, so the filter has something to redact; a key created with
``--no-output-filter`` gets them raw (the test can fail). No planted value may appear in a
filtered response or in any workspace file except those that hold site data by design:

- ``rag/``: the LanceDB store; retrieval needs the passages, titles and sources as written. It
  is site data kept at rest under owner-only file modes (tests/integration/test_at_rest.py).
- ``secrets/``: the pseudonym key (no document text).
- ``feedback/feedback.jsonl`` (not written here): a rated response's messages, RAG passages
  included, as the model got them; owner-only, and curated like any input when it becomes data.
- ``models/``: weights (a link to the trained model's version here).

Everything else: ``datasets/*`` (data.jsonl, rejects.jsonl, report.json/.txt, manifest.json),
``logs/requests.jsonl``, ``serve.json``, the server's own log and every CLI's output. Cost:
about 40 s beyond the shared ``trained`` fixture (five CLI runs, one index, one server).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_until_healthy

EMAIL_NAME = "olga.petrenko@mailbox-example.net"  # a file name
IBAN_NAME = "DE89370400440532013000"  # a file name
EMAIL_META = "ivan.kowalczyk@corp-example.org"  # a .docx title
PHONE_META = "+44 20 7946 0173"  # an HTML <title>
NAME_META = "Bartholomew Quincey-Marsh"  # an e-mail's subject, after "Dear"
EMAIL_FRONT = "hedda.lindqvist@site-example.com"  # front matter title
NAME_HEADING = "Winifred Ashcombe"  # a section heading, after "Contact:"
EMAIL_BODY = "sigrun.halvorsen@vault-example.com"  # body text: RAG passages
IBAN_BODY = "GB82WEST12345698765432"  # body text
PLANTED = [EMAIL_NAME, IBAN_NAME, EMAIL_META, PHONE_META, NAME_META, EMAIL_FRONT, NAME_HEADING, EMAIL_BODY, IBAN_BODY]
# distinctive parts too: a value half redacted still leaks
FRAGMENTS = PLANTED + ["petrenko", "kowalczyk", "7946 0173", "Quincey", "lindqvist", "Ashcombe", "halvorsen"]
RAW_BY_DESIGN = ("rag", "secrets", "models", "feedback")


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True, timeout=300,
                          check=False)
    assert not ok or done.returncode == 0, done.stdout + done.stderr
    return done


def leaks(text: str) -> list[str]:
    return [f for f in FRAGMENTS if f.lower() in text.lower()]


def write_documents(docs: Path) -> None:
    import docx

    docs.mkdir()
    section = ("The boiler in the north vault is serviced every March by the facilities team, and the "
               "service log is kept at the front desk.")
    (docs / f"{EMAIL_NAME}.md").write_text(
        f"---\ntitle: Handbook of {EMAIL_FRONT}\ndepartment: facilities\n---\n# Boiler handbook\n\n"
        f"## Servicing\n\n{section}\n\n## Contact: {NAME_HEADING}\n\nEscalations about the boiler go to "
        f"{EMAIL_BODY}, who keeps the vault keys.\n\n## Payments\n\nBoiler invoices are paid to {IBAN_BODY} "
        "within thirty days of the service.\n")
    (docs / f"invoice {IBAN_NAME}.md").write_text(
        "# Vault invoices\n\n## Schedule\n\nVault invoices for the boiler are sent every quarter.\n\n"
        "## Approval\n\nThe facilities lead approves boiler invoices before payment.\n")
    document = docx.Document()
    document.core_properties.title = f"Badges owned by {EMAIL_META}"
    document.add_heading("Badges", 1)
    document.add_paragraph("Lost badges for the vault are replaced at the front desk within one day.")
    document.save(docs / "badges.docx")
    (docs / "rota.html").write_text(
        f"<html><head><title>Boiler rota, call {PHONE_META}</title></head><body><h1>Rota</h1>"
        "<p>The boiler rota for the vault changes every Monday and is posted at the front desk.</p></body></html>")
    (docs / "notice.eml").write_text(
        f"From: facilities@example.com\nTo: staff@example.com\nSubject: Dear {NAME_META}, boiler notice\n\n"
        "The boiler in the vault will be off on Friday for its service by the facilities team.\n")


@pytest.fixture(scope="module")
def site(trained, tmp_path_factory):
    """The workspace after ingest, pairs, report and index, with a server running on it."""
    top = tmp_path_factory.mktemp("pii-sweep")
    root = top / "workspace"
    (root / "models").mkdir(parents=True)
    (root / "models" / trained.version.id).symlink_to(trained.version.path)
    write_documents(top / "docs")
    ws = ["--workspace", str(root)]
    outputs = [cli("data", "ingest", str(top / "docs"), "--dataset", "handbook", *ws)]
    outputs.append(cli("data", "pairs", "handbook", "--dataset", "handbook-pairs", "--strategy", "headings", *ws))
    outputs.append(cli("data", "report", "handbook", "--json", *ws))
    outputs.append(cli("rag", "index", str(top / "docs"), *ws))
    raw_key = cli("keys", "create", "raw", "--no-output-filter", *ws).stdout.strip().splitlines()[-1]
    port = free_port()
    log_path = root / "logs" / "serve.out"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")  # noqa: SIM115 - open while the server runs
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--port", str(port), "--threads", "1", "--ctx", "8192",
         "--parallel", "1", *ws], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(process, url, log_path)
    yield {"root": root, "url": url, "raw_key": raw_key, "outputs": outputs, "model": trained.version.id}
    process.terminate()
    process.wait(timeout=30)
    log.close()


def chat(site, key: str | None = None, stream: bool = False, **body) -> tuple[str, list[dict]]:
    """(all the text a client receives, the citations) of one chat completion answered from the store."""
    body = {"model": site["model"], "max_tokens": 48, "temperature": 0, "rag": True, "rag_k": 3,
            "messages": [{"role": "user", "content": "Who gets boiler escalations and where are invoices paid?"}],
            "stream": stream, **body}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if not stream:
        r = httpx.post(f"{site['url']}/v1/chat/completions", json=body, headers=headers, timeout=120)
        assert r.status_code == 200, r.text
        return r.text, r.json()["citations"]
    with httpx.stream("POST", f"{site['url']}/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
        raw = "".join(r.iter_text())
    events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    return raw, next(e["citations"] for e in events if "citations" in e)


def contact_format(value: str) -> dict:
    """A grammar that makes the model write ``value`` (a value really generated by the engine)."""
    schema = {"type": "object", "properties": {"contact": {"type": "string", "const": value}},
              "required": ["contact"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "contact", "schema": schema}}


def test_planted_values_reach_no_response_with_the_filter_on(site):
    raw_text, raw_citations = chat(site, site["raw_key"], response_format=contact_format(EMAIL_BODY))
    unfiltered = raw_text + json.dumps(raw_citations)
    # the store really returns the planted values (so the checks below can fail)
    assert {EMAIL_NAME, IBAN_BODY, EMAIL_BODY} <= {v for v in PLANTED if v in unfiltered}
    assert len(raw_citations) == 3
    seen = []
    for stream in (False, True):
        text, citations = chat(site, stream=stream, response_format=contact_format(EMAIL_BODY))
        assert len(citations) == len(raw_citations) and "[EMAIL]" in text
        seen.append(text)
        text, _ = chat(site, stream=stream)  # free text, as the model writes it
        seen.append(text)
    for stream in (False, True):
        r = httpx.post(f"{site['url']}/v1/completions", timeout=120, json={
            "model": site["model"], "prompt": f"Pay the invoice to {IBAN_BODY}, then", "max_tokens": 40,
            "temperature": 0, "stream": stream, "response_format": contact_format(IBAN_BODY)})
        assert r.status_code == 200 and "[IBAN]" in r.text
        seen.append(r.text)
    for text in seen:
        assert not leaks(text), leaks(text)
    ask = cli("ask", "Who gets boiler escalations?", "--k", "3", "--workspace", str(site["root"]))
    assert "Sources:" in ask.stdout and not leaks(ask.stdout + ask.stderr), leaks(ask.stdout)


def test_planted_values_reach_no_workspace_file_outside_the_store(site):
    # after the requests above (module order), so logs/requests.jsonl holds them
    for done in site["outputs"]:
        assert not leaks(done.stdout + done.stderr), leaks(done.stdout + done.stderr)
    root: Path = site["root"]
    checked = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in RAW_BY_DESIGN or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        assert not leaks(text), (str(relative), leaks(text))
        checked.append(str(relative))
    assert {"logs/requests.jsonl", "datasets/handbook/v1/data.jsonl", "datasets/handbook/v1/manifest.json",
            "datasets/handbook/v1/report.json", "datasets/handbook-pairs/v1/data.jsonl"} <= set(checked)
    rows = [json.loads(line) for line in (root / "datasets" / "handbook" / "v1" / "data.jsonl").read_text().splitlines()]
    sources = {r["source"] for r in rows}
    # provenance stays: a renamed source is its scrubbed path plus a keyed digest, distinct per file
    assert len(sources) == 5 and any(s.endswith(".md") is False and "#" in s for s in sources)
    pairs = [json.loads(line) for line in (root / "datasets" / "handbook-pairs" / "v1" / "data.jsonl").read_text().splitlines()]
    assert pairs and all(p["source"] in sources for p in pairs)
