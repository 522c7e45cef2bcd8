"""The pure query layer: Mongo-style filters, update operators, sorting and Django-style lookups."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

import pytest

from gateway.query import (
    apply_update,
    compare_values,
    jsonable,
    lookups_to_filter,
    matches,
    merge_filters,
    normalise_id,
    normalise_sort,
    normalise_update,
    sort_documents,
    update_paths,
    upsert_seed,
    validate_filter,
    values_equal,
)

DOC = {
    "_id": "01A",
    "name": "Ada Lovelace",
    "age": 36,
    "score": 9.5,
    "active": True,
    "tags": ["math", "poetry"],
    "address": {"city": "London", "geo": {"lat": 51.5}},
    "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 5}],
    "nothing": None,
}


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({}, True),
        (None, True),
        ({"name": "Ada Lovelace"}, True),
        ({"name": "ada lovelace"}, False),
        ({"age": 36.0}, True),  # 36 == 36.0
        ({"active": 1}, False),  # True is not 1
        ({"age": True}, False),
        ({"age": {"$eq": 36}}, True),
        ({"age": {"$ne": 36}}, False),
        ({"age": {"$ne": 40}}, True),
        ({"missing": {"$ne": 1}}, True),  # $ne matches a missing field
        ({"age": {"$gt": 35}}, True),
        ({"age": {"$gt": 36}}, False),
        ({"age": {"$gte": 36}}, True),
        ({"age": {"$lt": 36}}, False),
        ({"age": {"$lte": 36}}, True),
        ({"age": {"$gt": 30, "$lt": 40}}, True),
        ({"age": {"$gt": 30, "$lt": 35}}, False),
        ({"name": {"$gt": "A"}}, True),
        ({"name": {"$gt": 5}}, False),  # type bracketing: strings never compare to numbers
        ({"age": {"$gt": "5"}}, False),
        ({"address": {"$gt": 1}}, False),
        ({"age": {"$in": [1, 36]}}, True),
        ({"age": {"$in": []}}, False),
        ({"age": {"$nin": [1, 36]}}, False),
        ({"age": {"$nin": [1, 2]}}, True),
        ({"missing": {"$nin": [1]}}, True),
        ({"missing": {"$in": [None]}}, True),
        ({"age": {"$exists": True}}, True),
        ({"missing": {"$exists": True}}, False),
        ({"missing": {"$exists": False}}, True),
        ({"nothing": {"$exists": True}}, True),  # a null is still a field
        ({"nothing": None}, True),
        ({"missing": None}, True),  # null matches missing too
        ({"age": None}, False),
        ({"nothing": {"$ne": None}}, False),
        ({"age": {"$ne": None}}, True),
        ({"name": {"$regex": "^Ada"}}, True),
        ({"name": {"$regex": "^ada"}}, False),
        ({"name": {"$regex": "^ada", "$options": "i"}}, True),
        ({"name": re.compile("love", re.IGNORECASE)}, True),
        ({"age": {"$regex": "3"}}, False),  # regexes only match strings
        ({"name": {"$not": {"$regex": "^Ada"}}}, False),
        ({"name": {"$not": re.compile("^Bob")}}, True),
        ({"age": {"$not": {"$gt": 40}}}, True),
        ({"missing": {"$not": {"$gt": 1}}}, True),
        ({"$and": [{"age": 36}, {"name": "Ada Lovelace"}]}, True),
        ({"$and": [{"age": 36}, {"name": "Bob"}]}, False),
        ({"$or": [{"age": 1}, {"name": "Ada Lovelace"}]}, True),
        ({"$or": [{"age": 1}, {"name": "Bob"}]}, False),
        ({"$nor": [{"age": 1}, {"name": "Bob"}]}, True),
        ({"$nor": [{"age": 36}]}, False),
        ({"$or": [{"$and": [{"age": 36}, {"active": True}]}, {"x": 1}]}, True),
        # dotted paths and arrays
        ({"address.city": "London"}, True),
        ({"address.geo.lat": {"$gt": 50}}, True),
        ({"address.geo.lng": {"$exists": False}}, True),
        ({"address": {"city": "London", "geo": {"lat": 51.5}}}, True),
        ({"address": {"geo": {"lat": 51.5}, "city": "London"}}, True),  # key order is ignored
        ({"address": {"city": "London"}}, False),  # embedded equality is exact
        ({"tags": "math"}, True),  # an array matches one of its elements
        ({"tags": ["math", "poetry"]}, True),
        ({"tags": ["poetry", "math"]}, False),
        ({"tags": {"$in": ["x", "poetry"]}}, True),
        ({"tags": {"$nin": ["poetry"]}}, False),
        ({"tags": {"$all": ["poetry", "math"]}}, True),
        ({"tags": {"$all": ["poetry", "art"]}}, False),
        ({"tags": {"$size": 2}}, True),
        ({"tags": {"$size": 3}}, False),
        ({"tags.0": "math"}, True),
        ({"tags.1": "math"}, False),
        ({"items.sku": "b"}, True),
        ({"items.qty": {"$gt": 4}}, True),
        ({"items.1.qty": 5}, True),
        ({"items": {"$elemMatch": {"sku": "a", "qty": {"$gte": 1}}}}, True),
        ({"items": {"$elemMatch": {"sku": "a", "qty": 5}}}, False),
        ({"tags": {"$elemMatch": {"$regex": "^po"}}}, True),
        ({"name.first": "Ada"}, False),  # a path into a string finds nothing and never raises
    ],
)
def test_matches(filter, expected):
    assert matches(DOC, filter) is expected
    validate_filter(filter)


@pytest.mark.parametrize(
    "filter",
    [
        {"age": {"$foo": 1}},
        {"$where": "1"},
        {"age": {"$in": 5}},
        {"age": {"$nin": "ab"}},
        {"$and": []},
        {"$or": {"a": 1}},
        {"$and": [1]},
        {"name": {"$regex": "("}},
        {"name": {"$regex": "a", "$options": "q"}},
        {"name": {"$options": "i"}},
        {"age": {"$gt": 1, "plain": 2}},
        {"tags": {"$size": "2"}},
        {"age": {"$not": 5}},
        {"items": {"$elemMatch": 3}},
        {"a..b": 1},
        {"$or": [{"ok": 1}, {"age": {"$bad": 1}}]},
    ],
)
def test_malformed_filters_raise_value_error(filter):
    with pytest.raises(ValueError):
        validate_filter(filter)


def test_malformed_filter_raises_from_matches_too():
    with pytest.raises(ValueError):
        matches(DOC, {"age": {"$between": [1, 2]}})
    with pytest.raises(ValueError):
        matches(DOC, ["not", "a", "dict"])  # type: ignore[arg-type]


def test_comparisons_across_types_never_raise():
    values = [None, 0, 1.5, -3, "", "a", {}, {"a": 1}, [], [1, "x"], True, False]
    for left in values:
        for right in values:
            assert compare_values(left, right) == -compare_values(right, left)
            for operator in ("$gt", "$gte", "$lt", "$lte", "$eq", "$ne", "$in"):
                operand = [right] if operator == "$in" else right
                matches({"v": left}, {"v": {operator: operand}})


def test_values_equal_is_strict_about_booleans():
    assert values_equal(1, 1.0)
    assert not values_equal(True, 1)
    assert not values_equal([True], [1])
    assert values_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})


# -- updates ---------------------------------------------------------------------------------------


def test_normalise_update():
    assert normalise_update({"a": 1}) == {"$set": {"a": 1}}
    assert normalise_update({"$inc": {"n": 1}, "$set": {"a": 1}}) == {"$inc": {"n": 1}, "$set": {"a": 1}}
    with pytest.raises(ValueError, match="empty"):
        normalise_update({})
    with pytest.raises(ValueError, match="mixes"):
        normalise_update({"$set": {"a": 1}, "b": 2})
    with pytest.raises(ValueError):
        normalise_update([("a", 1)])


def test_set_unset_inc_with_dotted_paths():
    doc = {"_id": "x", "n": 1, "profile": {"name": "A"}, "list": [1, 2, 3]}
    new, modified = apply_update(
        doc,
        {
            "$set": {"profile.city": "Paris", "deep.er.path": True, "list.1": 20},
            "$inc": {"n": 2, "counters.visits": 1},
            "$unset": {"profile.name": ""},
        },
    )
    assert modified
    assert new == {
        "_id": "x",
        "n": 3,
        "profile": {"city": "Paris"},
        "deep": {"er": {"path": True}},
        "list": [1, 20, 3],
        "counters": {"visits": 1},
    }
    assert doc == {"_id": "x", "n": 1, "profile": {"name": "A"}, "list": [1, 2, 3]}  # input untouched


def test_plain_patch_is_a_set_and_unchanged_values_are_not_a_modification():
    new, modified = apply_update({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 2}})
    assert not modified
    assert new == {"a": 1, "b": {"c": 2}}
    new, modified = apply_update({"a": 1}, {"a": True})
    assert modified  # True is not 1
    assert new == {"a": True}


def test_inc_float_and_mul_min_max_rename():
    new, _ = apply_update(
        {"f": 1.5, "m": 3, "lo": 5, "hi": 5, "old": "v"},
        {
            "$inc": {"f": 0.25},
            "$mul": {"m": 2, "absent": 4},
            "$min": {"lo": 2},
            "$max": {"hi": 2},
            "$rename": {"old": "renamed.to"},
        },
    )
    assert new == {"f": 1.75, "m": 6, "absent": 0, "lo": 2, "hi": 5, "renamed": {"to": "v"}}


def test_array_operators():
    doc = {"tags": ["a", "b"], "items": [{"k": 1}, {"k": 2}, {"k": 3}], "nums": [1, 2, 3, 4]}
    new, modified = apply_update(
        doc,
        {
            "$push": {"tags": "c", "fresh": {"$each": [1, 2]}},
            "$addToSet": {"more": {"$each": ["x", "x", "y"]}},
            "$pull": {"items": {"k": {"$gte": 2}}, "nums": {"$in": [2, 3]}},
        },
    )
    assert modified
    assert new["tags"] == ["a", "b", "c"]
    assert new["fresh"] == [1, 2]
    assert new["more"] == ["x", "y"]
    assert new["items"] == [{"k": 1}]
    assert new["nums"] == [1, 4]
    new, modified = apply_update(new, {"$addToSet": {"tags": "a"}})
    assert not modified
    new, _ = apply_update(new, {"$pop": {"tags": -1}, "$push": {"nums": {"$each": [9, 8], "$position": 0}}})
    assert new["tags"] == ["b", "c"]
    assert new["nums"] == [9, 8, 1, 4]
    new, _ = apply_update(new, {"$push": {"nums": {"$each": [7], "$slice": -2}}, "$pull": {"tags": "b"}})
    assert new["nums"] == [4, 7]
    assert new["tags"] == ["c"]


def test_set_on_insert_only_on_insert_and_current_date():
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    kept, modified = apply_update({"a": 1}, {"$setOnInsert": {"b": 2}})
    assert kept == {"a": 1} and not modified
    inserted, _ = apply_update(
        {"a": 1}, {"$setOnInsert": {"b": 2}, "$currentDate": {"at": True}}, inserting=True, now=now
    )
    assert inserted == {"a": 1, "b": 2, "at": "2026-01-02T03:04:05+00:00"}


@pytest.mark.parametrize(
    ("doc", "update", "message"),
    [
        ({"_id": "x"}, {"$set": {"_id": "y"}}, "immutable"),
        ({"_id": "x"}, {"$unset": {"_id": ""}}, "immutable"),
        ({"n": "text"}, {"$inc": {"n": 1}}, "non-numeric"),
        ({"n": 1}, {"$inc": {"n": "1"}}, "needs a number"),
        ({"n": 1}, {"$inc": {"n": True}}, "needs a number"),
        ({"tags": "x"}, {"$push": {"tags": 1}}, "array"),
        ({"a": 1}, {"$set": {"a": 1}, "$inc": {"a": 1}}, "conflict"),
        ({"a": {"b": 1}}, {"$set": {"a": {}}, "$unset": {"a.b": ""}}, "conflict"),
        ({"a": 1}, {"$frobnicate": {"a": 1}}, "unsupported"),
        ({"a": 1}, {"$set": ["a"]}, "document"),
        ({"a": "s"}, {"$set": {"a.b": 1}}, "cannot"),
        ({"a": 1}, {"$pop": {"a": 2}}, "pop"),
        ({"a": 1}, {}, "empty"),
        ({"a": 1}, {"$set": {"a..b": 1}}, "invalid field path"),
    ],
)
def test_invalid_updates_raise_value_error(doc, update, message):
    with pytest.raises(ValueError, match=message):
        apply_update(doc, update)


def test_update_paths_lists_written_fields():
    assert sorted(update_paths({"$set": {"a.b": 1}, "$rename": {"c": "d"}})) == ["a.b", "c", "d"]


def test_upsert_seed_takes_equalities():
    seed = upsert_seed(
        {
            "name": "x",
            "n": {"$gt": 1},
            "k": {"$eq": 2},
            "$and": [{"team": "t"}, {"a.b": 3}],
            "$or": [{"z": 1}],
        }
    )
    assert seed == {"name": "x", "k": 2, "team": "t", "a": {"b": 3}}


# -- sorting ---------------------------------------------------------------------------------------


def test_normalise_sort_forms():
    assert normalise_sort(None) == []
    assert normalise_sort({"a": 1, "b": -1}) == [("a", 1), ("b", -1)]
    assert normalise_sort("-created") == [("created", -1)]
    assert normalise_sort("id") == [("_id", 1)]
    assert normalise_sort(["a", "-b"]) == [("a", 1), ("b", -1)]
    assert normalise_sort([("a", -1)]) == [("a", -1)]
    with pytest.raises(ValueError):
        normalise_sort({"a": 2})
    with pytest.raises(ValueError):
        normalise_sort({"a": True})


def test_sort_documents_mixed_types_and_missing_fields():
    docs = [
        {"i": 1, "v": "b"},
        {"i": 2, "v": 3},
        {"i": 3},
        {"i": 4, "v": None},
        {"i": 5, "v": True},
        {"i": 6, "v": {"a": 1}},
        {"i": 7, "v": [2, 9]},
        {"i": 8, "v": 1.5},
        {"i": 9, "v": "a"},
    ]
    ascending = [doc["i"] for doc in sort_documents(docs, {"v": 1})]
    # null/missing (stable), numbers (the array sorts by its min, 2), strings, objects, booleans
    assert ascending == [3, 4, 8, 7, 2, 9, 1, 6, 5]
    descending = [doc["i"] for doc in sort_documents(docs, "-v")]
    assert descending == [5, 6, 1, 9, 7, 2, 8, 3, 4]  # the array sorts by its max, 9


def test_sort_documents_by_several_keys():
    docs = [{"g": "b", "n": 1}, {"g": "a", "n": 1}, {"g": "a", "n": 2}, {"g": "b", "n": 2}]
    assert sort_documents(docs, [("g", 1), ("n", -1)]) == [
        {"g": "a", "n": 2},
        {"g": "a", "n": 1},
        {"g": "b", "n": 2},
        {"g": "b", "n": 1},
    ]


# -- lookups ----------------------------------------------------------------------------------------


def test_lookups_to_filter():
    assert lookups_to_filter(name="x") == {"name": "x"}
    assert lookups_to_filter(name__exact="x") == {"name": "x"}
    assert lookups_to_filter(id="abc") == {"_id": "abc"}
    assert lookups_to_filter(id__in=['ObjectId("0123456789abcdef01234567")']) == {
        "_id": {"$in": ["0123456789abcdef01234567"]}
    }
    assert lookups_to_filter(age__gt=1, age__lt=9) == {"age": {"$gt": 1, "$lt": 9}}
    assert lookups_to_filter(age=3, age__ne=4) == {"age": {"$eq": 3, "$ne": 4}}
    assert lookups_to_filter(a__ne=1, b__gte=2, c__lte=3, d__in=[1], e__nin=[2]) == {
        "a": {"$ne": 1},
        "b": {"$gte": 2},
        "c": {"$lte": 3},
        "d": {"$in": [1]},
        "e": {"$nin": [2]},
    }
    assert lookups_to_filter(t__contains="a.b") == {"t": {"$regex": r"a\.b", "$options": "i"}}
    assert lookups_to_filter(t__startswith="Hi") == {"t": {"$regex": "^Hi", "$options": "i"}}
    assert lookups_to_filter(t__endswith="?") == {"t": {"$regex": r"\?$", "$options": "i"}}


def test_lookups_starting_with_underscore_are_ignored_like_capsule():
    assert lookups_to_filter(_user_id="someone-else", name="x") == {"name": "x"}


@pytest.mark.parametrize("lookups", [{"a__b__gt": 1}, {"a__like": "x"}, {"a__": 1}])
def test_bad_lookups_raise(lookups):
    with pytest.raises(ValueError):
        lookups_to_filter(**lookups)


def test_regex_lookups_are_case_insensitive_and_escaped():
    doc = {"title": "Hello (World)"}
    assert matches(doc, lookups_to_filter(title__contains="(world)"))
    assert matches(doc, lookups_to_filter(title__startswith="hello"))
    assert matches(doc, lookups_to_filter(title__endswith="WORLD)"))
    assert not matches(doc, lookups_to_filter(title__startswith="world"))


def test_merge_filters():
    assert merge_filters(None, {}) == {}
    assert merge_filters({"a": 1}) == {"a": 1}
    assert merge_filters({"a": 1}, None, {"b": 2}) == {"$and": [{"a": 1}, {"b": 2}]}


# -- JSON values -----------------------------------------------------------------------------------


class Colour(Enum):
    RED = "red"


@dataclass
class Point:
    x: int
    y: int


def test_jsonable_coerces_like_session_data():
    value = {
        1: datetime(2026, 1, 1, tzinfo=UTC),
        "e": Colour.RED,
        "b": b"\xffok",
        "s": {3},
        "t": (1, 2),
        "p": Point(1, 2),
        "nan": float("nan"),
        "obj": object,
    }
    out = jsonable(value)
    assert out["1"] == "2026-01-01T00:00:00+00:00"
    assert out["e"] == "red"
    assert out["b"] == "\ufffdok"
    assert out["s"] == [3] and out["t"] == [1, 2]
    assert out["p"] == {"x": 1, "y": 2}
    assert out["nan"] is None
    assert out["obj"] == str(object)


def test_normalise_id():
    assert normalise_id({"$oid": "0123456789abcdef01234567"}) == "0123456789abcdef01234567"
    assert normalise_id("ObjectId('0123456789abcdef01234567')") == "0123456789abcdef01234567"
    assert normalise_id("ObjectId('nothex')") == "ObjectId('nothex')"
    assert normalise_id("01ARZ3NDEKTSV4RRFFQ69G5FAV") == "01ARZ3NDEKTSV4RRFFQ69G5FAV"
