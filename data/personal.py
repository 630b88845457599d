"""Phone numbers, e-mail addresses and payment card numbers in message text: found (the fidelity report
counts those a twin repeats) and replaced by placeholders (--scrub, before anything is trained on them)."""

import re
from collections import Counter

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
NUMBER = re.compile(r"\+?\d[\d ().-]{7,}\d")  # digits, perhaps grouped by spaces, dashes or brackets
KINDS = ("phone", "email", "card")
PLACEHOLDERS = {kind: f"[{kind}]" for kind in KINDS}  # what --scrub writes in a value's place


def luhn_valid(digits: str) -> bool:
    """The check digit of payment card numbers."""
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def number_kind(digits: str) -> str | None:
    """ "card" for 13 to 19 digits that pass the Luhn check, "phone" for 10 to 15 others, else None."""
    if 13 <= len(digits) <= 19 and luhn_valid(digits):
        return "card"
    return "phone" if 10 <= len(digits) <= 15 else None


def personal_values(text: str) -> dict[str, set[str]]:
    """The phone numbers, e-mail addresses and card-like numbers in `text`, normalised: a phone number as
    its last 10 digits (+7 900 and 8 900 are one number), a card as its digits, an address lower-cased."""
    found = {kind: set() for kind in KINDS}
    found["email"] = {address.lower() for address in EMAIL.findall(text)}
    for number in NUMBER.findall(EMAIL.sub(" ", text)):
        digits = re.sub(r"\D", "", number)
        kind = number_kind(digits)
        if kind:
            found[kind].add(digits[-10:] if kind == "phone" else digits)
    return found


def scrub(text: str, scrubbed: Counter) -> str:
    """`text` with every value personal_values finds replaced by its placeholder ([phone], [email],
    [card]); `scrubbed` counts the replacements by kind."""

    def replace(match: re.Match, kind: str | None) -> str:
        kind = kind or number_kind(re.sub(r"\D", "", match[0]))
        if kind is None:  # a date, an amount: kept
            return match[0]
        scrubbed[kind] += 1
        return PLACEHOLDERS[kind]

    text = EMAIL.sub(lambda match: replace(match, "email"), text)
    return NUMBER.sub(lambda match: replace(match, None), text)
