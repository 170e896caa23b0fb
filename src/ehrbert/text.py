"""The paper's text preprocessing: abbreviation expansion with Ab3P, then lowercase and no punctuation.

Every normalizer and the baseline see a mention only through `preprocess_mention`, so that the
training names, the dictionary names and the test mentions meet in one string space:

1. Abbreviations are resolved per document, as DNorm does: Ab3P (`pyab3p`) finds the pairs
   "long form (SF)" in the document, or DNorm's shipped table gives them (`read_abbreviation_table`),
   and every whole-token short form in a mention is replaced by its long form.
2. `normalize` lowercases, deletes apostrophes, turns every other punctuation or symbol character
   (hyphens included) into a space, and collapses whitespace. Letters and digits are kept.

Why hyphens become spaces: names are written both ways ("B-cell lymphoma" / "B cell lymphoma",
"non-Hodgkin" / "non Hodgkin"); a space makes the two spellings equal, deleting the hyphen would not.
Why apostrophes are deleted: possessive eponyms are written with and without them ("Alzheimer's
disease" / "Alzheimers disease", "Wilms' tumor" / "Wilms tumor"; the PubTator copy of the NCBI corpus
even lost some apostrophes that DNorm's Ab3P table still has); deletion makes both "alzheimers disease",
a space would give "alzheimer s disease" for one spelling only.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import TypeVar

import pyab3p

from ehrbert.corpora.records import FormatError

logger = logging.getLogger(__name__)
T = TypeVar("T")

_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`\u00b4]")  # ' ‘ ’ ʼ ` ´
_PUNCTUATION = re.compile(r"[^\w\s]|_")  # anything that is neither a letter/digit nor whitespace
_WHITESPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lowercase, delete apostrophes, replace other punctuation and symbols by a space, collapse whitespace.

    >>> normalize("Alzheimer's disease, type-2 (AD2)")
    'alzheimers disease type 2 ad2'
    """
    text = _APOSTROPHES.sub("", text.lower())
    return collapse_whitespace(_PUNCTUATION.sub(" ", text))


def collapse_whitespace(text: str) -> str:
    """Every run of whitespace becomes one space; no leading or trailing space."""
    return _WHITESPACE.sub(" ", text).strip()


@cache
def _ab3p() -> pyab3p.Ab3p:
    return pyab3p.Ab3p()


def find_abbreviations(text: str) -> dict[str, str]:
    """Ab3P's abbreviations of one document: short form -> long form, both as written in the text.

    Whitespace runs are collapsed first (PubTator turns some non-ASCII characters into spaces, which
    breaks Ab3P's sentence finder). Ab3P's C++ core still reports "Failed to find sentence" on stderr
    for some texts (it rewrites e.g. ``_`` to ``-`` internally and then cannot find the sentence again)
    although it returns the pairs; that output is captured and logged at DEBUG level.
    When Ab3P gives one short form several long forms (it reports each "long (SF)" it finds), the pair
    with the highest Ab3P precision estimate wins, the earliest on a tie. DNorm kept the last one,
    which put "AMN -> and its companion" and "CP -> CLP" into its NCBI table; the highest estimate
    gives "adrenomyeloneuropathy" and "cleft palate" there.
    """
    found, c_stderr = _without_c_stderr(_ab3p().get_abbrs, collapse_whitespace(text))
    if c_stderr:
        logger.debug("Ab3P said: %s", c_stderr.strip())
    best: dict[str, pyab3p.AbbrOut] = {}
    for pair in found:
        if pair.short_form not in best or pair.prec > best[pair.short_form].prec:
            best[pair.short_form] = pair
    return {short: pair.long_form for short, pair in best.items()}


def _without_c_stderr(function: Callable[[str], T], argument: str) -> tuple[T, str]:
    """`function(argument)` run with file descriptor 2 sent to a temporary file: (its result, what it wrote there).

    Redirecting the descriptor, not `sys.stderr`, is what silences C++ code writing to std::cerr.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            result = function(argument)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return result, sink.read().decode("utf-8", errors="replace")


def read_abbreviation_table(path: str | Path) -> dict[str, dict[str, str]]:
    """DNorm's Ab3P table (``PMID<TAB>short form<TAB>long form`` a line) as {PMID: {short: long}}.

    Blank lines are skipped. A line without exactly three non-empty fields, or a short form given two
    different long forms in one document (DNorm refuses those too), raises FormatError.
    """
    table: dict[str, dict[str, str]] = {}
    with open(path, encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 3 or not all(f.strip() for f in fields):
                raise FormatError(path, line_no, f"expected PMID<TAB>short<TAB>long, got {line!r}")
            pmid, short, long = (f.strip() for f in fields)
            known = table.setdefault(pmid, {}).setdefault(short, long)
            if known != long:
                raise FormatError(path, line_no, f"{short!r} already means {known!r} in {pmid}, now {long!r}")
    return table


def expand_abbreviations(mention_text: str, abbreviations: Mapping[str, str]) -> str:
    """Replace each whole-token short form in the mention by its long form (short forms case-sensitive).

    A token is whole when no letter, digit or underscore touches it ("APC-associated" expands, "APCs"
    does not); longer short forms win over shorter ones inside them ("B-NHL" before "NHL"). As in DNorm, a
    short form whose long form is already in the mention ("von Hippel-Lindau (VHL) tumor") is dropped
    together with its parentheses instead of expanded. When a short form occurs in the mention, its
    whitespace runs are also collapsed.

    Unlike DNorm, a long form that holds another short form of the document is expanded in turn: "IDMS"
    (Ab3P: "isolated DMS", where DMS is "diffuse mesangial sclerosis" in the same abstract) becomes
    "isolated diffuse mesangial sclerosis". On the way down each short form is used at most once, so a
    circle of long forms ends.
    """
    present = [short for short in abbreviations if short in mention_text]
    if not present:
        return mention_text
    alternatives = "|".join(re.escape(short) for short in sorted(present, key=len, reverse=True))
    pattern = re.compile(rf"(\()?(?<!\w)({alternatives})(?!\w)(\))?")
    lowered = mention_text.lower()

    def replace(match: re.Match[str]) -> str:
        opened, short, closed = match.group(1) or "", match.group(2), match.group(3) or ""
        long = abbreviations[short]
        if long.lower() in lowered:
            return " " if opened and closed else f"{opened} {closed}"
        others = {other: form for other, form in abbreviations.items() if other != short}
        return opened + expand_abbreviations(long, others) + closed

    return collapse_whitespace(pattern.sub(replace, mention_text))


def preprocess_mention(text: str, abbreviations: Mapping[str, str]) -> str:
    """What every model sees of a mention: its abbreviations expanded, then `normalize`d."""
    return normalize(expand_abbreviations(text, abbreviations))
