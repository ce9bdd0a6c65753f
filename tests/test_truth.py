"""The face truth CSV a detector is scored against: read whole, or refused with the file and line."""

from __future__ import annotations

import pytest

from labeling.student.truth import read_face_boxes
from warehouse.errors import InputError

HEADER = "path,frame,x1,y1,x2,y2,emotion\n"


def test_boxes_by_image_and_frame(tmp_path):
    csv = tmp_path / "faces.csv"
    csv.write_text(HEADER + "a.jpg,,1,2,3,4,happy\nv.avi,7,5,6,7,8,\na.jpg,,9,9,10,10,sad\n")
    assert read_face_boxes(csv) == {
        ("a.jpg", None): [(1.0, 2.0, 3.0, 4.0), (9.0, 9.0, 10.0, 10.0)],
        ("v.avi", 7): [(5.0, 6.0, 7.0, 8.0)],
    }


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,frame,x1,y1\na.jpg,,1,2\n", "no column x2, y2"),
        (HEADER + "a.jpg,,1,2,3,4,\nb.jpg,first,1,2,3,4,\n", "line 3"),
        (HEADER + "a.jpg,,1,2,3,4,\na.jpg,,1,two,3,4,\n", "line 3"),
        (HEADER + "a.jpg,,1,2,3\n", "line 2"),  # a short row: x2..y2 missing
    ],
)
def test_a_broken_truth_file_is_one_clear_error(tmp_path, text, message):
    csv = tmp_path / "faces.csv"
    csv.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        read_face_boxes(csv)
    assert str(csv) in str(err.value)
