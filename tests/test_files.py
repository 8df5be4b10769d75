"""Atomic writes: the old file or the new one, never a half-written one or a leftover."""
import json

import pytest

from pathwatch.edge.files import write_atomic, write_json_atomic


def _leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_writes_text_and_bytes_creating_the_directories(tmp_path):
    path = tmp_path / "a" / "b" / "state.json"
    write_atomic(path, "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and _leftovers(path.parent) == []


def test_json_is_indented_with_a_final_newline(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"b": [1, 2], "a": None})
    assert path.read_text() == json.dumps({"b": [1, 2], "a": None}, indent=1) + "\n"
    assert json.loads(path.read_text()) == {"b": [1, 2], "a": None}


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "cal.json"
    write_atomic(path, "old")
    with pytest.raises(TypeError):
        write_atomic(path, 42)  # not bytes: fails while the temporary file is written
    assert path.read_text() == "old" and _leftovers(tmp_path) == []


def test_an_unwritable_place_is_an_oserror(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        write_atomic(tmp_path / "file" / "below.json", "x")
