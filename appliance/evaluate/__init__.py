"""Evaluation before promotion: domain suites, the four-way comparison, the promotion gate.

    appliance eval VERSION --suite FILE [--rag] [--adapter NAME] [--json]     -> ev-ID
    appliance eval suite-from-dataset DATASET[@vN] --out FILE                  -> FILE
    appliance eval compare --suite FILE [--base VERSION] [--version VERSION]   (one table)
    appliance models promote VERSION [--force --reason TEXT]                   (runs the gate)
    appliance models rollback                                                  (the previous production)

``suite`` reads suite files, ``metrics`` scores one answer against its reference (rules only, no
judge model), ``runner`` answers a suite with a model version's GGUF on the engine of
``appliance serve`` and stores the report with the version, ``compare`` puts runs side by side with
a paired significance test, ``gate`` applies the site's promotion policy (``[gate]`` in site.toml).
"""
