"""Every CSV the product writes neutralises spreadsheet formulas (the OWASP rule), and reads back what it wrote."""

import re
from pathlib import Path

import pandas as pd

from aerial_assets.safety import csv_files

HOSTILE = ['=HYPERLINK("http:\\\\evil","x"),1', "+cmd", "-2+3", "@SUM(A1)", "\tTab"]


def test_text_cells_that_start_a_formula_are_neutralised_and_read_back():
    assert csv_files.neutralise("\rCR") == "'\rCR" and csv_files.restore("'\rCR") == "\rCR"
    frame = pd.DataFrame({"label": HOSTILE + ["Forest"], "prob": [0.5] * 5 + [-0.25]})
    text = csv_files.to_csv(frame)
    cells = pd.read_csv(pd.io.common.StringIO(text), keep_default_na=False)  # what a spreadsheet would see
    assert all(v.startswith("'") for v in cells["label"][:5]) and cells["label"][5] == "Forest"
    assert cells["prob"].tolist()[-1] == -0.25  # numbers stay numbers, negative ones too
    back = csv_files.read_csv(text, keep_default_na=False)
    assert back["label"].tolist() == frame["label"].tolist()


def test_index_and_column_labels_are_neutralised_too():
    table = pd.DataFrame([[1, 2], [3, 4]], index=pd.Index(["=A", "B"], name="before"), columns=["=A", "B"])
    text = csv_files.to_csv(table, index=True)
    assert "'=A" in text.splitlines()[0] and text.splitlines()[1].startswith("'=A")


def test_no_module_writes_a_csv_any_other_way():
    """One writer for every CSV: a new ``.to_csv(`` elsewhere would bypass the neutralising."""
    package = Path(csv_files.__file__).resolve().parents[1]
    other_writer = re.compile(r"(?<!csv_files)\.to_csv\(")
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py")
                 if other_writer.search(p.read_text()) and p.name != "csv_files.py"]
    assert offenders == []
