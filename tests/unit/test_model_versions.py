"""Model version summaries (``appliance.export.versions``) and the quant report's table, on
hand-written manifests: a current export, one from before quant reports / prompt_source /
tokenizer_fit existed, and an export of an unmodified base."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from appliance.artefacts import PROMOTED_FILE
from appliance.cli import app as cli
from appliance.export.quant_report import format_table, table
from appliance.export.versions import describe_parity, summaries, summary
from appliance.workspace import Workspace

REPORT = {
    "samples": 16, "samples_from": "eval split",
    "quants": {
        "f16": {"size_bytes": 1234567, "load_s": 0.01234, "prompt_tok_s": 304.25, "gen_tok_s": 43.0,
                "ppl": 1.23456, "kl": 0.0, "top1": 1.0, "exact": 1.0},
        "q4_k_m": {"size_bytes": 987654321, "load_s": 12.5, "prompt_tok_s": 123456.7, "gen_tok_s": None,
                   "ppl": 2.5, "kl": 0.000123456, "top1": 0.9375, "exact": 0.5},
    },
}
# format_table's output before it was built on table(): the CLI's contract, byte for byte
CLI_TABLE = (
    "quant report on 16 eval samples\n"
    "quant     size MB  load s  pp tok/s  tg tok/s      ppl        KL  top-1  exact\n"
    "f16          1.23   0.012     304.2      43.0    1.235   0.00000  1.000   1.00\n"
    "q4_k_m     987.65  12.500  123456.7       0.0    2.500   0.00012  0.938   0.50"
)
FIT = {"checked": 8, "mismatched": 0, "multi_turn_mismatched": 0, "add_space_prefix": False, "override": True}


def put(ws: Workspace, version: str, created: str, **fields) -> None:
    folder = ws.model_versions / version
    folder.mkdir()
    manifest = {"kind": "model_version", "id": version, "created": created, "files": {}, **fields}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace.open(tmp_path / "ws")
    put(ws, "mv-old", "2026-01-01T00:00:00+00:00", inputs={"run": "sft-a"}, quants=["f16", "q8_0"],
        parity={"prompts": 8, "matched": 8, "near_ties": 0, "divergences": [], "passed": True}, merge="fp32")
    put(ws, "mv-base", "2026-02-01T00:00:00+00:00", inputs={"run": None, "base": "pocket"}, quants=["f16"],
        merge="none: the unmodified base", tokenizer_fit={**FIT, "override": False, "add_space_prefix": True})
    put(ws, "mv-new", "2026-03-01T00:00:00+00:00", inputs={"run": "dpo-b", "base": "pocket"},
        quants=["f16", "q4_k_m"], merge="fp32", quant_report=REPORT,
        parity={"prompts": 8, "matched": 7, "near_ties": 1, "divergences": [], "passed": True,
                "prompt_source": "eval split", "tokenizer_fit": FIT})
    (ws.model_versions / ".mv-staging.tmp").mkdir()  # an export in progress is not a version
    return ws


def test_format_table_is_unchanged_and_built_from_table():
    assert format_table(REPORT) == CLI_TABLE
    headers, rows = table(REPORT)
    assert headers == ["quant", "size MB", "load s", "pp tok/s", "tg tok/s", "ppl", "KL", "top-1", "exact"]
    assert rows == [line.split() for line in CLI_TABLE.splitlines()[2:]]
    assert table({"samples": 0, "quants": {}}) == (headers, [])


def test_summaries_read_old_new_and_base_manifests(tmp_path: Path):
    ws = workspace(tmp_path)
    (ws.model_versions / PROMOTED_FILE).write_text(json.dumps({"version": "mv-base", "quant": None}))
    old, base, new = summaries(ws)  # oldest first
    assert [old.id, base.id, new.id] == ["mv-old", "mv-base", "mv-new"]
    assert [v.promoted for v in (old, base, new)] == [False, True, False]

    assert old.parity.matched == 8 and old.parity.prompt_source is None and old.tokenizer_fit is None
    assert old.quant_report is None
    assert describe_parity(old) == ("parity 8/8 (prompt source not recorded), "
                                    "tokenizer fit: not recorded (exported before the check existed)")

    assert new.run == "dpo-b" and new.quants == ["f16", "q4_k_m"] and new.quant_report == REPORT
    assert (new.parity.matched, new.parity.prompts, new.parity.passed) == (7, 8, True)
    assert describe_parity(new) == ("parity 7/8 on eval split, 1 near tie, "
                                    "tokenizer fit: add_space_prefix=false (re-converted)")

    assert base.run is None and base.parity is None and base.source == "base pocket"
    assert describe_parity(base) == ("parity: no gate (an unmodified base, nothing merged), "
                                     "tokenizer fit: add_space_prefix=true (converter default)")
    assert summary(ws).id == "mv-new" and summary(ws, "mv-old").id == "mv-old"


def test_models_list_output_is_unchanged(tmp_path: Path):
    ws = workspace(tmp_path)
    result = CliRunner().invoke(cli, ["models", "list", "--workspace", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "mv-old\tsft-a\tf16,q8_0\t2026-01-01T00:00:00+00:00\n"
        "mv-base\tNone\tf16\t2026-02-01T00:00:00+00:00\n"
        "mv-new\tdpo-b\tf16,q4_k_m\t2026-03-01T00:00:00+00:00\n"
    )
