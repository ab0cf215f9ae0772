"""Property tests: the name rule, the exact token grammar, and single-character token tampering.

Every oracle here is written without regular expressions, so it cannot share a bug with the
library's patterns (``\\d`` matching Arabic-Indic digits, ``$`` matching before a final newline,
case-insensitive flags, ...).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import repolib
from repolib import keys
from repolib.names import check_name

LOWER = "abcdefghijklmnopqrstuvwxyz"
UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"
BASE62 = DIGITS + UPPER + LOWER
NAME_CHARS = LOWER + DIGITS + "-"
KEY_ID_LEN = 12
SECRET_LEN = 43
TOKEN_LEN = len("rpk_") + KEY_ID_LEN + 1 + SECRET_LEN

# Look-alikes a careless pattern or a normalising parser would let through.
TRICKY = [
    "\u0663",  # ARABIC-INDIC DIGIT THREE: str.isdigit() and \d say yes
    "\uff11",  # FULLWIDTH DIGIT ONE
    "\uff41",  # FULLWIDTH LATIN SMALL LETTER A
    "\uff21",  # FULLWIDTH LATIN CAPITAL LETTER A
    "\u0430",  # CYRILLIC SMALL LETTER A
    "\u00e9",  # e with acute: isalpha(), islower()
    "\u0131",  # dotless i: upper() is "I"
    "\u017f",  # long s: upper() is "S"
    "\u212a",  # KELVIN SIGN: lower() is "k"
    "\u00b2",  # SUPERSCRIPT TWO: isdigit()
    "\u2013",  # EN DASH
    "\u00a0",  # NO-BREAK SPACE
    "\u200b",  # ZERO WIDTH SPACE
    "\ufeff",  # BOM
    " ",
    "\t",
    "\n",
    "\r",
    "\x00",
    "_",
    "-",
    ".",
    "/",
]


# -- oracles --------------------------------------------------------------------------------


def name_ok(name: object) -> bool:
    return (
        isinstance(name, str)
        and 3 <= len(name) <= 63
        and name[0] in LOWER
        and all(c in NAME_CHARS for c in name)
    )


def token_ok(token: object) -> bool:
    if not isinstance(token, str) or len(token) != TOKEN_LEN:
        return False
    if token[:4] != "rpk_" or token[4 + KEY_ID_LEN] != "_":
        return False
    key_id, secret = token[4 : 4 + KEY_ID_LEN], token[4 + KEY_ID_LEN + 1 :]
    return all(c in BASE62 for c in key_id) and all(c in BASE62 for c in secret)


# -- strategies -----------------------------------------------------------------------------

ODD_OBJECTS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.binary(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(b"analytics"),
    st.just(bytearray(b"rpk_")),
    st.just(object()),
)

near_name = st.text(
    alphabet=st.sampled_from(list(NAME_CHARS + "A_Z. ") + TRICKY), min_size=0, max_size=70
)
valid_name = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(LOWER),
    st.text(alphabet=NAME_CHARS, min_size=2, max_size=62),
)


def b62(n: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=BASE62, min_size=n, max_size=n)


valid_token = st.builds(keys.format_token, b62(KEY_ID_LEN), b62(SECRET_LEN))


@st.composite
def damaged_token(draw: st.DrawFn) -> str:
    """A well-formed token with one plausible mistake applied."""
    token = draw(valid_token)
    how = draw(
        st.sampled_from(
            ["replace", "insert", "delete", "pad", "case", "prefix", "truncate", "extend"]
        )
    )
    if how == "pad":
        pad = draw(st.sampled_from([" ", "\n", "\r\n", "\t", "\u00a0", "\ufeff", "\x00"]))
        where = draw(st.sampled_from(["left", "right", "both"]))
        return (pad if where != "right" else "") + token + (pad if where != "left" else "")
    if how == "case":
        return draw(
            st.sampled_from(
                [
                    token.upper(),
                    token.lower(),
                    token.swapcase(),
                    "RPK_" + token[4:],
                    "Rpk_" + token[4:],
                ]
            )
        )
    if how == "prefix":
        return (
            draw(st.sampled_from(["rpk-", "rpk", "rp_", "rpkk_", "sk_", "", "rpk__"])) + token[4:]
        )
    if how == "truncate":
        return token[: draw(st.integers(0, TOKEN_LEN - 1))]
    if how == "extend":
        return token + draw(st.text(alphabet=BASE62 + "_", min_size=1, max_size=3))
    i = draw(st.integers(0, TOKEN_LEN - 1))
    if how == "delete":
        return token[:i] + token[i + 1 :]
    c = draw(st.one_of(st.sampled_from(TRICKY), st.characters(), st.sampled_from(BASE62)))
    if how == "insert":
        return token[:i] + c + token[i:]
    return token[:i] + c + token[i + 1 :]


# -- (a) names ------------------------------------------------------------------------------


def _check_name_agrees(name: object) -> None:
    if name_ok(name):
        assert check_name(name, "repository name") == name
    else:
        with pytest.raises(repolib.ConfigError) as info:
            check_name(name, "repository name")
        assert "repository name" in str(info.value)


@given(st.one_of(st.text(), near_name, valid_name, ODD_OBJECTS))
@example("abc")
@example("a" * 63)
@example("a" * 64)
@example("ab")
@example("a--")
@example("a-1")
@example("1ab")
@example("-ab")
@example("Abc")
@example("abc\n")
@example("abc ")
@example(" abc")
@example("ab\u0663")
@example("\uff41bc")
@example("ab\u212a")
@example("ab_c")
@example("")
@settings(max_examples=400)
def test_check_name_accepts_exactly_the_rule(name: object) -> None:
    _check_name_agrees(name)


@given(valid_name)
def test_every_name_built_from_the_rule_is_accepted(name: str) -> None:
    assert name_ok(name)
    assert check_name(name) == name


# -- (b) tokens -----------------------------------------------------------------------------


def _parse_agrees(token: object) -> None:
    if token_ok(token):
        assert isinstance(token, str)
        assert keys.parse_token(token) == (token[4:16], token[17:])
    else:
        with pytest.raises(repolib.InvalidKey):
            keys.parse_token(token)


@given(
    st.one_of(
        st.text(),
        st.text(alphabet=BASE62 + "_rpkRPK", min_size=55, max_size=65),
        valid_token,
        damaged_token(),
        ODD_OBJECTS,
    )
)
@settings(max_examples=500)
def test_parse_token_accepts_exactly_the_grammar(token: object) -> None:
    _parse_agrees(token)


@given(damaged_token())
@settings(max_examples=300)
def test_damaged_tokens_are_rejected_unless_still_well_formed(token: str) -> None:
    # A replacement by another base62 character leaves a well-formed (different) token; the
    # oracle decides, the parser must agree.
    _parse_agrees(token)


GOOD = keys.format_token("A" * 12, "z" * 43)


@pytest.mark.parametrize(
    "bad",
    [
        GOOD + "\n",
        GOOD + "\r\n",
        " " + GOOD,
        GOOD + " ",
        "\t" + GOOD,
        GOOD + "\x00",
        "\ufeff" + GOOD,
        "RPK_" + GOOD[4:],
        "Rpk_" + GOOD[4:],
        GOOD.upper(),
        GOOD[:-1],
        GOOD + "z",
        GOOD[:4] + GOOD[5:],
        GOOD[:16] + "-" + GOOD[17:],
        GOOD[:16] + GOOD[17:],
        GOOD[:16] + "__" + GOOD[17:],
        GOOD[:5] + "\u0663" + GOOD[6:],
        GOOD[:20] + "\u0663" + GOOD[21:],
        GOOD[:5] + "\uff21" + GOOD[6:],
        GOOD[:20] + "\uff5a" + GOOD[21:],
        GOOD[:20] + "\u212a" + GOOD[21:],
        GOOD[:20] + "\u0131" + GOOD[21:],
        "rpk_" + "A" * 11 + "_" + "z" * 44,
        "rpk_" + "A" * 13 + "_" + "z" * 42,
        "rpk_" + "A" * 12 + "_" + "z" * 42,
        "rpk_" + "A" * 12 + "_" + "z" * 44,
        "",
        "rpk_",
        "rpk__",
        None,
        b"",
        GOOD.encode(),
        0,
        ["rpk_"],
    ],
    ids=repr,
)
def test_parse_token_rejects_near_misses(bad: object) -> None:
    assert not token_ok(bad)
    with pytest.raises(repolib.InvalidKey):
        keys.parse_token(bad)


def test_parse_token_accepts_the_plain_form() -> None:
    assert keys.parse_token(GOOD) == ("A" * 12, "z" * 43)


@given(b62(KEY_ID_LEN), b62(SECRET_LEN))
def test_format_then_parse_round_trips(key_id: str, secret: str) -> None:
    token = keys.format_token(key_id, secret)
    assert token_ok(token)
    assert keys.parse_token(token) == (key_id, secret)


def test_generated_tokens_round_trip() -> None:
    seen = set()
    for _ in range(300):
        key_id, secret = keys.new_key_id(), keys.new_secret()
        assert len(key_id) == KEY_ID_LEN and len(secret) == SECRET_LEN
        assert set(key_id) <= set(BASE62) and set(secret) <= set(BASE62)
        token = keys.format_token(key_id, secret)
        assert token_ok(token)
        assert keys.parse_token(token) == (key_id, secret)
        seen.add(secret)
    assert len(seen) == 300
    assert 62**SECRET_LEN > 2**256  # the secret carries 256 bits


# -- (c) tampering with a real token --------------------------------------------------------


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One real catalog per module: (home, token of a READ key on repository 'props')."""
    home = tmp_path_factory.mktemp("props") / "home"
    with pytest.MonkeyPatch.context() as mp:  # clean_env is function-scoped; be clean here too
        for name in list(os.environ):
            if name.startswith(("REPOLIB_", "AWS_", "GOOGLE_", "AZURE_", "OPENAI_")):
                mp.delenv(name, raising=False)
        cat = repolib.Catalog(home)
        cat.init()
        repo = cat.create_repository("props")
        repo.add_storage("scratch", "memory://props-scratch")
        token = repo.create_key("prop-key", "read").token
    assert repolib.open("props", key=token, home=home).key_id == token[4:16]
    yield home, token
    cat.close()


