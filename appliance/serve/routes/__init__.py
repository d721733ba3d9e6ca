"""The API's routes, one module per endpoint group; each route parses, calls, and shapes the answer.

    appliance serve ...    # api.create_app includes ROUTERS in this order
"""
from __future__ import annotations

from appliance.serve.routes import admin, chat, completions, embeddings, feedback, health, messages, models

ROUTERS = [health.router, models.router, embeddings.router, feedback.router, chat.router,
           completions.router, messages.router, admin.router]
