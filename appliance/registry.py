"""MLflow tracking for training runs: params, per-step metrics, system info, artefact hashes.

    appliance train sft --dataset facts --base pocket      # logs into WORKSPACE/mlflow.db
    MLFLOW_TRACKING_URI=http://mlflow.site:5000 appliance train sft ...   # a site's MLflow server
    mlflow ui --backend-store-uri sqlite:///WORKSPACE/mlflow.db           # browse (needs full mlflow)

Where runs go, first match wins:
  1. ``MLFLOW_TRACKING_URI`` in the environment (``off`` disables tracking);
  2. ``[tracking] uri = "..."`` in ``WORKSPACE/site.toml``;
  3. the embedded store ``sqlite:///WORKSPACE/mlflow.db``, artefacts under ``WORKSPACE/mlartifacts/``.

One MLflow experiment per stage (``appliance-sft``, ``appliance-dpo``): runs of one stage share
their params and metrics, so they compare side by side. The MLflow run is named after our run id
(``sft-<hash>``) and tagged ``appliance.run_id``, ``appliance.stage``, ``appliance.backend``,
``appliance.dataset``, ``appliance.base`` and ``appliance.parent_run`` (DPO), and at its end with its
verdict (``appliance.learned`` = true | false | none, ``appliance.verdict``; metrics
``verdict_exact_match`` / ``verdict_token_f1``: appliance/train/verdict.py). A resumed run continues
its MLflow run. At the end each file of the run's manifest becomes a ``sha256.<path>`` tag and
the manifest itself an artefact. Tracking is a side record: if it fails, training goes on and
a warning event says why.

The model registry (same store): every model version the gate or an evaluation has seen is a
version of the registered model ``appliance`` (``[tracking] registered_model`` in site.toml
changes the name), its source the version's folder, tagged with its lineage (``appliance.version``,
the run chain ``appliance.runs`` and, per run (``appliance.run.0`` the exported one, ``.1`` its
parent...), its id and inputs: datasets, base and its hash, MLflow run ids; ``sha256.FILE``
for each GGUF), its evaluations (``eval.SUITE[.rag]`` = ``ev-ID metric=value ...``) and its last
gate verdict (``appliance.gate``). Each exported LoRA adapter is a version of its own registered
model ``appliance-adapters`` (registered at export), tagged ``appliance.adapter``, its base version
and that base's f16 sha256, ``sha256.adapter.gguf`` and the same run-chain lineage. The aliases ``production`` and ``candidate`` (stages are
deprecated in MLflow) follow ``appliance models promote`` / ``rollback`` and the gate. The
workspace stays the source of the files and of the promoted pointer; the registry is the index and
the history, and a registry that fails is a warning, never a failed promotion.

    MlflowClient("sqlite:///WORKSPACE/mlflow.db").get_model_version_by_alias("appliance", "production")
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from appliance.events import Event, EventSink, ignore
from appliance import site
from appliance.workspace import Workspace

ENV = "MLFLOW_TRACKING_URI"
FLUSH_SECONDS = 2.0


def tracking_uri(ws: Workspace) -> str | None:
    """The tracking URI for this workspace, or None when tracking is switched off."""
    uri = os.environ.get(ENV, "").strip()
    if not uri:
        uri = str(site.section(ws, "tracking").get("uri", "")).strip()
    if not uri:
        uri = f"sqlite:///{ws.root / 'mlflow.db'}"
    return None if uri.lower() in ("off", "none", "false", "0") else uri


def experiment_name(stage: str) -> str:
    return f"appliance-{stage}"


def _flat(prefix: str, value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(_flat(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return {prefix: str(value)[:6000]}


class Tracker:
    """One training run's MLflow record. Every method is safe to call when tracking is off."""

    def __init__(self, client=None, run_id: str | None = None, uri: str | None = None,
                 experiment: str | None = None, on_event: EventSink = ignore) -> None:
        self.client, self.run_id, self.uri, self.experiment = client, run_id, uri, experiment
        self.on_event = on_event
        self._pending: list = []
        self._flushed = time.monotonic()

    @property
    def active(self) -> bool:
        return self.client is not None and self.run_id is not None

    def describe(self) -> dict:
        return {"uri": self.uri, "experiment": self.experiment, "mlflow_run_id": self.run_id} if self.active else {}

    # lifecycle ----------------------------------------------------------------------------
    @classmethod
    def start(cls, ws: Workspace, stage: str, run_name: str, params: dict, tags: dict,
              resume_id: str | None = None, on_event: EventSink = ignore) -> "Tracker":
        """Open (or, with ``resume_id``, reopen) the MLflow run for ``run_name``."""
        uri = tracking_uri(ws)
        if uri is None:
            return cls(on_event=on_event)
        try:
            from mlflow.tracking import MlflowClient

            for name in ("mlflow", "alembic"):  # after the import: mlflow configures its logger there
                logging.getLogger(name).setLevel(logging.WARNING)

            client = MlflowClient(tracking_uri=uri)
            name = experiment_name(stage)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                location = (ws.root / "mlartifacts" / name).as_uri() if uri.startswith("sqlite:") else None
                experiment_id = client.create_experiment(name, artifact_location=location)
            else:
                experiment_id = experiment.experiment_id
            if resume_id:
                try:
                    client.update_run(resume_id, status="RUNNING")
                    return cls(client, resume_id, uri, name, on_event)
                except Exception:  # the old record is gone (another store): start a fresh one
                    pass
            run = client.create_run(experiment_id, run_name=run_name,
                                    tags={f"appliance.{k}": str(v) for k, v in tags.items() if v is not None})
            tracker = cls(client, run.info.run_id, uri, name, on_event)
            tracker._batch(params=_flat("", params))
            return tracker
        except Exception as exc:  # tracking must never stop training
            on_event(Event("registry", message=f"warning: MLflow tracking is off for this run ({uri}): {exc}"))
            return cls(on_event=on_event)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffered: written at most every FLUSH_SECONDS, and by flush()/finish()."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k.replace("/", "_"), float(v), now, step) for k, v in metrics.items()
                             if isinstance(v, (int, float)))
        if time.monotonic() - self._flushed > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.active and self._pending:
            pending, self._pending = self._pending, []
            self._batch(metrics=pending)
        self._flushed = time.monotonic()

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.active:
            self._batch(tags={k: str(v)[:5000] for k, v in tags.items()})

    def record_verdict(self, verdict: dict, step: int) -> None:
        """The run's learned / did-not-learn verdict (appliance/train/verdict.py): tags
        ``appliance.learned`` (true, false or none) and ``appliance.verdict``, metrics
        ``verdict_exact_match`` / ``verdict_token_f1`` when answers were judged."""
        if not self.active:
            return
        learned = verdict.get("learned")
        self.set_tags({"appliance.learned": "none" if learned is None else str(bool(learned)).lower(),
                       "appliance.verdict": f"{verdict.get('summary', '')}; {verdict.get('reason', '')}"})
        evidence = verdict.get("evidence") or {}
        self.log_metrics({f"verdict_{k}": evidence[k] for k in ("exact_match", "token_f1") if k in evidence}, step=step)

    def finish(self, manifest: dict, manifest_path: Path | None = None) -> None:
        """Log the artefact hashes and final metrics and close the run as FINISHED."""
        if not self.active:
            return
        self.flush()
        hashes = {f"sha256.{path}": info["sha256"] for path, info in manifest.get("files", {}).items()}
        self.set_tags({**hashes, "appliance.manifest_created": manifest.get("created", "")})
        final = {k if k.startswith("final_") else f"final_{k}": v for k, v in (manifest.get("metrics") or {}).items() if isinstance(v, (int, float))}
        if final:
            self.log_metrics(final, step=int(manifest.get("metrics", {}).get("steps") or 0))
            self.flush()
        if manifest_path is not None:
            self._call(self.client.log_artifact, self.run_id, str(manifest_path))
        self._call(self.client.set_terminated, self.run_id, "FINISHED")

    def fail(self) -> None:
        if self.active:
            self.flush()
            self._call(self.client.set_terminated, self.run_id, "FAILED")

    # plumbing -----------------------------------------------------------------------------
    def _batch(self, metrics=(), params: dict | None = None, tags: dict | None = None) -> None:
        from mlflow.entities import Param, RunTag

        params_list = [Param(k, v) for k, v in (params or {}).items()]
        tags_list = [RunTag(k, v) for k, v in (tags or {}).items()]
        metrics = list(metrics)
        # MLflow caps one batch at 1000 metrics / 100 params / 100 tags
        for i in range(0, len(metrics), 1000):
            self._call(self.client.log_batch, self.run_id, metrics=metrics[i:i + 1000])
        for i in range(0, len(params_list), 100):
            self._call(self.client.log_batch, self.run_id, params=params_list[i:i + 100])
        for i in range(0, len(tags_list), 100):
            self._call(self.client.log_batch, self.run_id, tags=tags_list[i:i + 100])

    def _call(self, fn, *args, **kwargs) -> None:
        if not self.active:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            self.on_event(Event("registry", message=f"warning: MLflow tracking stopped ({self.uri}): {exc}"))
            self.client = None


