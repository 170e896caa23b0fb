"""Composite mentions: one coordinated phrase that names several concepts.

"breast and ovarian cancer" names *breast cancer* and *ovarian cancer*; NCBI disease and BC5CDR give such a
mention every concept (`|`), and document-level scoring counts each. The paper's classifier returns one label.
Here a query (already `normalize`d, so "and/or" reads "and or") is cut at its coordinating words and each
part is completed with what the parts share:

- a shared head at the end: "breast and ovarian cancer" -> "breast cancer", "ovarian cancer";
- a shared head at the start: "cancers of the breast and ovary" -> "cancers of the breast", "cancers of the ovary";
- otherwise the parts as they are: "deafness and blindness" -> "deafness", "blindness".

Whether a split is used is the normalizer's decision (`ehrbert.models.hybrid`): only when every part is itself a
confident match, with a threshold chosen on dev, since "and" also joins words inside one concept's name
("Hand and foot syndrome").
"""

from __future__ import annotations

CONJUNCTIONS = frozenset({"and", "or", "nor", "versus", "vs"})


def split_coordination(query: str) -> list[str]:
    """The concept phrases of a coordinated query (see the module docstring); [] when it is not coordinated."""
    parts: list[list[str]] = [[]]
    for word in query.split():
        if word in CONJUNCTIONS:
            if parts[-1]:
                parts.append([])
        else:
            parts[-1].append(word)
    if not parts[-1]:
        parts.pop()
    if len(parts) < 2:
        return []
    first, middle, last = parts[0], parts[1:-1], parts[-1]
    if all(len(p) == 1 for p in [first, *middle]) and len(last) > 1:  # shared head at the end
        head = last[1:]
        phrases = [[*p, *head] for p in [first, *middle]] + [last]
    elif len(first) > 1 and all(len(p) == 1 for p in [*middle, last]):  # shared head at the start
        prefix = first[:-1]
        phrases = [first] + [[*prefix, *p] for p in [*middle, last]]
    else:
        phrases = parts
    return list(dict.fromkeys(" ".join(p) for p in phrases))
