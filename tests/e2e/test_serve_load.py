"""A bounded loopback load test: 50 concurrent clients over the base and two adapters.

The real ``appliance serve`` runs with 4 slots and a queue of 30, so a burst of 50 requests is
partly refused with 429 by design; clients retry after a short pause, as a real client would.
The refusals are made certain: the burst arrives while long streams hold every slot, which
/metrics confirms. Every greedy answer must be the one the same request gets when served alone,
also the random-init base model's, whose tokens are not confident (the engine is batch invariant).
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ALT_FACTS, FACTS, free_port, wait_until_healthy

CLIENTS = 50
SLOTS, QUEUE = 4, 30


@pytest.fixture(scope="module")
def adapter_server(trained, adapter_set):
    port = free_port()
    log_path = adapter_set.ws.root / "serve-load.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--model", adapter_set.base.id, "--quant", "q8_0",
             "--port", str(port), "--threads", "1", "--parallel", str(SLOTS), "--max-queue", str(QUEUE),
             "--ctx", "1024",  # room for the long streams that hold every slot
             "--adapter", f"facts={adapter_set.facts}", "--adapter", f"alt={adapter_set.alt}",
             "--workspace", str(adapter_set.ws.root)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(process, url, log_path)
        yield url, adapter_set.base.id
        process.terminate()
        process.wait(timeout=30)


def test_adapter_selection_through_the_openai_client(adapter_server):
    url, base = adapter_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    names = {m.id for m in client.models.list().data}
    assert names == {base, f"{base}:facts", f"{base}:alt"}
    for model, facts in ((f"{base}:facts", FACTS), (f"{base}:alt", ALT_FACTS)):
        answers = [client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                                  temperature=0, max_tokens=24).choices[0].message.content
                   for q, _ in facts[:6]]
        assert answers == [a for _, a in facts[:6]], (model, answers)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"{base}:nope", messages=[{"role": "user", "content": "hi"}])


def admission(url: str) -> dict[str, float]:
    """The server's admission gauges from /metrics: requests in the engine and waiting for it."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {s.name.removeprefix("appliance_requests_"): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name in ("appliance_requests_in_flight", "appliance_requests_queued")}