@given(
    position=st.integers(0, TOKEN_LEN - 1),
    replacement=st.one_of(st.sampled_from(BASE62), st.sampled_from(TRICKY), st.characters()),
)
@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_single_character_change_is_rejected(
    issued: tuple[Path, str], position: int, replacement: str
) -> None:
    home, token = issued
    if token[position] == replacement:
        replacement = "0" if token[position] != "0" else "1"
    mutated = token[:position] + replacement + token[position + 1 :]
    assert mutated != token and len(mutated) == len(token)
    with pytest.raises(repolib.InvalidKey):
        repolib.open("props", key=mutated, home=home)


def test_every_position_is_checked(issued: tuple[Path, str]) -> None:
    """Deterministic sweep: each position changed to another base62 character, its case
    swapped, and a look-alike — all refused, while the original still opens."""
    home, token = issued
    for i, c in enumerate(token):
        variants = {
            BASE62[(BASE62.index(c) + 1) % 62] if c in BASE62 else "0",
            c.swapcase(),
            "\uff10" if c in DIGITS else "\u0430",
        }
        variants.discard(c)
        for v in variants:
            with pytest.raises(repolib.InvalidKey):
                repolib.open("props", key=token[:i] + v + token[i + 1 :], home=home)
    assert repolib.open("props", key=token, home=home).access is repolib.Access.READ
