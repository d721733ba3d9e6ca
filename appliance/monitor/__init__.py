"""Production feeds the next model: what the served models do, whether their inputs drift, what they cost.

    appliance monitor [--since 24h] [--json]      report.py: request-log analytics per version and adapter
    appliance monitor drift [--since 7d]          drift.py: recent prompts vs the training distribution
    appliance cost [--month YYYY-MM]              cost.py: cost per 1k queries / 1M tokens, saving, break-even

logfile.py (size-bounded append-only JSONL), features.py (what the server keeps of a prompt for
drift, instead of its text) and settings.py (``[monitor]`` in site.toml) serve both sides: the
server writes with them, these reports read. The package sits just below ``serve`` in the layers
(the server imports its writers); ``appliance refresh`` (refresh.py) uses drift for its reasons.
"""
