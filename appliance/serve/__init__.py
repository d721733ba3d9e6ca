"""Serving: an OpenAI-compatible HTTP API over llama.cpp, with LoRA adapters per request.

    appliance serve --model VERSION [--adapter legal=ad-XXXX] [--parallel 4]

Top to bottom (each module imports only those below it):

- ``server.py``: ``appliance serve``: keys, options, uvicorn, ``serve.json``;
- ``api.py``: ``create_app`` assembles the routes (``routes/``, one module per endpoint group)
  and the error handlers (``errors.py``);
- ``generation.py`` (one completion, JSON or a stream, for every API) over ``streaming.py`` (engine thread ->
  event loop, output filter);
- ``context.py``: what every route shares (request log record, keys, parsing, admission);
- ``protocol.py``: request models and the OpenAI error shape;
- ``served_models.py``: the one owner of what is served (base version, adapters, names,
  administration), over ``hotswap.py`` (engine swaps, promotions), ``engine.py`` (prompts and
  OpenAI-shaped results) and ``scheduler.py`` (continuous batching on one llama.cpp context);
- beside them: ``auth.py`` (API keys), ``limits.py`` (admission), ``metrics.py``,
  ``requestlog.py``, ``feedback_store.py``, ``output_filter.py``, and ``client.py`` (the client
  ``appliance ask`` and the TUI use).
"""
