"""Data curation end to end: a messy corpus of 40 files through `appliance data ingest`.

The corpus is built here: every supported format (PDF and DOCX made with pypdf and
python-docx), exact and near duplicates, planted PII, broken encodings, an empty file, a binary
file named .txt, a 50 MB file. Checks: no crash, every input file accounted for in the report,
no planted PII value in any output, every planted near-duplicate removed.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

# every planted PII value; none may appear in data.jsonl, rejects.jsonl or the report
PII = {
    "email": ["jane.doe@example.com", "r.khan@corp-mail.example.org", "tom.baker77@example.net"],
    "phone": ["+44 20 7946 0958", "555-867-5309", "+1 (415) 555-0132"],
    "credit_card": ["4111 1111 1111 1111", "5500-0000-0000-0004"],
    "iban": ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"],
    "us_ssn": ["123-45-6789"],
    "uk_nino": ["AB 12 34 56 C"],
    "ipv4": ["192.168.10.24", "10.20.30.40"],
    "ipv6": ["2001:db8::8a2e:370:7334"],
    "person": ["Eleanor Whitfield", "Marcus Oyelaran"],
}
ALL_PII = [v for values in PII.values() for v in values]


def words(rng: random.Random, n: int) -> str:
    syll = ["ka", "lo", "mi", "tra", "ven", "dor", "sel", "qui", "bar", "nen", "po", "zu", "ri", "fen", "gal"]
    out = []
    for i in range(n):
        out.append("".join(rng.choice(syll) for _ in range(rng.randint(1, 3))))
        if i % 12 == 11:
            out[-1] += "."
    return " ".join(out)


def make_pdf(path: Path, pages: list[str]) -> None:
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    for text in pages:
        page = writer.add_blank_page(612, 792)
        lines = text.split("\n")
        ops = ["BT", "/F1 11 Tf", "14 TL", "50 750 Td"]
        for line in lines:
            safe = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops += [f"({safe}) Tj", "T*"]
        ops.append("ET")
        stream = DecodedStreamObject()
        stream.set_data("\n".join(ops).encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})})
    with open(path, "wb") as handle:
        writer.write(handle)


def make_docx(path: Path) -> None:
    import docx

    d = docx.Document()
    d.add_heading("Equipment handbook", level=0)
    d.add_heading("Returning a laptop", level=1)
    d.add_paragraph("Laptops are returned to the service desk on the second floor with their charger and bag. "
                    "Questions go to Mr. Marcus Oyelaran on +1 (415) 555-0132.")
    d.add_heading("Loan periods", level=1)
    d.add_paragraph("Projectors are lent for at most five working days and must be booked one day ahead.")
    table = d.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Item", "Days"
    table.cell(1, 0).text, table.cell(1, 1).text = "Projector", "5"
    d.save(str(path))


def eml(subject: str, body: str | None, html: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Jane Doe <jane.doe@example.com>"
    msg["To"] = "team@example.com"
    msg["Subject"] = subject
    if body is None:
        msg.set_content(html, subtype="html")  # an HTML-only message
    else:
        msg.set_content(body)
    return bytes(msg)


def build_corpus(root: Path) -> dict:
    rng = random.Random(7)
    root.mkdir()
    (root / "sub").mkdir()
    near_base = words(rng, 320)
    files: dict[str, Path] = {}

    def put(name: str, data: str | bytes) -> Path:
        path = root / name
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        files[name] = path
        return path

    put("policy.md", "# Travel policy\n\n## Hotels\n\nHotel stays are booked through the travel desk and "
        "capped at 150 pounds a night outside London.\n\n## Trains\n\nStandard class is used for journeys "
        "under three hours; first class needs a director's approval.\n")
    put("sub/policy-copy.md", (root / "policy.md").read_text())                 # exact duplicate
    put("policy-spaces.md", (root / "policy.md").read_text().replace(" a night", "  a   night"))  # exact after normalising
    put("faq.md", "# Facilities FAQ\n\nQ: Where are spare keys kept?\nA: Spare keys are kept in the locked cabinet "
        "behind reception.\n\nQ: Who waters the plants?\nA: The facilities team waters the plants every Monday.\n")
    put("notes.txt", "Meeting notes. " + words(rng, 120) + "\nContact Mr. Eleanor Whitfield on 555-867-5309.\n")
    put("pii.txt", "Customer record for Ms Eleanor Whitfield.\nCard 4111 1111 1111 1111, card two 5500-0000-0000-0004.\n"
        "IBAN GB82 WEST 1234 5698 7654 32 and DE89370400440532013000.\nSSN 123-45-6789, NI number AB 12 34 56 C.\n"
        "Call +44 20 7946 0958 or mail r.khan@corp-mail.example.org. Server 10.20.30.40.\n"
        "Order 2024-03-15 ref INV-778121 for 2,340 pounds.\n")
    put("page.html", "<html><head><title>Parking</title><style>p{color:red}</style><script>var x=1;</script></head>"
        "<body><nav>Home | About</nav><h1>Parking rules</h1><p>The car park has <b>42 spaces</b>; space 7 is for "
        "visitors.</p><ul><li>Gates close at 20:00.</li><li>Report damage to tom.baker77@example.net.</li></ul>"
        "</body></html>")
    put("mojibake.md", "# CafÃ© menu\n\nThe cafÃ© serves crÃ¨me brÃ»lÃ©e on Fridays and a rÃ©sumÃ© of the week's "
        "specials is pinned by the door.\n")
    put("latin1.txt", "Caf\xe9 cr\xe8me f\xfcr M\xfcller und die Gr\xf6\xdfe der Stra\xdfe. ".encode("cp1252") * 20)
    put("empty.txt", b"")
    put("blank.md", "   \n\n   \t\n")
    put("binary.txt", bytes(rng.randrange(256) for _ in range(5000)) + b"\x00\x00\x01")
    put("broken.pdf", b"%PDF-1.4\nthis is not really a pdf\n%%EOF")
    put("broken.docx", b"PK\x03\x04 not a zip at all")
    put("image.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    put("app.log", "2024-05-01 10:00:01 INFO login ok user=42 from 192.168.10.24\n"
        "2024-05-01 10:00:05 WARN retry from 2001:db8::8a2e:370:7334\n" * 3)
    header = "ACME Corporation - Internal Report"
    make_pdf(root / "report.pdf", [f"{header}\n{words(rng, 40)}\nPage {i} of 3" for i in (1, 2, 3)])
    files["report.pdf"] = root / "report.pdf"
    make_docx(root / "handbook.docx")
    files["handbook.docx"] = root / "handbook.docx"
    put("tickets.csv", "ticket_id,subject,description,resolution\n"
        "T-1,Printer jam,\"The third floor printer jams on A3 paper, reported by jane.doe@example.com.\","
        "\"Facilities replaced the A3 roller and tested twenty pages.\"\n"
        "T-2,VPN drops,\"VPN drops every ten minutes from 10.20.30.40.\",\"The client was updated to 4.2 "
        "and the keep-alive set to 60 seconds.\"\n")
    put("tickets.jsonl", json.dumps({"id": "T-3", "subject": "Badge", "description": "Badge stopped working for "
                                     "Dr. Marcus Oyelaran.", "resolution": "Reception re-encoded the badge."}) + "\n")
    put("chat.jsonl", json.dumps({"messages": [{"role": "user", "content": "Who approves first class?"},
                                               {"role": "assistant", "content": "A director approves first class travel."}]})
        + "\n{broken\n" + json.dumps({"prompt": "Who is on call?", "completion": "Call 555-867-5309 or jane.doe@example.com."})
        + "\n" + json.dumps({"prompt": "What is the fire drill day?", "completion": "Tuesday."})
        + "\n" + json.dumps({"prompt": "What is the fire drill day?", "completion": "Thursday."}) + "\n")
    put("prefs.jsonl", json.dumps({"prompt": "Where are keys?", "chosen": "In the locked cabinet.", "rejected": "Anywhere."}) + "\n")
    put("mail1.eml", eml("Quarterly numbers", "Hi all,\n\nThe quarterly numbers are in the shared drive under finance.\n"
                         "Questions to +44 20 7946 0958.\n\nBest regards,\nEleanor Whitfield\nHead of Finance\n\n"
                         "This email and any attachments are confidential and intended solely for the addressee."))
    put("mail2.eml", eml("Canteen", None, "<p>The canteen opens at <b>8:00</b> and closes at 15:00.</p>"))
    put("huge.txt", b"")
    with open(root / "huge.txt", "wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # 50 MB (sparse: fast to make)
    # near duplicates: one base text and variants that differ in a few words
    put("near/base.md", near_base) if (root / "near").mkdir() is None else None
    near = ["near/base.md"]
    for i in range(4):
        ws = near_base.split(" ")
        for j in rng.sample(range(len(ws)), 3):
            ws[j] = "changed" + str(i)
        put(f"near/variant{i}.md", " ".join(ws))
        near.append(f"near/variant{i}.md")
    for i in range(6):  # distinct documents that must all stay
        put(f"distinct/doc{i}.md", f"# Topic {i}\n\n" + words(rng, 200)) if (root / "distinct").mkdir(exist_ok=True) is None else None
    return {"files": files, "near": near, "exact": ["policy.md", "sub/policy-copy.md", "policy-spaces.md"]}


def run_cli(*args: str, ws: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "APPLIANCE_HOME": str(ws), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    corpus = build_corpus(root / "in")
    ws = root / "ws"
    done = run_cli("data", "ingest", str(root / "in"), "--dataset", "messy", ws=ws)
    return corpus, ws, done, root / "in"


def test_messy_corpus_is_ingested_and_every_file_accounted_for(curated):
    corpus, ws, done, src = curated
    assert len(corpus["files"]) >= 30
    assert done.stdout.strip().splitlines()[-1] == "messy@v1"
    report = json.loads((ws / "datasets/messy/v1/report.json").read_text())
    assert set(report["files"]) == {str(p) for p in corpus["files"].values()}
    status = {Path(k).relative_to(src).as_posix(): v for k, v in report["files"].items()}
    for name, reason in [("empty.txt", "empty"), ("binary.txt", "binary"), ("huge.txt", "too large"),
                         ("broken.pdf", "PDF"), ("broken.docx", "DOCX"), ("image.png", "unsupported"),
                         ("blank.md", "whitespace")]:
        assert status[name]["status"] == "rejected" and reason in status[name]["reason"], (name, status[name])
    for name in ("report.pdf", "handbook.docx", "page.html", "mail1.eml", "mail2.eml", "app.log", "tickets.csv",
                 "tickets.jsonl", "faq.md", "mojibake.md", "latin1.txt"):
        assert status[name]["status"] == "kept", (name, status[name])
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["read"]["in"] == len(corpus["files"])
    assert report["pii"]["found"].keys() >= set(PII)
    table = run_cli("data", "report", "messy", ws=ws).stdout
    assert "Rejects by reason" in table and "Duplicates removed" in table and "credit_card" in table


def test_no_planted_pii_survives(curated):
    _, ws, _, _ = curated
    folder = ws / "datasets/messy/v1"
    output = "".join(p.read_text(encoding="utf-8") for p in folder.iterdir() if p.is_file())
    for value in ALL_PII:
        assert value not in output, value
        assert value.replace(" ", "") not in output.replace(" ", ""), value
    data = (folder / "data.jsonl").read_text()
    assert "[CARD]" in data and "[EMAIL_" in data and "[PERSON_" in data
    assert "2024-03-15" in data and "INV-778121" in data  # dates and ids are not phones


def test_duplicates_removed_best_copy_kept(curated):
    corpus, ws, _, src = curated
    rows = [json.loads(x) for x in (ws / "datasets/messy/v1/data.jsonl").read_text().splitlines()]
    kept = {Path(r["source"]).relative_to(src).as_posix() for r in rows}
    assert len(kept & set(corpus["near"])) == 1, kept & set(corpus["near"])
    assert len(kept & set(corpus["exact"])) == 1
    assert all(f"distinct/doc{i}.md" in kept for i in range(6))
    keeper = next(r for r in rows if Path(r["source"]).relative_to(src).as_posix() in corpus["near"])
    assert {Path(x["source"]).relative_to(src).as_posix() for x in keeper["replaced"]} == set(corpus["near"]) - {
        Path(keeper["source"]).relative_to(src).as_posix()}
    report = json.loads((ws / "datasets/messy/v1/report.json").read_text())
    assert report["duplicates"]["near"] >= 4 and report["duplicates"]["exact"] >= 2


def test_cleaning_and_readers(curated):
    _, ws, _, src = curated
    rows = {Path(r["source"]).name: r for r in map(json.loads, (ws / "datasets/messy/v1/data.jsonl").read_text().splitlines())}
    assert "café serves crème brûlée" in rows["mojibake.md"]["text"]
    assert "Café crème für Müller" in rows["latin1.txt"]["text"]
    assert "ACME Corporation" not in rows["report.pdf"]["text"] and "Page 2" not in rows["report.pdf"]["text"]
    assert "## Returning a laptop" in rows["handbook.docx"]["text"] and "Projector | 5" in rows["handbook.docx"]["text"]
    assert "42 spaces" in rows["page.html"]["text"] and "var x" not in rows["page.html"]["text"]
    mail = rows["mail1.eml"]["text"]
    assert "quarterly numbers" in mail and "Head of Finance" not in mail and "confidential" not in mail
    assert "canteen opens at 8:00" in rows["mail2.eml"]["text"]
    rejects = [json.loads(x) for x in (ws / "datasets/messy/v1/rejects.jsonl").read_text().splitlines()]
    reasons = " | ".join(r["reason"] for r in rejects)
    assert "conflicting answers" in reasons and "invalid JSON" in reasons


def test_pairs_from_the_curated_documents(curated):
    _, ws, _, _ = curated
    done = run_cli("data", "pairs", "messy", "--dataset", "messy-pairs", ws=ws)
    assert done.stdout.strip().splitlines()[-1] == "messy-pairs@v1"
    rows = [json.loads(x) for x in (ws / "datasets/messy-pairs/v1/data.jsonl").read_text().splitlines()]
    by = {}
    for r in rows:
        by.setdefault(r["strategy"], []).append(r)
    assert {"faq", "tickets", "headings"} <= set(by)
    assert any(r["messages"][0]["content"] == "Where are spare keys kept?" for r in by["faq"])
    assert any("Facilities replaced the A3 roller" in r["messages"][1]["content"] for r in by["tickets"])
    manifest = json.loads((ws / "datasets/messy-pairs/v1/manifest.json").read_text())
    assert "messy@v1" in manifest["inputs"]
