"""Decompression bombs for every reader that inflates: refused with their reason, in bounded memory,
and the rest of the ingest goes on.

The bombs are built here, in memory and in well under a second each: a .docx whose
``word/document.xml`` inflates to 210 MB (the size issue 13 found accepted), a .docx whose zip
headers lie about that size, PDFs with one huge Flate stream or many moderate ones, and entity
expansion ("billion laughs") in HTML and in a .docx's XML. Memory is measured with tracemalloc
(zlib's output buffers are Python objects, so an inflated member would show up in full).
"""
from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest

from appliance.data.ingest import ingest
from appliance.data.readers import MAX_UNCOMPRESSED_BYTES, UnreadableDocument, parse_bytes
from appliance.workspace import Workspace, WorkspaceError, read_jsonl

MB = 1 << 20
SMALL_LIMIT = 8 * MB
PARAGRAPH = b"<w:p><w:r><w:t>bomb</w:t></w:r></w:p>"


# the bombs ----------------------------------------------------------------------------------------
def _docx_parts() -> tuple[dict[str, bytes], bytes, bytes]:
    """The parts of a real one-paragraph .docx, and its document.xml split around the body."""
    with zipfile.ZipFile(io.BytesIO(small_docx())) as archive:
        parts = {info.filename: archive.read(info) for info in archive.infolist()}
    xml = parts.pop("word/document.xml")
    head, _, rest = xml.partition(b"<w:body>")
    return parts, head + b"<w:body>", b"</w:body>" + rest.split(b"</w:body>", 1)[1]


def small_docx(text: str = "A legitimate paragraph.") -> bytes:
    import docx

    buffer = io.BytesIO()
    document = docx.Document()
    document.add_paragraph(text)
    document.save(buffer)
    return buffer.getvalue()


