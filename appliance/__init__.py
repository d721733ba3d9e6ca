"""SLM Appliance: turn an organisation's documents into a specialised small language model, offline.

Importing the package makes every Hugging Face library offline and turns library telemetry off:
nothing is fetched from a hub or reported anywhere at run time; models load from local folders.
"""
import os as _os

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow 3 otherwise reports usage to a remote host
    "DO_NOT_TRACK": "1",
    "LANCEDB_LOG": "error",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    _os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
