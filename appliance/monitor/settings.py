"""``[monitor]`` in ``WORKSPACE/site.toml``: what the server logs and when drift is flagged.

    [monitor]
    log_max_mb = 64            # rotate logs/requests.jsonl (and drift.jsonl) past this size ...
    log_keep = 4               # ... keeping this many older files: at most (keep + 1) x max per log
    log_prompts = false        # true: the request log also holds each request's messages (private text!)
    drift_features = true      # record each prompt's drift features (embedding, length, word hashes)
    drift_p = 0.01             # flag drift when the permutation test's p-value is below this
    drift_min_samples = 20     # fewer recent prompts than this: no verdict
    drift_permutations = 500   # permutations of the test (fixed seed)
    drift_topics = 6           # clusters of the training prompts the topic report uses
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance import site
from appliance.workspace import Workspace

KEYS = {"log_max_mb", "log_keep", "log_prompts", "drift_features", "drift_p", "drift_min_samples",
        "drift_permutations", "drift_topics"}


@dataclass(frozen=True)
class MonitorSettings:
    log_max_bytes: int = 64 * 1024 * 1024
    log_keep: int = 4
    log_prompts: bool = False
    drift_features: bool = True
    drift_p: float = 0.01
    drift_min_samples: int = 20
    drift_permutations: int = 500
    drift_topics: int = 6


def read_settings(ws: Workspace | Path) -> MonitorSettings:
    site.unknown_keys(ws, "monitor", KEYS)
    return MonitorSettings(
        log_max_bytes=int(site.number(ws, "monitor", "log_max_mb", 64, minimum=0.001) * 1024 * 1024),
        log_keep=int(site.number(ws, "monitor", "log_keep", 4, minimum=0, maximum=1000)),
        log_prompts=site.flag(ws, "monitor", "log_prompts", False),
        drift_features=site.flag(ws, "monitor", "drift_features", True),
        drift_p=site.number(ws, "monitor", "drift_p", 0.01, minimum=0.0, maximum=1.0),
        drift_min_samples=int(site.number(ws, "monitor", "drift_min_samples", 20, minimum=2)),
        drift_permutations=int(site.number(ws, "monitor", "drift_permutations", 500, minimum=19, maximum=100_000)),
        drift_topics=int(site.number(ws, "monitor", "drift_topics", 6, minimum=1, maximum=100)),
    )