def find_runs(ws: Workspace, stage: str) -> list:
    """MLflow runs of one stage in this workspace's tracking store (newest first)."""
    uri = tracking_uri(ws)
    if uri is None:
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name(stage))
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])


# the model registry ---------------------------------------------------------------------------
REGISTERED_MODEL = "appliance"
ALIASES = ("production", "candidate")


def registered_model_name(ws: Workspace) -> str:
    name = str(site.section(ws, "tracking").get("registered_model", REGISTERED_MODEL)).strip()
    return name or REGISTERED_MODEL


def _client(ws: Workspace):
    uri = tracking_uri(ws)
    if uri is None:
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def lineage_tags(ws: Workspace, version: str) -> dict[str, str]:
    """The lineage of model version ``version`` as registry tags (see the module doc)."""
    from appliance.artefacts import load_version

    model = load_version(ws, version)
    manifest = model.manifest
    inputs = manifest.get("inputs") or {}
    tags = {"appliance.version": model.id, "appliance.created": manifest.get("created", ""),
            "appliance.quants": ",".join(manifest.get("quants", []))}
    tags.update(_flat("appliance.export", inputs))
    parity = manifest.get("parity")
    if isinstance(parity, dict):
        tags["appliance.parity"] = f"{parity.get('matched')}/{parity.get('prompts')} passed={parity.get('passed')}"
    for name, info in (manifest.get("files") or {}).items():
        if name.endswith(".gguf"):
            tags[f"sha256.{name}"] = info["sha256"]
    tags.update(run_chain_tags(ws, inputs.get("run")))
    return {k[:250]: v for k, v in tags.items()}


