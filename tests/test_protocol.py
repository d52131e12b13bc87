"""chat.protocol: frames in, commands out, every field rule of docs/protocol.md."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat import protocol
from chat.protocol import (
    NAMES_DEFAULT_LIMIT,
    Address,
    ChatError,
    Command,
    History,
    Ping,
    Send,
    Sync,
    Who,
    clean_address,
    clean_body,
    clean_group_name,
    clean_username,
    decode_frame,
    encode,
    error_event,
    parse_command,
    read_ref,
)

MAX_BODY = 4000
MAX_FRAME = 65536

OK_GROUP_NAMES = [
    "A",
    "general",
    "x" * 64,
    "a b",
    "under_score",
    "dash-dot.name",
    "2026",
    ".",
    "-",
    "_",
    "Ünïcödé",
    "日本語",
    "العربية",
    "Ελληνικά",
    "кириллица",
    "עברית",
    "हिन्दी",  # vowel signs and virama are combining marks
    "สวัสดี",  # Thai vowel and tone marks are combining marks
    "தமிழ்",
    "١٢٣",  # Arabic-Indic digits
]

BAD_GROUP_NAMES = [
    "",
    " ",
    " leading",
    "trailing ",
    "x" * 65,
    "a/b",
    "a#b",
    "a,b",
    "a!b",
    "a@b",
    "a\nb",
    "a\tb",
    "a\x00b",
    "a\u00a0b",  # only the plain space counts as space
    "a\u200bb",
    "😀",
    "a😀",
    "\u0301a",  # a combining mark with nothing to combine with
]


def parse(**data: Any) -> Command:
    return parse_command(data, max_body_chars=MAX_BODY)


def refusal(**data: Any) -> str:
    """The error code with which `parse_command` refuses `data`."""
    with pytest.raises(ChatError) as info:
        parse_command(data, max_body_chars=MAX_BODY)
    assert info.value.message
    return info.value.code


def frame_refusal(text: str, max_bytes: int = MAX_FRAME) -> str:
    with pytest.raises(ChatError) as info:
        decode_frame(text, max_bytes=max_bytes)
    assert info.value.message
    return info.value.code


# -- decode_frame ------------------------------------------------------------


def test_decode_frame_returns_the_json_object():
    assert decode_frame('{"type": "ping", "ref": "1"}', max_bytes=MAX_FRAME) == {
        "type": "ping",
        "ref": "1",
    }


@pytest.mark.parametrize("text", ["", " ", "{", "hello", "{'type': 'ping'}", '{"a": 1,}', "\x00"])
def test_text_that_is_not_json_is_bad_json(text):
    assert frame_refusal(text) == protocol.BAD_JSON


@pytest.mark.parametrize("text", ["[]", '["ping"]', '"ping"', "1", "null", "true", "1.5"])
def test_json_that_is_not_an_object_is_bad_json(text):
    assert frame_refusal(text) == protocol.BAD_JSON


@pytest.mark.parametrize(
    "text",
    [
        '{"since": NaN}',
        '{"since": Infinity}',
        '{"since": -Infinity}',
        '{"since": 1e400}',
    ],
)
def test_non_finite_numbers_are_bad_json(text):
    assert frame_refusal(text) == protocol.BAD_JSON


@pytest.mark.parametrize(
    "text",
    [
        '{"body": "\\ud800"}',  # escaped lone high surrogate
        '{"body": "\\udc00x"}',  # escaped lone low surrogate
        '{"body": "\ud800"}',  # the surrogate itself, as a Python str may carry it
    ],
)
def test_lone_surrogates_are_bad_json(text):
    assert frame_refusal(text) == protocol.BAD_JSON


def test_escaped_surrogate_pairs_decode_to_the_character():
    assert decode_frame('{"body": "\\ud83d\\ude00"}', max_bytes=MAX_FRAME) == {"body": "😀"}


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_deep_nesting_is_bad_json_not_a_crash(opening):
    text = '{"x":' + opening * 100_000
    assert frame_refusal(text, max_bytes=10**7) == protocol.BAD_JSON


def test_frame_of_exactly_the_byte_limit_is_accepted():
    text = '{"body": "' + "é" * 500 + '"}'
    size = len(text.encode())
    assert decode_frame(text, max_bytes=size)["body"] == "é" * 500


def test_frame_over_the_limit_is_too_large_counting_bytes_not_characters():
    text = '{"body": "' + "é" * 500 + '"}'  # 512 characters, 1012 bytes
    assert len(text) < 1011
    assert frame_refusal(text, max_bytes=1011) == protocol.TOO_LARGE


def test_frame_over_the_limit_is_too_large_even_when_not_json():
    assert frame_refusal("x" * 2000, max_bytes=1024) == protocol.TOO_LARGE


# -- parse_command: type, ref, unknown fields ---------------------------------


def test_missing_type_is_bad_command():
    assert refusal(ref="1") == protocol.BAD_COMMAND


@pytest.mark.parametrize("kind", [None, 1, True, ["ping"], {"ping": 1}, 1.5])
def test_type_that_is_not_a_string_is_bad_command(kind):
    assert refusal(type=kind) == protocol.BAD_COMMAND


@pytest.mark.parametrize(
    "kind", ["", "PING", "Ping", "pong", "message", "hello", "batch", "x" * 999]
)
def test_unknown_type_is_bad_command(kind):
    assert refusal(type=kind) == protocol.BAD_COMMAND


def test_unknown_type_error_message_stays_short():
    with pytest.raises(ChatError) as info:
        parse(type="x" * 10_000)
    assert len(info.value.message) < 200


def test_unknown_fields_are_ignored():
    assert parse(type="ping", ref="7", extra=[1, 2], body=None, to="nobody") == Ping(ref="7")


@pytest.mark.parametrize("ref", ["", "1", "x" * 64, "😀" * 64, "ünï çödé"])
def test_ref_of_at_most_64_characters_is_kept(ref):
    assert parse(type="ping", ref=ref).ref == ref


def test_command_without_ref_has_none():
    assert parse(type="ping").ref is None


@pytest.mark.parametrize("ref", ["x" * 65, "😀" * 65, 1, 1.5, True, None, ["1"], {"r": 1}])
def test_ref_too_long_or_not_a_string_is_bad_command(ref):
    assert refusal(type="ping", ref=ref) == protocol.BAD_COMMAND


def test_read_ref_returns_only_a_usable_ref():
    assert read_ref({"ref": "abc"}) == "abc"
    assert read_ref({"ref": "x" * 65}) is None
    assert read_ref({"ref": 5}) is None
    assert read_ref({}) is None


def test_who_and_ping_need_nothing_but_type():
    assert parse(type="ping", ref="r") == Ping(ref="r")
    # Without `after` and `limit` (1.1), `who` lists the first page: everyone.
    assert parse(type="who", ref="r") == Who(ref="r", limit=NAMES_DEFAULT_LIMIT)
    assert parse(type="who", after="bob", limit=2) == Who(after="bob", limit=2)


# -- send and addresses ------------------------------------------------------


def test_send_to_a_user():
    assert parse(type="send", to={"user": "bob"}, body="hi", ref="1") == Send(
        ref="1", to=Address("user", "bob"), body="hi"
    )


def test_send_to_a_group():
    command = parse(type="send", to={"group": "A"}, body="hi")
    assert command.to == Address("group", "A")


def test_send_to_everyone():
    command = parse(type="send", to={"all": True}, body="hi")
    assert command.to == Address("all")


@pytest.mark.parametrize("missing", ["to", "body"])
def test_send_without_to_or_body_is_bad_command(missing):
    data = {"type": "send", "to": {"all": True}, "body": "hi"}
    del data[missing]
    assert refusal(**data) == protocol.BAD_COMMAND


@pytest.mark.parametrize(
    "to",
    [
        None,
        "bob",
        ["user", "bob"],
        5,
        True,
        {},
        {"user": "bob", "group": "A"},
        {"room": "A"},
        {"all": False},
        {"all": 1},
        {"all": "yes"},
        {"all": None},
        {"user": 5},
        {"user": None},
        {"user": ["bob"]},
        {"group": 5},
        {"group": None},
        {"group": {"name": "A"}},
    ],
)
def test_malformed_address_is_bad_command(to):
    assert refusal(type="send", to=to, body="hi") == protocol.BAD_COMMAND


@pytest.mark.parametrize("name", ["bob", "a.b@c+d-e_f", "zoë", "名前", "x" * 150, "1"])
def test_usernames_follow_djangos_rule(name):
    assert clean_username(name) == name


@pytest.mark.parametrize("name", ["", "x" * 151, "bad name", "bob\n", "a/b", "a\x00", "😀"])
def test_username_no_user_can_have_is_no_such_user(name):
    with pytest.raises(ChatError) as info:
        clean_username(name)
    assert info.value.code == protocol.NO_SUCH_USER


def test_no_such_user_message_is_bounded():
    with pytest.raises(ChatError) as info:
        clean_username("!" * 100_000)
    assert len(info.value.message) < 300


def test_clean_address_names_the_field_in_its_message():
    with pytest.raises(ChatError) as info:
        clean_address("bob", "of")
    assert info.value.code == protocol.BAD_COMMAND
    assert "of" in info.value.message


def test_address_as_json_round_trips_through_clean_address():
    for address in (Address("user", "bob"), Address("group", "A b"), Address("all")):
        assert clean_address(address.as_json(), "to") == address


# -- group names ---------------------------------------------------------------


@pytest.mark.parametrize("name", OK_GROUP_NAMES)
def test_group_names_of_letters_of_any_script_digits_space_and_underscore_dash_dot(name):
    assert clean_group_name(name) == name
    assert parse(type="join", group=name).group == name


@pytest.mark.parametrize("name", BAD_GROUP_NAMES)
def test_group_names_outside_the_rules_are_bad_group(name):
    assert refusal(type="join", group=name) == protocol.BAD_GROUP


@pytest.mark.parametrize("value", [None, 5, True, ["A"], {"name": "A"}])
def test_group_that_is_not_a_string_is_bad_command(value):
    assert refusal(type="join", group=value) == protocol.BAD_COMMAND


def test_group_names_are_nfc_normalised():
    decomposed = "Cafe\u0301"
    assert clean_group_name(decomposed) == "Café"


def test_group_name_length_is_counted_after_normalisation():
    assert clean_group_name("e\u0301" * 64) == "é" * 64


@pytest.mark.parametrize("kind", ["join", "leave", "members"])
def test_group_commands_need_a_valid_group(kind):
    parsed = parse(type=kind, group="A", ref="1")
    assert (parsed.type, parsed.ref, parsed.group) == (kind, "1", "A")
    assert refusal(type=kind) == protocol.BAD_COMMAND
    assert refusal(type=kind, group=" A") == protocol.BAD_GROUP
    assert refusal(type=kind, group=1) == protocol.BAD_COMMAND


def test_group_address_follows_the_group_name_rules():
    assert refusal(type="send", to={"group": "a/b"}, body="hi") == protocol.BAD_GROUP
    assert refusal(type="history", of={"group": ""}) == protocol.BAD_GROUP


# -- bodies --------------------------------------------------------------------


def test_body_of_exactly_the_limit_is_accepted():
    assert parse(type="send", to={"all": True}, body="x" * MAX_BODY).body == "x" * MAX_BODY


def test_body_over_the_limit_is_too_large():
    assert refusal(type="send", to={"all": True}, body="x" * (MAX_BODY + 1)) == protocol.TOO_LARGE


def test_body_length_counts_code_points_not_bytes():
    body = "😀" * MAX_BODY  # 16000 bytes of UTF-8, 8000 of UTF-16
    assert parse(type="send", to={"all": True}, body=body).body == body
    assert refusal(type="send", to={"all": True}, body=body + "😀") == protocol.TOO_LARGE


def test_body_length_counts_code_points_not_grapheme_clusters():
    family = "👨\u200d👩\u200d👧"  # one picture, five code points
    assert clean_body(family * (MAX_BODY // 5), max_chars=MAX_BODY)
    with pytest.raises(ChatError) as info:
        clean_body(family * (MAX_BODY // 5) + "x", max_chars=MAX_BODY)
    assert info.value.code == protocol.TOO_LARGE


def test_body_limit_comes_from_the_caller():
    assert clean_body("x" * 10, max_chars=10) == "x" * 10
    with pytest.raises(ChatError) as info:
        clean_body("x" * 11, max_chars=10)
    assert info.value.code == protocol.TOO_LARGE


@pytest.mark.parametrize("body", ["", " ", "   ", "\n\t\r ", "\u3000", "\u2003\u00a0"])
def test_empty_or_whitespace_body_is_empty_body(body):
    assert refusal(type="send", to={"all": True}, body=body) == protocol.EMPTY_BODY


@pytest.mark.parametrize("body", ["\x00", "a\x00b", " \x00 "])
def test_body_with_nul_is_bad_command(body):
    assert refusal(type="send", to={"all": True}, body=body) == protocol.BAD_COMMAND


@pytest.mark.parametrize("body", [None, 5, 1.5, True, ["hi"], {"text": "hi"}])
def test_body_that_is_not_a_string_is_bad_command(body):
    assert refusal(type="send", to={"all": True}, body=body) == protocol.BAD_COMMAND


def test_body_is_kept_exactly_as_sent():
    body = "  <b>hi</b>\n\t'\"\\ \u200b e\u0301 \x01 "
    assert parse(type="send", to={"all": True}, body=body).body == body


# -- history -----------------------------------------------------------------


def test_history_defaults_to_50_newest_without_before():
    assert parse(type="history", of={"user": "bob"}) == History(
        of=Address("user", "bob"), before=None, limit=50
    )


def test_history_takes_before_and_limit():
    command = parse(type="history", of={"all": True}, before=10, limit=100, ref="h")
    assert (command.ref, command.of, command.before, command.limit) == (
        "h",
        Address("all"),
        10,
        100,
    )


def test_history_before_and_limit_of_null_mean_not_given():
    command = parse(type="history", of={"all": True}, before=None, limit=None)
    assert (command.before, command.limit) == (None, 50)


def test_history_without_of_is_bad_command():
    assert refusal(type="history", limit=5) == protocol.BAD_COMMAND


@pytest.mark.parametrize("limit", [1, 2, 99, 100])
def test_history_limit_between_1_and_100_is_accepted(limit):
    assert parse(type="history", of={"all": True}, limit=limit).limit == limit


@pytest.mark.parametrize(
    "limit", [0, -1, 101, 2**63, 2**64 - 1, True, False, 1.0, 10.5, "10", [10], 1e30]
)
def test_history_limit_out_of_range_or_not_an_integer_is_bad_command(limit):
    assert refusal(type="history", of={"all": True}, limit=limit) == protocol.BAD_COMMAND


@pytest.mark.parametrize("before", [1, 12345, protocol.MAX_ID])
def test_history_before_any_positive_64_bit_id_is_accepted(before):
    assert parse(type="history", of={"all": True}, before=before).before == before


@pytest.mark.parametrize(
    "before", [0, -1, protocol.MAX_ID + 1, 2**64 - 1, 10**30, True, 1.0, 1e30, "5", [5]]
)
def test_history_before_out_of_range_or_not_an_integer_is_bad_command(before):
    assert refusal(type="history", of={"all": True}, before=before) == protocol.BAD_COMMAND


# -- sync --------------------------------------------------------------------


@pytest.mark.parametrize("since", [0, 1, protocol.MAX_ID])
def test_sync_since_any_id_from_zero(since):
    assert parse(type="sync", since=since, ref="s") == Sync(ref="s", since=since)


def test_sync_without_since_is_bad_command():
    assert refusal(type="sync") == protocol.BAD_COMMAND


@pytest.mark.parametrize(
    "since", [-1, protocol.MAX_ID + 1, 2**64, True, False, 0.0, 1.5, "0", None, [0], {}]
)
def test_sync_since_negative_huge_or_not_an_integer_is_bad_command(since):
    assert refusal(type="sync", since=since) == protocol.BAD_COMMAND


def test_huge_integers_from_the_wire_are_bad_command():
    for digits in ("18446744073709551615", "9223372036854775808", "1" + "0" * 40, "-1" + "0" * 40):
        data = decode_frame('{"type": "sync", "since": ' + digits + "}", max_bytes=MAX_FRAME)
        with pytest.raises(ChatError) as info:
            parse_command(data, max_body_chars=MAX_BODY)
        assert info.value.code == protocol.BAD_COMMAND


# -- events out --------------------------------------------------------------


def test_encode_writes_compact_utf8_json():
    text = encode({"type": "message", "body": "日本 😀", "to": {"all": True}})
    assert "日本 😀" in text
    assert json.loads(text) == {"type": "message", "body": "日本 😀", "to": {"all": True}}


def test_error_event_carries_code_message_and_ref_only_when_given():
    assert error_event(protocol.BAD_JSON, "no") == {
        "type": "error",
        "code": "bad_json",
        "message": "no",
    }
    assert error_event(protocol.NOT_MEMBER, "no", "r1")["ref"] == "r1"


def test_error_codes_are_the_protocols():
    assert {
        "bad_json",
        "bad_command",
        "binary_not_supported",
        "too_large",
        "empty_body",
        "bad_group",
        "no_such_user",
        "not_member",
        "rate_limited",
        "unavailable",
        # 1.2
        "no_such_message",
        "not_yours",
        "too_late",
        "bad_emoji",
        "too_many_reactions",
        "too_many_groups",
        "group_exists",
        "invite_only",
        "forbidden",
        "last_owner",
        "no_such_upload",
    } == protocol.ERROR_CODES
