"""The field install: a signed, verifiable bundle folder for a USB stick (issue 17).

    appliance bundle keygen --out KEY   /   appliance bundle build --target cpu --out DIR --key KEY
    appliance bundle inspect DIR        /   appliance bundle verify DIR --pubkey KEY.pub

- ``build``: wheelhouse (the lock's wheels, llama-cpp-python, slm-appliance), converters, models,
  artefacts, installer, SBOM, manifest and signature; ``--split-size`` and ``--since``.
- ``verify`` + ``ed25519``: standard library only; copied into the bundle and run by the
  installer with the target's bare python3 before anything is installed.
- ``keys``: Ed25519 key pairs and signing (``cryptography``).
- ``sbom``: the CycloneDX document.  ``inspect``: what a bundle holds.
The installer itself is ``installer/`` (install.sh, install.py, selftest.py).
"""
