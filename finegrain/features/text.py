"""Terms of an item description: the vocabulary of the content index and of preferred-term features."""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z]+")
# Words that say nothing about what the product is (sizes, packs, joiners).
STOP_WORDS = frozenset(
    """a an and the of in on with for to by at from set pack box sets small large mini big
    assorted design designs asst lot cm mm""".split()
)


def description_terms(description: str | None) -> list[str]:
    """Normalised terms in order of first appearance: lower case, letters only, no stop words."""
    if not description:
        return []
    seen: dict[str, None] = {}
    for word in _WORD.findall(description.lower()):
        if len(word) > 2 and word not in STOP_WORDS:
            seen.setdefault(word, None)
    return list(seen)
