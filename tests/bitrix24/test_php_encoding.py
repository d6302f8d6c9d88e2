"""PHP http_build_query encoding of batch sub-commands (fact sheet 5.3)."""

from __future__ import annotations

import pytest

from b24connector.bitrix24.encoding import batch_command, php_query
from tests.bitrix24.fakes import php_parse


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"id": 5}, "id=5"),
        ({"filter": {">ID": 0}}, "filter[%3EID]=0"),
        ({"select": ["ID", "TITLE"]}, "select[0]=ID&select[1]=TITLE"),
        ({"fields": {"TITLE": "John&Martin"}}, "fields[TITLE]=John%26Martin"),
        ({"flag": True, "off": False}, "flag=1&off=0"),
        # http_build_query skips nulls: the key goes, list indexes keep their numbers
        ({"none": None}, ""),
        ({"filter": {"STATUS_ID": None, ">ID": 5}}, "filter[%3EID]=5"),
        ({"x": [1, None, 2]}, "x[0]=1&x[2]=2"),
        ({"a": {"b": None}, "c": 1}, "c=1"),
        ({"a": {"b": {"c": [1, 2]}}}, "a[b][c][0]=1&a[b][c][1]=2"),
        ({"q": "a b+c=d"}, "q=a+b%2Bc%3Dd"),
        ({"ref": "$result[c0][49][ID]"}, "ref=%24result%5Bc0%5D%5B49%5D%5BID%5D"),
        ({"k[x]": 1}, "k%5Bx%5D=1"),
        ({"empty": [], "e2": {}}, ""),
        ({"text": "Привет"}, "text=%D0%9F%D1%80%D0%B8%D0%B2%D0%B5%D1%82"),
    ],
)
def test_php_query(params: dict[str, object], expected: str) -> None:
    assert php_query(params) == expected


def test_round_trip_through_a_php_style_parser() -> None:
    params = {
        "order": {"ID": "ASC"},
        "filter": {">ID": "10", "%TITLE": "a&b=c"},
        "select": ["ID", "*"],
        "start": "-1",
    }
    assert php_parse(php_query(params)) == params


def test_batch_command_shape() -> None:
    assert batch_command("crm.lead.list", {"start": -1}) == "crm.lead.list?start=-1"
    assert batch_command("user.current", {}) == "user.current"
