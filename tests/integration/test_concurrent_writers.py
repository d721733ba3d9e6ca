"""Two writers never lose data (issue 13 item 3), for every kind of artefact.

- datasets: 10 real ``appliance data ingest`` processes into one name get 10 distinct versions,
  and each printed id holds that process's rows; the same with feedback datasets, started
  together from a barrier;
- content-addressed folders (model versions, adapters, bases: ``Workspace.staging``) and
  training runs (``checkpoint.publish``): a finished folder is never replaced by a second writer;
- the promoted pointer: concurrent promotions form one chain through ``previous``.
(RAG store syncs hold their own lock: tests/integration/test_rag_lock.py.)
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

from appliance.artefacts import promote, promoted, resolve_dataset
from appliance.workspace import MANIFEST, Workspace, finished_artefacts, read_json, write_manifest

WRITERS = 10


POOL_TIMEOUT = 300
"""Seconds for a pool's writers: a pool whose worker is lost waits forever; this fails the test instead
(leaving the ``with`` terminates the workers)."""


def _rows(i: int) -> list[dict]:
    return [{"prompt": f"What is the code of locker {i}-{n}?", "completion": f"Locker {i}-{n} opens with code {i}{n}7."}
            for n in range(3)]


def _writer_of(records: list[dict]) -> set[str]:
    return {r["messages"][0]["content"].split("locker ")[1].split("-")[0] for r in records}


def test_ten_ingest_processes_into_one_name_get_ten_versions_each_with_its_own_rows(tmp_path):
    ws = tmp_path / "ws"
    env = {**os.environ, "APPLIANCE_HOME": str(ws), "OMP_NUM_THREADS": "1"}
    procs = []
    for i in range(WRITERS):
        src = tmp_path / f"in-{i}.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in _rows(i)))
        procs.append(subprocess.Popen([sys.executable, "-m", "appliance.cli", "data", "ingest", str(src),
                                       "--dataset", "shared"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    printed = {}
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        printed[i] = out.strip().splitlines()[-1]
    assert len(set(printed.values())) == WRITERS, printed
    workspace = Workspace.open(ws)
    for i, dataset_id in printed.items():
        ref = resolve_dataset(workspace, dataset_id)
        assert _writer_of(ref.records()) == {str(i)}, f"{dataset_id} printed by writer {i} holds other rows"
    assert len(finished_artefacts(workspace.datasets / "shared")) == WRITERS
    assert not [p.name for p in (workspace.datasets / "shared").iterdir() if p.name.startswith(".staging-")]


def _feedback_writer(root: str, i: int, barrier) -> str:
    from appliance.data.feedback import feedback_dataset

    ws = Workspace(root=Path(root))
    log = ws.root / f"feedback-{i}.jsonl"
    log.write_text("".join(json.dumps(
        {"id": f"fb-{i}-{n}", "created": 1000.0 + n, "response_id": f"resp-{i}-{n}", "model": "m", "rating": "down",
         "correction": f"Locker {i}-{n} is in hall {n}.", "messages": [{"role": "user", "content": f"Where is locker {i}-{n}?"}],
         "completion": "I do not know.", "key_id": None}) + "\n" for n in range(2)))
    barrier.wait(120)
    return feedback_dataset(ws, "fb", source=log).id


def test_feedback_datasets_written_at_once_get_distinct_versions(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    ctx = mp.get_context("spawn")
    n = 4
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            ids = pool.starmap_async(_feedback_writer, [(str(ws.root), i, barrier) for i in range(n)]).get(POOL_TIMEOUT)
    assert len(set(ids)) == n, ids
    for i, dataset_id in enumerate(ids):
        prompts = [r["prompt"][0]["content"] for r in resolve_dataset(ws, dataset_id).records()]
        assert prompts and all(f"locker {i}-" in p for p in prompts), (dataset_id, prompts)


def _stage_same_version(root: str, i: int, barrier) -> str:
    ws = Workspace(root=Path(root))
    final = ws.model_versions / "mv-0123456789"
    with ws.staging(final) as tmp:
        (tmp / "model-f16.gguf").write_bytes(f"writer {i}".encode())
        write_manifest(tmp, "model_version", final.name, {"writer": i})
        barrier.wait(120)  # every writer is about to rename its copy onto the same final folder
    return (final / "model-f16.gguf").read_text()


def test_a_finished_content_addressed_folder_is_never_replaced(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    ctx = mp.get_context("spawn")
    n = 4
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            seen = pool.starmap_async(_stage_same_version, [(str(ws.root), i, barrier) for i in range(n)]).get(POOL_TIMEOUT)
    final = ws.model_versions / "mv-0123456789"
    winner = read_json(final / MANIFEST)["inputs"]["writer"]
    assert seen == [f"writer {winner}"] * n  # everyone returned the one finished folder, never half of two
    assert (final / "model-f16.gguf").read_text() == f"writer {winner}"
    assert [p.name for p in ws.model_versions.iterdir()] == ["mv-0123456789"]  # no staging copy left


def test_publishing_a_run_never_replaces_a_finished_one(tmp_path):
    from appliance.train import checkpoint

    ws = Workspace.open(tmp_path / "ws")
    final = ws.runs / "sft-0123456789"
    final.mkdir()
    (final / "adapter.bin").write_bytes(b"first")
    write_manifest(final, "run", final.name, {})
    with checkpoint.claim(ws, final.name) as folder:  # a second process trained the same run meanwhile
        (folder / "out").mkdir()
        (folder / "out" / "adapter.bin").write_bytes(b"second")
        write_manifest(folder / "out", "run", final.name, {})
        checkpoint.publish(folder, final)
    assert (final / "adapter.bin").read_bytes() == b"first"
    assert not checkpoint.partial_dir(ws, final.name).exists()


def _promote(root: str, version: str, barrier) -> dict:
    ws = Workspace(root=Path(root))
    barrier.wait(120)
    return promote(ws, version)


def test_concurrent_promotions_form_one_chain(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    versions = [f"mv-{i:010d}" for i in range(4)]
    for version in versions:
        folder = ws.model_versions / version
        folder.mkdir()
        (folder / "model-f16.gguf").write_bytes(b"gguf")
        write_manifest(folder, "model_version", version, {}, {"quants": ["f16"]})
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(len(versions))
        with ctx.Pool(len(versions)) as pool:
            records = pool.starmap_async(_promote, [(str(ws.root), v, barrier) for v in versions]).get(POOL_TIMEOUT)
    by_version = {r["version"]: r for r in records}
    chain, current = [], promoted(ws)["version"]
    while current is not None and len(chain) <= len(versions):
        chain.append(current)
        current = by_version[current]["previous"]
    assert sorted(chain) == versions  # each promotion saw the one before it: none was lost from the chain


def _key_creator(root: str, i: int, barrier) -> str:
    from appliance.serve.auth import create_key

    barrier.wait(120)
    return create_key(Workspace(root=Path(root)), f"site-{i}")[0].id


def test_api_keys_created_at_once_are_all_kept(tmp_path):
    from appliance.serve.auth import keys_path, load_keys

    ws = Workspace.open(tmp_path / "ws")
    ctx = mp.get_context("spawn")
    n = 6
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            ids = pool.starmap_async(_key_creator, [(str(ws.root), i, barrier) for i in range(n)]).get(POOL_TIMEOUT)
    assert sorted(k.id for k in load_keys(keys_path(ws))) == sorted(ids)


def _first_key_load(path: str, barrier) -> bytes:
    from appliance.data.pii import load_key

    barrier.wait(120)
    return load_key(Path(path))


def test_the_pseudonym_key_made_by_concurrent_first_writers_is_one_whole_key(tmp_path):
    """Concurrent first ingests of a site each need the key: exactly one is made, and nobody reads
    it half-written or fails because another made it first."""
    ctx = mp.get_context("spawn")
    n = 8
    for attempt in range(3):  # the window is small: try a few fresh key files
        key = tmp_path / f"secrets-{attempt}" / "pii.key"
        with ctx.Manager() as manager:
            barrier = manager.Barrier(n)
            with ctx.Pool(n) as pool:
                keys = pool.starmap_async(_first_key_load, [(str(key), barrier)] * n).get(POOL_TIMEOUT)
        assert len(keys[0]) == 32 and set(keys) == {key.read_bytes()}
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        assert [p.name for p in key.parent.iterdir()] == ["pii.key"]  # no temp file left
