"""Box text codecs: exact formats, round trips (hypothesis) and the tolerant parser."""
from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from skymoe.data.boxes import STYLES, convert_box_text, format_box, format_boxes, parse_boxes
from skymoe.data.schema import Box

SIZE = (800, 600)
BOX = Box(80, 60, 400, 300)


@pytest.mark.parametrize(
    "style, text",
    [
        ("canonical", "[10, 10, 50, 50]"),
        ("teochat", "[10, 10, 50, 50]"),
        ("geochat", "{<10><10><50><50>|<0>}"),
        ("internvl", "<box>[[100, 100, 500, 500]]</box>"),
        ("pixel", "[80, 60, 400, 300]"),
    ],
)
def test_format_box_each_style(style, text):
    assert format_box(BOX, SIZE, style) == text
    parsed = parse_boxes(text, SIZE, style)
    assert not parsed.failed and [b.as_tuple() for b in parsed.boxes] == [BOX.as_tuple()]


def test_several_boxes():
    second = Box(0, 0, 8, 6)
    assert format_boxes([BOX, second], SIZE) == "[10, 10, 50, 50]; [0, 0, 1, 1]"
    assert format_boxes([BOX, second], SIZE, "geochat") == "{<10><10><50><50>|<0>}{<0><0><1><1>|<0>}"
    assert format_boxes([BOX, second], SIZE, "internvl") == "<box>[[100, 100, 500, 500], [0, 0, 10, 10]]</box>"
    for style in STYLES:
        parsed = parse_boxes(format_boxes([BOX, second], SIZE, style), SIZE, style)
        assert not parsed.failed and len(parsed.boxes) == 2


def test_thin_box_stays_non_empty():
    thin = Box(799.6, 10, 800, 11)  # thinner than one step, at the right edge
    assert format_box(thin, SIZE) == "[99, 2, 100, 3]"


@pytest.mark.parametrize(
    "text, style",
    [
        ("", "canonical"),
        ("no box here", "canonical"),
        ("[10, 20, 30]", "canonical"),  # three numbers
        ("[10, 20, 5, 40]", "canonical"),  # x2 < x1
        ("[10, 20, 130, 40]", "canonical"),  # beyond the 0-100 range
        ("[-1, 20, 30, 40]", "canonical"),
        ("[10, 20, 30, 40] and [1, 2]", "canonical"),  # one good, one malformed: no guessing
        ("{<10><20><30>|<0>}", "geochat"),
        ("[[10, 20, 30, 40]]", "internvl"),  # missing <box> tags
        ("[10, 20, 900, 40]", "pixel"),  # wider than the 800 px image
    ],
)
def test_unparsable_text_fails_without_boxes(text, style):
    parsed = parse_boxes(text, SIZE, style)
    assert parsed.failed and parsed.boxes == []


def test_parse_ignores_text_around_boxes_and_task_tokens():
    parsed = parse_boxes("[refer] The ship is at [10, 20, 30, 40].", SIZE)
    assert not parsed.failed
    assert parsed.boxes[0].as_tuple() == (80, 120, 240, 240)


def test_geochat_angle_forms():
    for text in ("{<10><20><30><40>|<0>}", "{<10><20><30><40>|45}", "{<10><20><30><40>}"):
        assert parse_boxes(text, SIZE, "geochat").boxes[0].as_tuple() == (80, 120, 240, 240)


def test_convert_box_text_both_ways():
    text, boxes = convert_box_text("a plane {<10><20><30><40>|<0>} and {<50><50><60><60>|<90>}", SIZE, "geochat")
    assert text == "a plane [10, 20, 30, 40] and [50, 50, 60, 60]"
    assert len(boxes) == 2
    back, _ = convert_box_text(text, SIZE, "canonical", "geochat")
    assert back == "a plane {<10><20><30><40>|<0>} and {<50><50><60><60>|<0>}"
    assert convert_box_text("[refer] at [10, 20, 30, 40]", SIZE, "canonical", "internvl")[0] == "[refer] at <box>[[100, 200, 300, 400]]</box>"
    with pytest.raises(ValueError, match="malformed geochat box"):
        convert_box_text("bad {<10><20><300><40>|<0>}", SIZE, "geochat")


def test_unknown_style():
    with pytest.raises(ValueError, match="unknown box style"):
        format_box(BOX, SIZE, "yolo")


sizes = st.tuples(st.integers(16, 5000), st.integers(16, 5000))


@st.composite
def box_in_image(draw):
    w, h = draw(sizes)
    x1 = draw(st.floats(0, w - 1, allow_nan=False))
    y1 = draw(st.floats(0, h - 1, allow_nan=False))
    x2 = draw(st.floats(x1 + 1, w, allow_nan=False))
    y2 = draw(st.floats(y1 + 1, h, allow_nan=False))
    return (w, h), Box(x1, y1, x2, y2)


@settings(max_examples=300, deadline=None)
@given(box_in_image(), st.sampled_from(STYLES))
@example(((16, 16), Box(0.0, 1.5, 1.0, 2.5)), "pixel")  # both y ends round to 2 (round half to even)
def test_round_trip_within_quantisation(case, style):
    (w, h), box = case
    parsed = parse_boxes(format_box(box, (w, h), style), (w, h), style)
    assert not parsed.failed and len(parsed.boxes) == 1
    got = parsed.boxes[0]
    # half a step of rounding, plus one step where a thin box was widened
    step_x, step_y = {"internvl": (w / 1000, h / 1000), "pixel": (1, 1)}.get(style, (w / 100, h / 100))
    tol_x, tol_y = 1.5 * step_x + 1e-6, 1.5 * step_y + 1e-6
    assert abs(got.x1 - box.x1) <= tol_x and abs(got.x2 - box.x2) <= tol_x
    assert abs(got.y1 - box.y1) <= tol_y and abs(got.y2 - box.y2) <= tol_y
    got.validate((w, h))  # inside the image and non-empty


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200), st.sampled_from(STYLES), sizes)
def test_garbage_never_raises_and_boxes_are_valid(text, style, size):
    parsed = parse_boxes(text, size, style)
    assert parsed.failed == (parsed.boxes == [])
    for box in parsed.boxes:
        box.validate(size)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=200), st.sampled_from(STYLES))
def test_text_without_digits_never_yields_boxes(text, style):
    parsed = parse_boxes(text, SIZE, style)
    assert parsed.failed and parsed.boxes == []
