"""Quarantine reasons are counted by their wording, file names left out, for one-line messages."""

from aerial_assets.safety.quarantine import reason_counts, reason_group, reasons_text


def test_reasons_group_without_their_file_names():
    reasons = [f"unreadable tile: no file at '/data/t/tile_{i}.png': check the path" for i in range(54)]
    reasons += ["empty file", "empty file"]
    assert reason_group(reasons[0]) == "unreadable tile: no file at ...: check the path"
    assert reason_counts(reasons) == {"unreadable tile: no file at ...: check the path": 54, "empty file": 2}
    assert reasons_text(reasons) == "54 x unreadable tile: no file at ...: check the path; 2 x empty file"
    assert reasons_text([f"r{i}" for i in range(6)], limit=2).endswith("and 4 other reason(s)")