def run_chain_tags(ws: Workspace, run_id: str | None) -> dict[str, str]:
    """``appliance.runs`` and, per run of the chain (``appliance.run.0`` the given run, ``.1`` its
    parent...), its id, inputs (datasets, base and its hash), MLflow run id and verdict."""
    from appliance.artefacts import load_run
    from appliance.workspace import WorkspaceError

    tags: dict[str, str] = {}
    chain: list[str] = []
    while run_id and len(chain) < 10:  # DPO -> SFT -> ...
        chain.append(run_id)
        try:
            run = load_run(ws, run_id).manifest
        except WorkspaceError:
            break
        prefix = f"appliance.run.{len(chain) - 1}"  # by position (0: the exported run), so two versions diff
        tags[f"{prefix}.id"] = run_id
        tags.update(_flat(prefix, run.get("inputs") or {}))
        if (run.get("tracking") or {}).get("mlflow_run_id"):
            tags[f"{prefix}.mlflow_run_id"] = run["tracking"]["mlflow_run_id"]
        if isinstance(run.get("verdict"), dict):
            tags[f"{prefix}.learned"] = str(run["verdict"].get("learned"))
        run_id = (run.get("inputs") or {}).get("parent_run")
    tags["appliance.runs"] = ",".join(chain)
    return tags


def register_version(ws: Workspace, version: str, tags: dict[str, str] | None = None,
                     on_event: EventSink = ignore) -> str | None:
    """Register (or update) ``version`` with its lineage and ``tags``; its registry version number,
    or None when tracking is off or the registry failed (a warning event says why)."""
    try:
        client = _client(ws)
        if client is None:
            return None
        return _register(client, ws, version, {**lineage_tags(ws, version), **(tags or {})})
    except Exception as exc:  # the registry is an index: it must never stop a promotion
        on_event(Event("registry", message=f"warning: the model registry was not updated for {version}: {exc}"))
        return None


def _register(client, ws: Workspace, version: str, tags: dict[str, str]) -> str:
    from appliance.artefacts import load_version

    return _register_entry(client, registered_model_name(ws), "appliance.version", version,
                           lambda: load_version(ws, version).path, tags,
                           "SLM Appliance model versions (appliance models list)")


