"""data/personal.py: phone numbers, e-mail addresses and card numbers are found, normalised, and scrubbed."""

from collections import Counter

from data.personal import luhn_valid, personal_values, scrub

TEXT = "8 912 345 67 89, +79123456789, Olga.P@Example.org, 4111-1111-1111-1111, 4111 1111 1111 1112, 2024"


def test_personal_values_are_found_and_normalised():
    found = personal_values(TEXT)
    assert found == {"phone": {"9123456789"}, "email": {"olga.p@example.org"}, "card": {"4111111111111111"}}
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_scrub_replaces_every_value_found_and_counts_them():
    scrubbed = Counter()
    text = scrub(TEXT, scrubbed)
    assert text == "[phone], [phone], [email], [card], 4111 1111 1111 1112, 2024"
    assert scrubbed == {"phone": 2, "email": 1, "card": 1}
    assert personal_values(text) == {"phone": set(), "email": set(), "card": set()}
    assert scrub("see you at 10:30 on 12.05.2024, 1500 rub", Counter()) == "see you at 10:30 on 12.05.2024, 1500 rub"
