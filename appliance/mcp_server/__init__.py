"""The site's knowledge for agents: an MCP server over the RAG store, ``ask`` and the model list.

    appliance mcp                                    # stdio (an agent launches it as a subprocess)
    appliance mcp --http [--host 127.0.0.1 --port 8765]   # streamable HTTP at http://HOST:PORT/mcp

``tools`` holds the three tools as plain functions (``rag_search``, ``Answerer.ask``,
``list_models``); ``server`` exposes them through the official MCP SDK (``mcp``) over stdio or
streamable HTTP, with the API keys of ``appliance serve`` on HTTP. It sits beside ``demo`` and
``bundle`` in the layers (below ``cli``, above ``evaluate``, ``ask`` and ``serve``): a front end
that uses the library, which the library never imports.
"""
