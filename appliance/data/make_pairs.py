"""Make a pairs dataset from a document dataset (the strategies live in pairs.py).

    appliance data pairs DOCS[@vN] --dataset NAME [--strategy faq,tickets,headings,clauses] [--recipe R]

The pairs go through the same curation as ingested pairs (dedup, validation, optional split) and
become a new version of NAME whose manifest names the document dataset it came from.
"""
from __future__ import annotations

from appliance.artefacts import DatasetRef, resolve_dataset
from appliance.config import RecipeError
from appliance.data.curate import curate
from appliance.data.ingest import store_version
from appliance.data.pairs import make_pairs
from appliance.data.pii import Scrubber, load_key
from appliance.data.recipe import CurationRecipe, PairsConfig
from appliance.events import Event, EventSink, ignore
from appliance.workspace import Workspace, WorkspaceError

STRATEGIES = ("faq", "tickets", "headings", "clauses")


def pairs_dataset(ws: Workspace, source: str, name: str, recipe: CurationRecipe,
                  strategies: list[str] | None = None, on_event: EventSink = ignore) -> tuple[DatasetRef, dict[str, int]]:
    if strategies is not None:
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown or not strategies:
            raise RecipeError(f"--strategy: unknown {unknown or '(none)'}; choose from {', '.join(STRATEGIES)}")
        recipe = recipe.model_copy(update={"pairs": PairsConfig(**{**recipe.pairs.model_dump(), "strategies": strategies})})
    docs_ref = resolve_dataset(ws, source)
    documents = docs_ref.records("document")
    if not documents:
        raise WorkspaceError(f"dataset {docs_ref.id} has no documents to make pairs from ({docs_ref.counts})")
    pairs, made = make_pairs(documents, recipe.pairs)
    on_event(Event("data.pairs", message=f"{len(pairs)} pair(s) from {len(documents)} document(s): {made}"))
    if not pairs:
        raise WorkspaceError(f"no strategy ({', '.join(recipe.pairs.strategies)}) found pairs in {docs_ref.id}")
    files = {}
    for doc in documents:
        files.setdefault(str(doc.get("source")), {"status": "read", "records_read": 0})
    for p in pairs:
        files[str(p["source"])]["records_read"] += 1
    scrubber = Scrubber(recipe.pii, load_key(recipe.pii.key_file or ws.root / "secrets" / "pii.key")
                        if recipe.pii.enabled else b"")
    curated = curate(pairs, [], files, recipe, scrubber, name, on_event=on_event)
    curated.report["pairs"] = {"source": docs_ref.id, "made": made}
    if not curated.records and not curated.evals:
        raise WorkspaceError(f"every pair from {docs_ref.id} was rejected; see `appliance data report`")
    return store_version(ws, name, curated, [], recipe, docs_ref), made