def docx_bomb(inflated: int = 210 * MB, force_zip64: bool = True) -> bytes:
    """A valid .docx of a few hundred KB whose document.xml inflates to ``inflated`` bytes."""
    parts, head, tail = _docx_parts()
    block = PARAGRAPH * (MB // len(PARAGRAPH))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
        with archive.open("word/document.xml", "w", force_zip64=force_zip64) as member:
            member.write(head)
            for _ in range(inflated // len(block)):
                member.write(block)
            member.write(tail)
    return out.getvalue()


def lie_about_sizes(raw: bytes, name: str, declared: int) -> bytes:
    """``raw`` with ``name``'s uncompressed size in the local and central headers set to ``declared``."""
    data = bytearray(raw)
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        info = archive.getinfo(name)
    struct.pack_into("<I", data, info.header_offset + 22, declared)  # local file header
    central = data.rfind(b"PK\x01\x02" + data[info.header_offset + 4:info.header_offset + 6])
    while data[central + 46:central + 46 + len(name)] != name.encode():
        central = data.rfind(b"PK\x01\x02", 0, central)
    struct.pack_into("<I", data, central + 24, declared)  # central directory entry
    return bytes(data)


def deflated(unit: bytes, times: int) -> bytes:
    compressor = zlib.compressobj(9)
    return b"".join([compressor.compress(unit) for _ in range(times)] + [compressor.flush()])


def pdf(streams: list[bytes]) -> bytes:
    """A PDF with one page per Flate-encoded content stream (Helvetica as /F1), xref and all."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(streams)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(streams)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, data in enumerate(streams):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {5 + 2 * i} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>".encode())
        objects.append(f"<< /Length {len(data)} /Filter /FlateDecode >>\nstream\n".encode() + data + b"\nendstream")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


PAGE = b"BT /F1 12 Tf 72 720 Td (x) Tj ET\n"


def one_huge_stream() -> bytes:
    return pdf([deflated(PAGE + b" " * MB, 200)])  # 200 MB in one stream, about 200 KB on disk


def many_streams() -> bytes:
    return pdf([deflated(PAGE + b" " * MB, 2)] * 40)  # 40 streams of 2 MB: each small, 80 MB in all


LAUGHS = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))


# helpers ------------------------------------------------------------------------------------------
def peak_mb(call) -> tuple[object, float]:
    """``call()``'s result (or the exception it raised) and the peak of Python memory it took, in MB."""
    tracemalloc.start()
    try:
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - the caller looks at it
            result = exc
        return result, tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()


def ingest_with_limit(tmp_path: Path, files: dict[str, bytes], limit: int | None):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, data in files.items():
        (docs / name).write_bytes(data)
    (docs / "good.txt").write_text("Vault A opens with code 100. The rest of the ingest goes on.\n")
    ws = Workspace.open(tmp_path / "ws")
    if limit is not None:
        (ws.root / "site.toml").write_text(f"[data]\nmax_uncompressed_bytes = {limit}\n")
    ref, peak = peak_mb(lambda: ingest(ws, [docs], "docs"))
    assert not isinstance(ref, Exception), ref
    rejects = {Path(r["source"]).name: r["reason"] for r in read_jsonl(ref.path / "rejects.jsonl")}
    texts = [r["text"] for r in ref.records() + ref.eval_records()]
    return rejects, texts, peak


# .docx --------------------------------------------------------------------------------------------
def test_the_issues_docx_bomb_is_refused_at_the_default_limit_without_inflating_it(tmp_path):
    bomb = docx_bomb()
    assert len(bomb) < 1 * MB
    rejects, texts, peak = ingest_with_limit(tmp_path, {"bomb.docx": bomb}, None)
    assert rejects["bomb.docx"].startswith("decompression bomb: the DOCX inflates to more than "
                                           f"{MAX_UNCOMPRESSED_BYTES} bytes")
    assert "max_uncompressed_bytes" in rejects["bomb.docx"]
    assert any("Vault A opens with code 100." in t for t in texts)  # the rest went on
    assert peak < 40, f"{peak:.0f} MB of Python memory to refuse a bomb"


def test_the_site_limit_applies_and_a_docx_under_it_is_still_read(tmp_path):
    rejects, texts, peak = ingest_with_limit(tmp_path, {"bomb.docx": docx_bomb(64 * MB),
                                                        "fine.docx": small_docx()}, SMALL_LIMIT)
    assert rejects["bomb.docx"].startswith(f"decompression bomb: the DOCX inflates to more than {SMALL_LIMIT} bytes")
    assert "fine.docx" not in rejects and any("A legitimate paragraph." in t for t in texts)
    assert peak < 40, f"{peak:.0f} MB"


def test_a_docx_whose_headers_understate_its_size_is_refused_in_bounded_memory():
    honest = docx_bomb(64 * MB, force_zip64=False)
    lying = lie_about_sizes(honest, "word/document.xml", 1000)
    with zipfile.ZipFile(io.BytesIO(lying)) as archive:
        assert sum(i.file_size for i in archive.infolist()) < SMALL_LIMIT  # the headers claim it is tiny
    error, peak = peak_mb(lambda: parse_bytes(lying, Path("lying.docx"), SMALL_LIMIT))
    assert isinstance(error, UnreadableDocument), error
    assert peak < 40, f"{peak:.0f} MB"


def test_a_docx_with_entity_expansion_expands_nothing():
    parts, head, tail = _docx_parts()
    doctype = f"<!DOCTYPE w:document [{LAUGHS}]>".encode()
    start = head.index(b"<w:document")
    xml = head[:start] + doctype + head[start:] + b"<w:p><w:r><w:t>&lol9;</w:t></w:r></w:p>" + tail
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in {**parts, "word/document.xml": xml}.items():
            archive.writestr(name, data)
    result, peak = peak_mb(lambda: parse_bytes(out.getvalue(), Path("laughs.docx")))
    text = result[0].text if isinstance(result, list) else str(result)
    assert "lol" * 100 not in text and len(text) < 10_000
    assert peak < 40, f"{peak:.0f} MB"


# PDF ----------------------------------------------------------------------------------------------
def test_a_pdf_with_one_huge_stream_and_one_with_many_moderate_ones_are_refused(tmp_path):
    rejects, texts, peak = ingest_with_limit(tmp_path, {"huge.pdf": one_huge_stream(), "many.pdf": many_streams()},
                                             SMALL_LIMIT)
    for name in ("huge.pdf", "many.pdf"):  # pypdf's own limits are per stream (75 MB): many.pdf passes them
        assert rejects[name].startswith(f"decompression bomb: the PDF inflates to more than {SMALL_LIMIT} bytes"), \
            rejects[name]
    assert any("Vault A opens with code 100." in t for t in texts)
    assert peak < 2.5 * SMALL_LIMIT / MB + 8, f"{peak:.0f} MB"


def test_a_pdf_under_the_limit_is_read():
    docs = parse_bytes(pdf([zlib.compress(b"BT /F1 12 Tf 72 720 Td (Vault A opens with code 100.) Tj ET")]),
                       Path("fine.pdf"), SMALL_LIMIT)
    assert "Vault A opens with code 100." in docs[0].text


# HTML and the limit's own checks ------------------------------------------------------------------
def test_html_with_entity_expansion_expands_nothing():
    html = f"<!DOCTYPE html [{LAUGHS}]><html><body><p>Vault A. &lol9;</p></body></html>".encode()
    result, peak = peak_mb(lambda: parse_bytes(html, Path("laughs.html")))
    text = result[0].text if isinstance(result, list) else str(result)
    assert "lol" * 100 not in text and len(text) < 10_000
    assert peak < 40, f"{peak:.0f} MB"


def test_a_limit_that_is_not_a_positive_number_is_named_with_its_file(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    (ws.root / "site.toml").write_text('[data]\nmax_uncompressed_bytes = "lots"\n')
    (tmp_path / "a.txt").write_text("text\n")
    with pytest.raises(WorkspaceError, match=r"site.toml: \[data\] max_uncompressed_bytes must be a positive number"):
        ingest(ws, [tmp_path / "a.txt"], "docs")
