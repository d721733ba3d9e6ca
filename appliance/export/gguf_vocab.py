"""A GGUF file's vocabulary as a Hugging Face tokenizer that tokenises exactly as llama.cpp does.

    appliance models import FILE.gguf          (appliance.export.gguf_import drives this module)

Two vocabulary kinds, the ones the catalogue's families use (``tokenizer.ggml.model``):

- ``llama`` (sentencepiece: Gemma, Mistral, Phi-3): llama.cpp merges the adjacent pair whose
  merged piece has the highest score, leftmost first, and falls back to ``<0xNN>`` byte tokens.
  That is a BPE whose merges are every (left, right) split of every piece, ranked by the merged
  piece's score: built here in one pass over the vocabulary (seconds for 262k pieces). Spaces
  become "▁"; with ``add_space_prefix`` llama.cpp puts "▁" before every text run that starts the
  text or follows a special token, which a per-segment ``Prepend`` normaliser reproduces.
  A ``tokenizer.model`` (sentencepiece proto: pieces, scores, types) is written too, so that
  llama.cpp's converter reads the same vocabulary back when a fine-tuned model is exported.
- ``gpt2`` (byte-level BPE: Llama 3, Qwen 2.5): the file's merges as they are, with the
  pre-tokenizer regex its ``tokenizer.ggml.pre`` names (llama.cpp's table, for the names we
  know); the folder gets the pre-tokenizer marker so export's converter uses the same name.

Control and unknown tokens become special added tokens, user-defined ones (Gemma's whitespace
runs, chat markup) plain added tokens; llama.cpp splits both out of text before tokenising.
"""
from __future__ import annotations

from dataclasses import dataclass

from appliance.workspace import WorkspaceError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"
# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), in the form Hugging Face tokenizer.json uses
PRE_TOKENIZER_REGEX = {
    "llama-bpe": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "qwen2": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "gpt-2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
}


@dataclass
class Vocab:
    kind: str                    # "llama" | "gpt2"
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str] | None
    pre: str | None
    add_space_prefix: bool
    bos: int | None
    eos: int | None
    unk: int | None
    pad: int | None
    eot: int | None
    add_bos: bool
    chat_template: str | None

    def token(self, token_id: int | None) -> str | None:
        return None if token_id is None or not 0 <= token_id < len(self.tokens) else self.tokens[token_id]


def read(g) -> Vocab:
    """The vocabulary of the opened GGUF ``g`` (an ``appliance.export.gguf_weights.GGUFFile``)."""
    kind = g.get("tokenizer.ggml.model")
    if kind not in ("llama", "gpt2"):
        raise WorkspaceError(f"{g.path.name} has a '{kind}' vocabulary; import maps sentencepiece ('llama') and "
                             "byte-level BPE ('gpt2') vocabularies")
    tokens = [str(t) for t in g.require("tokenizer.ggml.tokens")]
    types = [int(t) for t in g.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens))]
    scores = g.get("tokenizer.ggml.scores")
    pre = g.get("tokenizer.ggml.pre")
    if kind == "gpt2" and pre not in PRE_TOKENIZER_REGEX:
        raise WorkspaceError(f"{g.path.name}'s pre-tokenizer '{pre}' is not one import knows "
                             f"({', '.join(PRE_TOKENIZER_REGEX)})")

    def ident(key):
        value = g.get(f"tokenizer.ggml.{key}_token_id")
        return None if value is None else int(value)

    return Vocab(kind, tokens, types, [float(s) for s in scores] if scores is not None else None,
                 [str(m) for m in g.get("tokenizer.ggml.merges", [])] if kind == "gpt2" else None, pre,
                 bool(g.get("tokenizer.ggml.add_space_prefix", kind == "llama")), ident("bos"), ident("eos"),
                 ident("unknown"), ident("padding"), ident("eot"), bool(g.get("tokenizer.ggml.add_bos_token", False)),
                 g.get("tokenizer.chat_template"))


def spm_merges(tokens: list[str], types: list[int], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of every piece into two pieces of the vocabulary, highest merged score first."""
    index = {t: i for i, t in enumerate(tokens) if types[i] != BYTE}
    found = []
    for piece, i in index.items():
        if types[i] in (CONTROL, UNKNOWN, UNUSED) or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                found.append((-scores[i], i, index[left], left, right))
    found.sort()
    return [(left, right) for _, _, _, left, right in found]


def build_tokenizer(v: Vocab):
    """The ``tokenizers.Tokenizer`` for ``v``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {t: i for i, t in enumerate(v.tokens)}
    if len(vocab) != len(v.tokens):
        raise WorkspaceError("the GGUF vocabulary has duplicate tokens; it cannot be mapped one to one")
    if v.kind == "llama":
        if v.scores is None:
            raise WorkspaceError("the GGUF's sentencepiece vocabulary has no scores")
        byte_fallback = BYTE in v.types
        tok = Tokenizer(models.BPE(vocab=vocab, merges=spm_merges(v.tokens, v.types, v.scores),
                                   unk_token=v.token(v.unk), byte_fallback=byte_fallback, fuse_unk=True))
        steps = [normalizers.Prepend(SPACE)] if v.add_space_prefix else []
        tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE)])
        decode = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        if v.add_space_prefix:
            decode.append(decoders.Strip(" ", 1, 0))
        tok.decoder = decoders.Sequence(decode)
    else:
        merges = [tuple(m.split(" ", 1)) for m in v.merges or []]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRE_TOKENIZER_REGEX[v.pre]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
    added = [AddedToken(v.tokens[i], special=v.types[i] != USER_DEFINED, normalized=False)
             for i in range(len(v.tokens)) if v.types[i] in (CONTROL, USER_DEFINED, UNKNOWN)]
    tok.add_tokens(added)
    return tok


def spm_model_proto(v: Vocab) -> bytes:
    """A sentencepiece ``tokenizer.model`` holding ``v``'s pieces, scores and types (for the converter)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    kinds = {NORMAL: pb.ModelProto.SentencePiece.NORMAL, UNKNOWN: pb.ModelProto.SentencePiece.UNKNOWN,
             CONTROL: pb.ModelProto.SentencePiece.CONTROL, USER_DEFINED: pb.ModelProto.SentencePiece.USER_DEFINED,
             UNUSED: pb.ModelProto.SentencePiece.UNUSED, BYTE: pb.ModelProto.SentencePiece.BYTE}
    for token, kind, score in zip(v.tokens, v.types, v.scores or [0.0] * len(v.tokens)):
        model.pieces.add(piece=token, score=score, type=kinds.get(kind, pb.ModelProto.SentencePiece.NORMAL))
    spec = model.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(v.tokens)
    spec.byte_fallback = BYTE in v.types
    spec.unk_id = v.unk if v.unk is not None else -1
    spec.bos_id = v.bos if v.bos is not None else -1
    spec.eos_id = v.eos if v.eos is not None else -1
    spec.pad_id = v.pad if v.pad is not None else -1
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = v.add_space_prefix
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return model.SerializeToString()