def _register_entry(client, name: str, key: str, value: str, source, tags: dict[str, str], description: str) -> str:
    """The registry version of ``name`` tagged ``key = value`` (created from ``source()``'s folder
    the first time), with ``tags`` set; its number."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=description)
    found = client.search_model_versions(f"name='{name}' and tag.`{key}` = '{value}'")
    if found:
        number = str(found[0].version)
    else:
        number = str(client.create_model_version(name, source=source().resolve().as_uri(), tags={key: value}).version)
    for tag, text in tags.items():
        client.set_model_version_tag(name, number, tag, str(text)[:5000])
    return number


# adapters: their own registered model ----------------------------------------------------------
def adapter_model_name(ws: Workspace) -> str:
    """``appliance-adapters`` (the registered model name + ``-adapters``)."""
    return registered_model_name(ws) + "-adapters"


def adapter_tags(ws: Workspace, adapter_id: str) -> dict[str, str]:
    """An adapter's lineage: its base version and that base's f16 sha256, its GGUF's sha256, the run chain."""
    from appliance.artefacts import load_adapter

    adapter = load_adapter(ws, adapter_id)
    manifest = adapter.manifest
    inputs = manifest.get("inputs") or {}
    tags = {"appliance.adapter": adapter.id, "appliance.kind": "adapter", "appliance.created": manifest.get("created", ""),
            "appliance.base_version": str(inputs.get("base_version")),
            "appliance.base_f16_sha256": str(inputs.get("base_f16_sha256"))}
    for name, info in (manifest.get("files") or {}).items():
        if name.endswith(".gguf"):
            tags[f"sha256.{name}"] = info["sha256"]
    tags.update(run_chain_tags(ws, inputs.get("run")))
    return {k[:250]: v for k, v in tags.items()}


def register_adapter(ws: Workspace, adapter_id: str, tags: dict[str, str] | None = None,
                     on_event: EventSink = ignore) -> str | None:
    """Register (or update) adapter ``adapter_id`` as a version of the adapters' registered model,
    with its lineage and ``tags``; its registry number, or None (tracking off, or a warning event)."""
    try:
        client = _client(ws)
        if client is None:
            return None
        from appliance.artefacts import load_adapter

        return _register_entry(client, adapter_model_name(ws), "appliance.adapter", adapter_id,
                               lambda: load_adapter(ws, adapter_id).path, {**adapter_tags(ws, adapter_id), **(tags or {})},
                               "SLM Appliance LoRA adapters, each for one base model version (appliance models list)")
    except Exception as exc:  # the registry is an index: it never fails an export
        on_event(Event("registry", message=f"warning: the model registry was not updated for {adapter_id}: {exc}"))
        return None


def adapter_entries(ws: Workspace) -> dict[str, dict]:
    """``appliance.adapter`` -> {"number", "tags"} of every registered adapter ({} when off or none)."""
    client = _client(ws)
    if client is None:
        return {}
    from mlflow.exceptions import MlflowException

    name = adapter_model_name(ws)
    try:
        client.get_registered_model(name)
    except MlflowException:
        return {}
    return {mv.tags["appliance.adapter"]: {"number": str(mv.version), "tags": dict(mv.tags)}
            for mv in client.search_model_versions(f"name='{name}'") if mv.tags.get("appliance.adapter")}


def set_alias(ws: Workspace, alias: str, version: str | None, on_event: EventSink = ignore) -> None:
    """Point ``alias`` at ``version``'s registry entry (registering it first); None removes it."""
    try:
        client = _client(ws)
        if client is None:
            return
        name = registered_model_name(ws)
        if version is None:
            from mlflow.exceptions import MlflowException

            try:
                client.delete_registered_model_alias(name, alias)
            except MlflowException:
                pass
            return
        number = _register(client, ws, version, {})
        client.set_registered_model_alias(name, alias, number)
    except Exception as exc:
        on_event(Event("registry", message=f"warning: the registry alias {alias} was not set: {exc}"))


def registry_entries(ws: Workspace) -> dict[str, dict]:
    """``appliance.version`` -> {"number", "tags", "aliases"} of every registered version ({} when off)."""
    client = _client(ws)
    if client is None:
        return {}
    from mlflow.exceptions import MlflowException

    name = registered_model_name(ws)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return {}
    aliases: dict[str, list[str]] = {}
    for alias, number in (model.aliases or {}).items():
        aliases.setdefault(str(number), []).append(alias)
    entries = {}
    for mv in client.search_model_versions(f"name='{name}'"):
        version = mv.tags.get("appliance.version")
        if version:
            entries[version] = {"number": str(mv.version), "tags": dict(mv.tags),
                                "aliases": sorted(aliases.get(str(mv.version), []))}
    return entries
