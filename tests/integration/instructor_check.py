"""instructor's default TOOLS mode against a running server; run by an interpreter that has instructor.

    python tests/integration/instructor_check.py http://127.0.0.1:8080 MODEL_ID

instructor 1.17 needs ``jiter<0.15`` and ``rich<15``, which this project's lock (openai 3.57, textual)
cannot give it, so it lives in its own environment (``pip install instructor==1.17.0``, which
resolves openai 3.3.0); test_api_clients.py runs this file with ``APPLIANCE_INSTRUCTOR_PYTHON``.
Prints the extracted object as JSON; exits non-zero on any failure.
"""
from __future__ import annotations

import json
import sys
from typing import Literal

import instructor
import openai
from pydantic import BaseModel


class Vault(BaseModel):
    vault: Literal["A", "B", "C"]
    open: bool


def main(url: str, model: str) -> None:
    client = instructor.from_openai(openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0),
                                    mode=instructor.Mode.TOOLS)
    vault = client.chat.completions.create(model=model, response_model=Vault, max_retries=0, temperature=0,
                                           max_tokens=400, messages=[{"role": "user",
                                                                      "content": "What is the code of vault A?"}])
    print(json.dumps({"vault": vault.model_dump(), "instructor": instructor.__version__,
                      "openai": openai.__version__}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
