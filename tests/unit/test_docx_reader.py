"""The .docx reader: headings become Markdown, and a long document costs one style lookup per style.

python-docx resolves ``paragraph.style`` by searching the styles part on every call; asked per
paragraph, a 27,000-paragraph document took minutes to read (a cheap denial of service at ingest).
"""
from __future__ import annotations

import io
from pathlib import Path

from appliance.data.readers import parse_bytes


def long_docx(paragraphs: int) -> bytes:
    import docx

    d = docx.Document()
    d.add_heading("Pump handbook", level=0)
    for i in range(paragraphs):
        if i % 100 == 0:
            d.add_heading(f"Part {i // 100}", level=1)
        d.add_paragraph("The quarterly maintenance report covers pump station four.")
    out = io.BytesIO()
    d.save(out)
    return out.getvalue()


def test_a_long_docx_resolves_each_style_once(monkeypatch):
    from docx.parts.document import DocumentPart

    calls = []
    real = DocumentPart.get_style
    monkeypatch.setattr(DocumentPart, "get_style", lambda self, *a: calls.append(a) or real(self, *a))
    (document,) = parse_bytes(long_docx(300), Path("handbook.docx"))
    assert len(calls) <= 3, f"{len(calls)} style lookups for 3 distinct styles"  # Title, Heading 1, Normal
    lines = document.text.splitlines()
    assert lines[0] == "# Pump handbook"
    assert "## Part 2" in lines
    assert sum(line.startswith("The quarterly") for line in lines) == 300
