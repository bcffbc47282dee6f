"""Benchmark result files: a successful run writes one with the machine and its tables; a failed one writes none; the
docs page shows the newest of each benchmark."""

from __future__ import annotations

import json

from benchmarks import results

TABLE = "| backbone | images/s |\n|---|---:|\n| mobilenet_v2 | 182.1 |\n"


def _bench(status: int):
    def main(argv):
        print("some progress line")
        print(TABLE)
        print("done")
        return status
    return main


def test_a_successful_run_writes_its_result_file_with_the_machine_and_tables(tmp_path, capsys):
    assert results.run_main("bench-features", _bench(0), ["--only", "engines"], folder=tmp_path) == 0
    (path,) = tmp_path.glob("bench-features-*.json")
    record = json.loads(path.read_text())
    assert path.name == f"bench-features-{record['date']}-{record['commit']}.json"
    assert record["argv"] == ["--only", "engines"] and record["tables"] == [TABLE.strip().splitlines()]
    assert record["machine"]["cores"] >= 1 and record["machine"]["python"] and "pyspark" in record["machine"]["packages"]
    assert "some progress line" in record["output"]
    assert "some progress line" in capsys.readouterr().out  # still printed as it runs


def test_a_failed_run_writes_no_result_file(tmp_path):
    assert results.run_main("bench-features", _bench(1), [], folder=tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_the_page_shows_the_newest_result_of_each_benchmark_and_says_which_have_none(tmp_path):
    old = results.write_result("bench-county", "| a |\n|---|\n| old |\n", [], 1.0, tmp_path)
    record = json.loads(old.read_text())
    record["date"] = "2000-01-01"
    old.unlink()
    (tmp_path / f"bench-county-2000-01-01-{record['commit']}.json").write_text(json.dumps(record))
    results.write_result("bench-county", "| a |\n|---|\n| new |\n", [], 2.0, tmp_path)
    page = results.page(tmp_path)
    county = page.split("## bench-county", 1)[1].split("## ", 1)[0]
    assert len(list(tmp_path.glob("bench-county-*.json"))) == 2
    assert "| new |" in county and "| old |" not in county
    assert "No result file yet: `make bench-accuracy` writes one." in page
