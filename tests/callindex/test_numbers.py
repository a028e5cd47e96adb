"""The user part and number of a URI, from the RFCs' own examples."""
from __future__ import annotations

import pytest

from callindex.numbers import normalise_number, number_query, pattern_to_like, uri_user


@pytest.mark.parametrize("uri,user,number", [
    ("sip:alice@atlanta.com", "alice", None),                       # RFC 3261 §19.1.3
    ("sip:alice:secretword@atlanta.com;transport=tcp", "alice", None),
    ("sips:alice@atlanta.com?subject=project%20x&priority=urgent", "alice", None),
    ("sip:+1-212-555-1212:1234@gateway.com;user=phone", "+1-212-555-1212", "+12125551212"),
    ("sip:alice;day=tuesday@atlanta.com", "alice", None),
    ("tel:+1-201-555-0123", "+1-201-555-0123", "+12015550123"),     # RFC 3966 §6
    ("tel:7042;phone-context=example.com", "7042", "7042"),
    ("tel:863-1234;phone-context=+1-914-555", "863-1234", "8631234"),
    ("sip:%2B4930123456@pbx.example", "+4930123456", "+4930123456"),  # percent-encoded '+'
    ('"Bob" <sip:(030)%20123-45@host>;tag=9', "(030) 123-45", "03012345"),
    ("sip:*72@pbx", "*72", "*72"),
    ("sip:host.example.com", "", None),
    ("", "", None),
    ("mailto:x@y", "", None),
])
def test_user_and_number(uri, user, number):
    assert uri_user(uri) == user
    assert normalise_number(user) == number


def test_a_query_is_normalised_like_the_stored_numbers():
    assert number_query(" 030-123 45 ") == "03012345"
    assert number_query("Alice") == "alice"


@pytest.mark.parametrize("pattern,like", [
    ("+4930*", "+4930%"), ("1??", "1__"), ("1%_", "1\\%\\_"), ("[*]72", "*72"), ("030-12*", "03012%"),
])
def test_role_patterns(pattern, like):
    assert pattern_to_like(pattern) == like
