"""Read the verdict a worker's final message opens with. Pure: no Django models, no I/O.

A message "opens with" a verdict when its first non-blank line (or, failing that, its last one)
starts with the verdict word after any decoration: markdown (`**DONE**`, `## Verdict: REVIEW`),
emoji (`✅ DONE —`), brackets (`[QUESTION]`), quotes or white space. Without a label the word must
be in capitals, so prose such as "Failed to reach the API" is not read as a verdict; after a label
(`Verdict - done:`) any case counts. What the rest of the message says (max_turns, budgets, …)
never changes the verdict.
"""

import re

DONE = "done"
REVIEW = "review"
QUESTION = "question"
APPROVED = "approved"
CHANGES_REQUESTED = "changes_requested"
PARTIAL = "partial"
FAILED = "failed"

_WORDS = {
    "DONE": DONE,
    "REVIEW": REVIEW,
    "QUESTION": QUESTION,
    "APPROVED": APPROVED,
    "CHANGES_REQUESTED": CHANGES_REQUESTED,
    "PARTIAL": PARTIAL,
    "FAILED": FAILED,
}
_WORD = r"(?P<word>done|review|question|approved|changes[ _-]requested|partial|failed)(?![\w])"
_DECORATION = r"[\W_]*"  # anything that is not a letter or digit: markdown, emoji, quotes, brackets
_LABEL = r"(?P<label>(?:final\s+)?(?:verdict|status|result|outcome)\s*[:=\-–—]*)"
_PATTERN = re.compile(rf"^{_DECORATION}(?:{_LABEL}{_DECORATION})?{_WORD}", re.IGNORECASE)

# Only this much of a line is examined: a verdict sits at its start.
_LINE_PREFIX = 200


def _verdict_of_line(line):
    match = _PATTERN.match(line[:_LINE_PREFIX])
    if not match:
        return None
    word = match.group("word")
    if not match.group("label") and word != word.upper():
        return None
    return _WORDS[re.sub(r"[ \-]", "_", word.upper())]


def parse_verdict(text):
    """Return the verdict the message opens (or, failing that, closes) with, or None."""
    if not isinstance(text, str):
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    first = _verdict_of_line(lines[0])
    if first or len(lines) == 1:
        return first
    return _verdict_of_line(lines[-1])
