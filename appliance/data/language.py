"""A light, offline language check: which language's function words a text is made of.

    appliance data ingest ... --recipe curation.toml      ([validate] languages = ["en"])
    appliance data synth ...                               (generated questions and answers)

No model and no download: each supported language has a list of its most frequent function words
(articles, pronouns, prepositions, auxiliaries). A text's language is the one whose list covers
the largest share of its words. That is reliable for sentences of half a dozen words or more in
ordinary prose and says nothing about shorter texts, so texts under ``min_words`` words are not
judged. A text in which almost no word is a function word of any known language (code, tables,
word salad from a tiny model) is reported as "no recognisable language".

Supported: en, de, fr, es, it, nl, pt. A site lists the languages it accepts in its curation
recipe; an empty list switches the check off.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset("""the a an and or but of to in on at for with from by about as into than this that these those
        is are was were be been being am has have had do does did will would can could should may might must shall
        it its they them their there here what which who whom whose when where why how not no yes all any each
        every some if then so our we you your he she his her i my me us after before up out over under between
        also only more most other such very just one two new per""".split()),
    "de": frozenset("""der die das den dem des ein eine einer eines einem einen und oder aber von zu im in auf
        mit für bei aus nach vor über unter ist sind war waren sein wird werden wurde hat haben hatte kann können
        muss müssen soll sollen nicht kein keine ich du er sie es wir ihr wie was wer wo wann warum auch nur noch
        sich dass wenn als zum zur am bis durch gegen ohne um dieser diese dieses jeder jede alle mehr sehr""".split()),
    "fr": frozenset("""le la les un une des du de et ou mais en dans sur avec pour par sans sous est sont était
        être a ont avait avoir fait peut doit ne pas plus je tu il elle nous vous ils elles ce cette ces qui que
        quoi dont où quand comment pourquoi au aux son sa ses leur leurs notre votre se si aussi tout tous très
        été même entre après avant""".split()),
    "es": frozenset("""el la los las un una unos unas y o pero de del en con por para sin sobre es son era fue
        ser estar está están ha han había puede debe no sí yo tú él ella nosotros ellos ellas que qué quien cuando
        cuándo donde dónde como cómo porque al lo le les se su sus este esta estos estas muy más también todo
        todos entre después antes hasta""".split()),
    "it": frozenset("""il lo la i gli le un uno una e o ma di del della dei delle in con per su da tra fra è sono
        era essere ha hanno aveva può deve non sì io tu lui lei noi voi loro che chi quando dove come perché al
        allo alla ai agli alle nel nella si suo sua suoi questo questa questi queste molto più anche tutto tutti
        dopo prima""".split()),
    "nl": frozenset("""de het een en of maar van in op met voor door bij uit naar over onder is zijn was waren
        wordt worden werd heeft hebben had kan kunnen moet moeten zal zullen niet geen ik jij je hij zij ze wij we
        jullie wat wie waar wanneer waarom hoe ook nog dat dit deze die er als aan te om tot dan zo al alle meer
        zeer""".split()),
    "pt": frozenset("""o a os as um uma uns umas e ou mas de do da dos das em no na nos nas com por para sem sobre
        é são era foi ser estar está estão tem têm pode deve não sim eu tu ele ela nós eles elas que quem quando
        onde como porque ao aos se seu sua seus suas este esta estes estas muito mais também todo todos entre
        depois antes até""".split()),
}
LANGUAGES = tuple(STOPWORDS)
WORD = re.compile(r"[^\W\d_]+")
MIN_WORDS = 6
MIN_SHARE = 0.08  # below this share of function words, a text is in no language we know
TIE = 0.85  # an accepted language within this fraction of the best score wins the tie


@dataclass(frozen=True)
class Guess:
    language: str | None  # None: no recognisable language
    share: float  # share of the words that are function words of ``language``
    words: int

    def describe(self) -> str:
        if self.language is None:
            return f"no recognisable language (at most {self.share:.0%} of {self.words} words are function words)"
        return f"looks like {self.language} ({self.share:.0%} of {self.words} words are {self.language} function words)"


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def guess(text: str, prefer: tuple[str, ...] | list[str] = ()) -> Guess:
    """The best-scoring language; a preferred one wins when it scores within ``TIE`` of the best."""
    tokens = words(text)
    if not tokens:
        return Guess(None, 0.0, 0)
    scores = {lang: sum(t in stop for t in tokens) / len(tokens) for lang, stop in STOPWORDS.items()}
    best = max(scores, key=lambda lang: scores[lang])
    top = scores[best]
    if top < MIN_SHARE:
        return Guess(None, top, len(tokens))
    for lang in prefer:
        if lang in scores and scores[lang] >= TIE * top:
            return Guess(lang, scores[lang], len(tokens))
    return Guess(best, top, len(tokens))


def check(text: str, allowed: list[str] | tuple[str, ...], min_words: int = MIN_WORDS,
          unknown_is_error: bool = True) -> str | None:
    """None when ``text`` is in an allowed language (or too short to judge), else why not.

    With ``unknown_is_error=False`` only a text that positively looks like another known language
    is refused (for terse answers such as "Replaced toner, cleared paper path, printer OK")."""
    if not allowed:
        return None
    unknown = [lang for lang in allowed if lang not in STOPWORDS]
    if unknown:
        raise ValueError(f"no language check for {unknown}; supported: {', '.join(LANGUAGES)}")
    if len(words(text)) < min_words:
        return None
    g = guess(text, prefer=tuple(allowed))
    if g.language in allowed or (g.language is None and not unknown_is_error):
        return None
    return f"{g.describe()}; allowed: {', '.join(allowed)}"
