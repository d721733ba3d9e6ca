"""`appliance rag sync | index | query | eval` through the real typer app (in-process: one model load)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")

from appliance.cli import app  # noqa: E402


def run(*args: str, ws: Path, code: int = 0):
    result = CliRunner().invoke(app, [*args, "--workspace", str(ws)])
    assert result.exit_code == code, f"appliance {' '.join(args)}: {result.exit_code}\n{result.output}"
    return result


def test_sync_query_with_filters_and_eval(tmp_path) -> None:
    docs = tmp_path / "docs"
    for name, text in {"policies/parking.md": "# Parking\n\nThe car park has 120 spaces.\n",
                       "procedures/badges.md": "# Badges\n\nVisitor badges are orange.\n"}.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text, encoding="utf-8")
    ws = tmp_path / "ws"
    assert "indexed 2 document(s)" in run("rag", "sync", str(docs), ws=ws).stdout
    (docs / "procedures/badges.md").unlink()
    assert "1 removed" in run("rag", "index", str(docs), ws=ws).stdout
    query = run("rag", "query", "parking spaces", "--json", "--department", "policies", "--since", "1d",
                "--mode", "fts", ws=ws)
    hit = json.loads(query.stdout.splitlines()[0])
    assert (Path(hit["source"]).name, hit["department"]) == ("parking.md", "policies") and hit["date"].endswith("Z")
    empty = run("rag", "query", "parking", "--department", "procedures", ws=ws)
    assert empty.stdout == "" and "no passages matched" in empty.stderr
    bad = run("rag", "query", "parking", "--since", "soon", ws=ws, code=1)
    assert "--since expects" in bad.stderr
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "How many spaces are in the car park?",
                                     "relevant": ["policies/parking.md"]}) + "\n")
    table = run("rag", "eval", str(questions), "--k", "3", ws=ws).stdout
    assert table.splitlines()[0].split() == ["mode", "questions", "recall@3", "MRR", "nDCG@3"]
    assert len(table.splitlines()) == 4
    scores = json.loads(run("rag", "eval", str(questions), "--json", "--mode", "fts", ws=ws).stdout)
    assert scores["modes"] == [{"mode": "fts", "questions": 1, "recall": 1.0, "mrr": 1.0, "ndcg": 1.0}]
    missing = run("rag", "eval", str(tmp_path / "none.jsonl"), ws=ws, code=1)
    assert "none.jsonl" in missing.stderr


def test_sync_watch_stops_cleanly_on_ctrl_c(tmp_path, monkeypatch) -> None:
    from appliance.rag import sync

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nAlpha text.\n", encoding="utf-8")
    real = sync.fingerprint
    calls = []

    def fingerprint_then_interrupt(paths):
        calls.append(1)
        if len(calls) == 1:
            return real(paths)
        if len(calls) == 2:
            (docs / "b.md").write_text("# B\n\nBeta text.\n", encoding="utf-8")
            return real(paths)
        raise KeyboardInterrupt

    monkeypatch.setattr(sync, "fingerprint", fingerprint_then_interrupt)
    result = run("rag", "sync", str(docs), "--watch", "--interval", "0.1", ws=tmp_path / "ws")
    assert result.stdout.count("indexed 1 document(s)") == 2
    assert "watch stopped after 2 sync(s)" in result.stderr


def test_sync_rejects_chunk_sizes_that_do_not_fit_and_names_the_field(tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nText.\n", encoding="utf-8")
    bad = run("rag", "sync", str(docs), "--chunk-tokens", "32", "--chunk-overlap-tokens", "32", ws=tmp_path / "ws",
              code=1)
    assert "chunk_overlap_tokens (32) must be below chunk_tokens (32)" in bad.stderr
    recipe = tmp_path / "rag.toml"
    recipe.write_text("chunk_words = 100\n", encoding="utf-8")
    unknown = run("rag", "index", str(docs), "--recipe", str(recipe), ws=tmp_path / "ws", code=1)
    assert "chunk_words" in unknown.stderr and "rag.toml" in unknown.stderr
    assert not (tmp_path / "ws" / "rag" / "chunks.lance").exists()
