"""mmaction2 annotation lists and UCF101 split files: parsing, and errors that name the file and line."""
from pathlib import Path

import pytest

from deepnotes.video import Sample, read_annotations, read_ucf101_split, write_annotations


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_video_list(tmp_path):
    lst = write(tmp_path / "list.txt", "a/x 1.mp4 3\n\n# comment\nb/y.mp4 0\r\n")
    samples = read_annotations(lst, num_classes=4)
    assert samples == [Sample(Path("a/x 1.mp4"), 3), Sample(Path("b/y.mp4"), 0)]  # spaces in a path survive
    rooted = read_annotations(lst, root=tmp_path / "videos")
    assert rooted[0].path == tmp_path / "videos" / "a" / "x 1.mp4"


def test_frames_list_and_write_round_trip(tmp_path):
    lst = write(tmp_path / "frames.txt", "clips/v1 120 2\nclips/v2 45 0\n")
    samples = read_annotations(lst, kind="frames")
    assert samples == [Sample(Path("clips/v1"), 2, 120), Sample(Path("clips/v2"), 0, 45)]
    again = write_annotations(tmp_path / "again.txt", samples)
    assert read_annotations(again, kind="frames") == samples
    rooted = [Sample(tmp_path / "r" / s.path, s.label, s.total_frames) for s in samples]
    write_annotations(tmp_path / "rel.txt", rooted, root=tmp_path / "r")
    assert read_annotations(tmp_path / "rel.txt", kind="frames") == samples


@pytest.mark.parametrize("text, kind, line, message", [
    ("a.mp4 1\nb.mp4\n", "video", 2, "expected 'path label'"),
    ("a.mp4 1\nb.mp4 one\n", "video", 2, "label must be an integer"),
    ("a.mp4 1\n\nb.mp4 -1\n", "video", 3, "outside"),
    ("a.mp4 1\nb.mp4 5\n", "video", 2, r"label 5 is outside \[0, 5\)"),
    ("v1 10 1\nv2 1\n", "frames", 2, "expected 'dir total_frames label'"),
    ("v1 ten 1\n", "frames", 1, "total_frames must be an integer"),
    ("v1 0 1\n", "frames", 1, "total_frames must be >= 1"),
])
def test_errors_name_file_and_line(tmp_path, text, kind, line, message):
    lst = write(tmp_path / "bad.txt", text)
    with pytest.raises(ValueError, match=message) as err:
        read_annotations(lst, kind=kind, num_classes=5)
    assert f"bad.txt, line {line}" in str(err.value)


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_annotations(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="kind"):
        read_annotations(write(tmp_path / "l.txt", "a 1\n"), kind="rawframes")
    with pytest.raises(ValueError, match="num_classes"):
        read_annotations(tmp_path / "l.txt", num_classes=0)


@pytest.fixture
def ucf(tmp_path):
    # UCF101's layout (Soomro et al. 2012): 1-based classInd, 1-based train labels, unlabelled test lines, CRLF
    write(tmp_path / "classInd.txt", "1 ApplyEyeMakeup\r\n2 Archery\r\n3 HandstandPushups\r\n")
    write(tmp_path / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
                                        "Archery/v_Archery_g08_c02.avi 2\r\n"
                                        "HandstandPushups/v_HandStandPushups_g08_c01.avi 3\r\n")
    write(tmp_path / "testlist01.txt", "Archery/v_Archery_g01_c01.avi\r\nApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
                                       "handstandpushups/v_HandStandPushups_g01_c01.avi\r\n")
    return tmp_path


def test_ucf101_split(ucf):
    train, classes = read_ucf101_split(ucf, split=1, subset="train", root="/data/UCF101")
    assert classes == ("ApplyEyeMakeup", "Archery", "HandstandPushups")
    assert [s.label for s in train] == [0, 1, 2]
    assert train[1].path == Path("/data/UCF101/Archery/v_Archery_g08_c02.avi")
    test, _ = read_ucf101_split(ucf, split=1, subset="test")
    assert [s.label for s in test] == [1, 0, 2]  # from the folder, case-insensitive
    assert test[0].path == Path("Archery/v_Archery_g01_c01.avi")


def test_ucf101_errors(ucf):
    write(ucf / "trainlist02.txt", "Archery/v_Archery_g08_c02.avi 1\n")
    with pytest.raises(ValueError, match=r"trainlist02.txt, line 1: label 1 \(ApplyEyeMakeup\) disagrees"):
        read_ucf101_split(ucf, split=2)
    write(ucf / "trainlist03.txt", "Archery/v.avi 2\nArchery/w.avi 4\n")
    with pytest.raises(ValueError, match=r"trainlist03.txt, line 2: label 4 is outside 1..3"):
        read_ucf101_split(ucf, split=3)
    write(ucf / "testlist02.txt", "Archery/a.avi\nBowling/b.avi\n")
    with pytest.raises(ValueError, match="testlist02.txt, line 2: folder 'Bowling' is not a class"):
        read_ucf101_split(ucf, split=2, subset="test")
    with pytest.raises(ValueError, match="split must be 1, 2 or 3"):
        read_ucf101_split(ucf, split=4)
    with pytest.raises(ValueError, match="subset"):
        read_ucf101_split(ucf, subset="val")