def hold_every_slot(url: str, model: str) -> list:
    """Open one long stream per slot (a grammar for more items than the context holds) and read
    its first chunk: every slot is taken until the streams end. Each item is one of 300 words, a
    grammar slow to sample (about 2.5 s per 1,000 tokens here, 10x a grammar of booleans), so the
    streams outlast the burst's arrival on a loaded machine."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    words = [f"item{i:03d}-{'abcdefghij'[i % 10] * (i % 7 + 3)}" for i in range(300)]
    flags = {"type": "json_schema", "json_schema": {"name": "flags", "schema": {
        "type": "array", "items": {"enum": words}, "minItems": 2000, "maxItems": 2000}}}
    streams = []
    for _ in range(SLOTS):
        stream = client.completions.create(model=model, prompt="Vault", max_tokens=1000, temperature=0, stream=True,
                                           extra_body={"response_format": flags})
        next(iter(stream))
        streams.append(stream)
    return streams


def test_fifty_concurrent_clients_get_their_solo_answers(adapter_server, adapter_set):
    """50 clients at once against 4 slots and a queue of 30. The burst meets a server whose slots
    are all held (so exactly 50 - 30 = 20 first attempts are refused, by design, and retried);
    then every client must get exactly its solo answer, on the trained adapters and on the
    random-init base alike."""
    url, base = adapter_server
    models = [base, f"{base}:facts", f"{base}:alt"]
    jobs = [(FACTS[i % len(FACTS)][0], models[i % 3]) for i in range(CLIENTS)]

    def request(http: httpx.Client, question: str, model: str) -> httpx.Response:
        return http.post(f"{url}/v1/chat/completions", timeout=300, json={
            "model": model, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 24})

    with httpx.Client() as http:
        solo = {job: request(http, *job).json()["choices"][0]["message"]["content"] for job in set(jobs)}

    results: dict[int, tuple[str, float, int]] = {}
    refused, first_refused = [0], [0]
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def client(i: int) -> None:
        with httpx.Client() as http:
            barrier.wait()
            started = time.perf_counter()
            for attempt in range(200):
                reply = request(http, *jobs[i])
                if reply.status_code == 429:  # designed back-pressure: wait and retry
                    with lock:
                        refused[0] += 1
                        first_refused[0] += attempt == 0
                    time.sleep(0.2)
                    continue
                break
            if reply.status_code != 200:
                with lock:
                    errors.append(f"{reply.status_code}: {reply.text[:200]}")
                return
            body = reply.json()
            with lock:
                results[i] = (body["choices"][0]["message"]["content"], time.perf_counter() - started,
                              body["usage"]["completion_tokens"])

    holders = hold_every_slot(url, base)
    assert admission(url) == {"in_flight": SLOTS, "queued": 0}
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while (gauges := admission(url))["queued"] + first_refused[0] < CLIENTS:  # every first attempt has arrived
        assert gauges["in_flight"] == SLOTS, f"a held slot was freed before the burst was in: {gauges}"
        assert time.monotonic() < deadline, f"the burst did not arrive: {gauges}, {first_refused[0]} refused"
        time.sleep(0.02)
    assert (gauges, first_refused[0]) == ({"in_flight": SLOTS, "queued": QUEUE}, CLIENTS - QUEUE)
    for stream in holders:
        stream.close()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - started
    assert not errors, errors
    assert len(results) == CLIENTS
    latencies = sorted(r[1] for r in results.values())
    tokens = sum(r[2] for r in results.values())
    differing = [(jobs[i], solo[jobs[i]], results[i][0]) for i in range(CLIENTS) if results[i][0] != solo[jobs[i]]]
    print(f"\n{CLIENTS} clients over 3 models: {CLIENTS - len(differing)}/{CLIENTS} identical to solo, {refused[0]} "
          f"designed 429s ({first_refused[0]} first attempts, retried), p50 {statistics.median(latencies):.2f} s, "
          f"p99 {latencies[-1]:.2f} s, {tokens / wall:.0f} generated tok/s aggregate")
    assert not differing, differing


def test_adapters_are_added_and_removed_at_run_time_without_a_restart(adapter_server, trained, adapter_set):
    url, base = adapter_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    added = httpx.post(f"{url}/v1/admin/adapters", json={"name": "facts2", "adapter": adapter_set.facts}, timeout=60)
    assert added.status_code == 200 and added.json()["model"] == f"{base}:facts2"
    answer = client.chat.completions.create(model=f"{base}:facts2", messages=[{"role": "user", "content": FACTS[5][0]}],
                                            temperature=0, max_tokens=24).choices[0].message.content
    assert answer == FACTS[5][1]
    wrong = httpx.post(f"{url}/v1/admin/adapters", json={"name": "x", "adapter": "ad-0000000000"}, timeout=60)
    assert wrong.status_code == 400 and "no adapter" in wrong.json()["error"]["message"]
    assert httpx.delete(f"{url}/v1/admin/adapters/facts2", timeout=60).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"{base}:facts2", messages=[{"role": "user", "content": "hi"}])


def test_promotion_switches_a_following_server_while_a_stream_runs(trained, adapter_set):
    """`appliance serve` without --model serves the promoted version and follows promotions."""
    ws = str(adapter_set.ws.root)
    cli = [sys.executable, "-m", "appliance.cli"]
    subprocess.run(cli + ["models", "promote", trained.version.id, "--quant", "q8_0", "--workspace", ws],
                   check=True, capture_output=True)
    port = free_port()
    with open(adapter_set.ws.root / "serve-follow.log", "w") as log:
        process = subprocess.Popen(cli + ["serve", "--port", str(port), "--threads", "1", "--workspace", ws],
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, url, adapter_set.ws.root / "serve-follow.log")
        deadline = time.monotonic() + 60
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == [trained.version.id]
        stream = client.chat.completions.create(messages=[{"role": "user", "content": FACTS[7][0]}], model=trained.version.id,
                                                temperature=0, max_tokens=24, stream=True)
        first = next(iter(stream))
        promoted = subprocess.run(cli + ["models", "promote", adapter_set.base.id, "--workspace", ws],
                                  check=True, capture_output=True, text=True)
        assert promoted.stdout.strip().splitlines()[-1] == adapter_set.base.id
        text = (first.choices[0].delta.content or "") + "".join(c.choices[0].delta.content or "" for c in stream)
        assert text == FACTS[7][1]  # the stream that began on the old version finished on it
        while [m.id for m in client.models.list().data] != [adapter_set.base.id]:
            assert time.monotonic() < deadline, "the server did not follow the promotion"
            time.sleep(0.2)
        after = client.chat.completions.create(messages=[{"role": "user", "content": FACTS[7][0]}],
                                               model=adapter_set.base.id, temperature=0, max_tokens=24)
        assert after.choices[0].message.content != FACTS[7][1]  # the base never learnt it
    finally:
        process.terminate()
        process.wait(timeout=30)
