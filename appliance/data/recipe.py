"""The curation recipe: every knob of ingest -> clean -> pii -> dedup -> validate, from TOML.

    appliance data ingest PATH... --dataset NAME --recipe curation.toml

Example ``curation.toml`` (every field is optional; unknown fields are an error naming the file)::

    max_file_mb = 20
    [clean]
    strip_boilerplate = true
    [pii]
    default_mode = "pseudonymise"          # redact | mask | pseudonymise | drop | keep
    modes = { credit_card = "drop" }       # per detector
    allow = ["support@example.com"]
    [dedup]
    near_threshold = 0.8
    [validate]
    eval_fraction = 0.1
    [canaries]
    count = 1                              # plant 1 canary in 8 training answers (memorisation check)
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from appliance.config import Recipe, load_recipe
from appliance.data.language import LANGUAGES

PIIMode = Literal["redact", "mask", "pseudonymise", "drop", "keep"]
PII_TYPES = ("email", "phone", "credit_card", "iban", "us_ssn", "uk_nino", "ipv4", "ipv6", "person")
ROLE_MAILBOXES = ["info", "support", "help", "helpdesk", "servicedesk", "security", "privacy", "phish", "abuse",
                  "admin", "postmaster", "webmaster", "noreply", "no-reply", "sales", "billing", "finance", "hr",
                  "it", "office", "contact", "enquiries", "accounts", "legal", "compliance", "dpo"]


class CleanConfig(Recipe):
    """Text normalisation and boilerplate removal (documents; pairs only get unicode repair)."""

    fix_mojibake: bool = Field(True, description="Repair mojibake and broken unicode with ftfy.")
    normalise_whitespace: bool = Field(True, description="Collapse runs of spaces and blank lines in documents.")
    strip_boilerplate: bool = Field(True, description="Drop signatures, disclaimers and running headers/footers.")
    repeated_line_min_docs: int = Field(5, ge=2, description="A line seen in this many documents (and in half of "
                                        "those of its format) is a repeated header/footer.")
    min_chars: int = Field(1, ge=1, description="Documents shorter than this after cleaning are rejected.")


class PIIConfig(Recipe):
    """Personal data: what to look for and what to do with each kind."""

    enabled: bool = Field(True, description="Scan every record for personal data.")
    default_mode: PIIMode = Field("pseudonymise", description="What to do with a detected value (see modes).")
    modes: dict[str, PIIMode] = Field(
        default_factory=lambda: {"credit_card": "redact", "iban": "redact", "us_ssn": "redact", "uk_nino": "redact"},
        description=f"Per-detector mode; detectors: {', '.join(PII_TYPES)}.")
    detectors: list[str] = Field(default_factory=lambda: list(PII_TYPES), description="Detectors that run.")
    allow: list[str] = Field(default_factory=list, description="Exact values that are never treated as PII.")
    allow_role_mailboxes: list[str] = Field(default_factory=lambda: list(ROLE_MAILBOXES),
                                            description="E-mail local parts of shared role mailboxes (not personal).")
    key_file: Path | None = Field(None, description="Secret for pseudonyms; default WORKSPACE/secrets/pii.key "
                                                    "(made once, so pseudonyms stay stable across versions).")


class DedupConfig(Recipe):
    """Exact and near-duplicate removal across the corpus and the previous version."""

    exact: bool = Field(True, description="Remove records whose normalised text hashes the same.")
    near: bool = Field(True, description="Remove near-duplicates found with MinHash LSH.")
    near_kinds: list[Literal["document", "chat", "preference"]] = Field(
        default_factory=lambda: ["document"],
        description="Record kinds checked for near-duplicates (pairs that differ in a word may be meant).")
    near_threshold: float = Field(0.8, gt=0, le=1, description="Estimated Jaccard similarity that counts as a duplicate.")
    shingle_words: int = Field(3, ge=1, description="Words per shingle.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations.")


class ValidateConfig(Recipe):
    """Checks on training pairs, and the train/eval split."""

    max_tokens: int = Field(2048, ge=16, description="Longest prompt + answer, in tokens.")
    min_answer_chars: int = Field(1, ge=1, description="Shorter answers are rejected.")
    reject_truncated: bool = Field(True, description="Reject answers that stop mid-word or end with '...'.")
    reject_conflicts: bool = Field(True, description="Reject every pair of a prompt that has different answers.")
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="Share of chat prompts held out to eval.jsonl "
                                 "(0 keeps everything in data.jsonl, as training reads it).")
    seed: str = Field("split-v1", description="Salt of the deterministic split (hash of the prompt).")
    tokenizer: Path | None = Field(None, description="tokenizer.json of the base model; without it tokens are "
                                                     "estimated as characters / 4.")
    languages: list[str] = Field(default_factory=lambda: ["en"],
                                 description="Languages pairs may be in (en, de, fr, es, it, nl, pt; see "
                                             "appliance/data/language.py); [] switches the language check off.")
    language_min_words: int = Field(6, ge=1, description="Texts with fewer words are not language-checked.")

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in LANGUAGES]
        if unknown:
            raise ValueError(f"unknown language(s) {unknown}; the check knows {', '.join(LANGUAGES)}")
        return value


class PairsConfig(Recipe):
    """Which strategies turn documents into instruction-response pairs (``appliance data pairs``)."""

    strategies: list[Literal["headings", "faq", "tickets", "clauses"]] = Field(
        default_factory=lambda: ["faq", "tickets", "headings"],
        description="Strategies, in order of preference; 'clauses' (obligation -> JSON extraction) is opt-in.")
    min_answer_chars: int = Field(30, ge=1, description="Sections with shorter bodies make no pair.")
    max_answer_chars: int = Field(2000, ge=100, description="Sections with longer bodies make no pair.")


class SynthConfig(Recipe):
    """Synthetic expansion (``appliance data synth``): questions from seed passages, hard negatives, checks."""

    seed: int = Field(0, description="Seed of the passage sample and of the model's sampling.")
    max_passages: int = Field(200, ge=1, description="Seed passages used at most (a seeded sample when there are more).")
    questions_per_passage: int = Field(1, ge=1, le=8, description="Questions asked of the model per passage.")
    passage_words: int = Field(120, ge=20, description="Chunk size when passages are cut from documents.")
    min_passage_words: int = Field(12, ge=1, description="Shorter passages are not used as seeds.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature (0 = greedy).")
    max_question_tokens: int = Field(48, ge=8, description="Longest generated question, in model tokens.")
    answer: Literal["extract", "model"] = Field(
        "extract", description="extract: the passage sentences that best match the question (grounded by "
                               "construction); model: the model answers from the passage, then is checked.")
    max_answer_tokens: int = Field(160, ge=8, description="Longest model-written answer (answer = 'model').")
    answer_sentences: int = Field(2, ge=1, description="Sentences in an extracted answer (and rejected answer).")
    negatives_k: int = Field(10, ge=2, description="BM25 hits searched for the source passage and a hard negative.")
    min_question_words: int = Field(4, ge=2, description="Shorter questions are rejected.")
    max_question_words: int = Field(40, ge=4, description="Longer questions are rejected.")
    min_question_overlap: float = Field(0.5, ge=0, le=1, description="Share of the question's content words "
                                        "that must appear in the passage.")
    min_answer_support: float = Field(0.8, ge=0, le=1, description="Share of the answer's content words that "
                                      "must appear in the passage.")
    max_question_copy: float = Field(0.8, gt=0, le=1, description="A question whose content words are this "
                                     "share of a passage sentence's is copied, not asked (rejected).")
    require_retrievable: bool = Field(True, description="Reject a question whose own passage is not among the "
                                      "negatives_k BM25 hits (it does not point at its passage).")


class CanaryConfig(Recipe):
    """Canaries for the memorisation check (appliance/data/canary.py): unique random secrets planted in
    training answers after curation, recorded in the dataset version's manifest."""

    count: int = Field(0, ge=0, description="Canaries to plant (0 = none).")
    records: int = Field(8, ge=1, description="Training records (chat or preference) that carry each canary.")
    controls: int = Field(1, ge=0, description="Canaries of the same shape never planted (the chance baseline).")
    seed: int | None = Field(None, description="For reproducible canaries; default random (a secret that can be "
                                               "derived is no secret).")


class CurationRecipe(Recipe):
    """The data-curation stage as a whole."""

    max_file_mb: float = Field(20, gt=0, description="Larger files are rejected unread.")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    pii: PIIConfig = Field(default_factory=PIIConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    canaries: CanaryConfig = Field(default_factory=CanaryConfig)


def load_curation(path: Path | None) -> CurationRecipe:
    return load_recipe(path, CurationRecipe)
