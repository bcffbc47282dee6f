"""The Spark lines: a client of one line against a server or master of another fails at start in one line naming
both versions and the command that installs the matching line; the Connect progress capability is asked of the
session, never of a version number."""

from __future__ import annotations

import http.server
import threading

import pytest

from aerial_assets.errors import ConfigurationError
from aerial_assets.spark import lines


def test_lines_are_major_dot_minor():
    assert lines.line_of("3.5.9") == "3.5" and lines.line_of("4.3.0.dev1") == "4.3" and lines.line_of("4.0") == "4.0"


def test_a_server_of_another_line_is_one_line_with_both_versions_and_the_fix():
    error = lines.mismatch("the Spark Connect server at sc://h:15002", "4.0.1", "3.5.9")
    assert isinstance(error, ConfigurationError)
    text = str(error)
    assert "runs Spark 4.0.1 (the 4.0 line) but this client is pyspark 3.5.9 (the 3.5 line)" in text
    assert "make install PYSPARK=4.0.1" in text and "\n" not in text
    assert lines.mismatch("x", "3.5.1", "3.5.9") is None  # patch releases of one line talk to each other
    assert lines.mismatch("x", "", "3.5.9") is None  # unknown: not refused


class _MasterPage(http.server.BaseHTTPRequestHandler):
    version = "0.0.0"

    def do_GET(self):  # noqa: N802 - the stdlib's name
        body = (f'<html><a href="/"><img src="/static/spark-logo.png"/><span class="version">{self.version}</span>'
                '</a> Spark Master at spark://127.0.0.1:7077</html>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def master_ui():
    server = http.server.HTTPServer(("127.0.0.1", 0), _MasterPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_a_standalone_master_of_another_line_is_refused_before_any_rpc(master_ui):
    client = lines.client_version()
    other = "3.5.9" if lines.line_of(client) != "3.5" else "4.3.0"
    _MasterPage.version = other
    assert lines.standalone_master_version("spark://127.0.0.1:7077", master_ui) == other
    with pytest.raises(ConfigurationError, match=f"standalone master spark://127.0.0.1:7077 runs Spark {other}"):
        lines.check_standalone_master("spark://127.0.0.1:7077", master_ui)
    _MasterPage.version = client
    lines.check_standalone_master("spark://127.0.0.1:7077", master_ui)  # the same line: accepted


def test_an_unreadable_master_ui_skips_the_check():
    assert lines.standalone_master_version("spark://127.0.0.1:7077", 9, timeout_s=1) is None
    assert lines.standalone_master_version("yarn") is None
    lines.check_standalone_master("spark://127.0.0.1:7077", 9)


def test_connect_progress_is_asked_of_the_session():
    class Old:
        pass

    class New:
        def registerProgressHandler(self, handler):  # noqa: N802 - pyspark's name
            pass

    assert not lines.has_connect_progress(Old()) and lines.has_connect_progress(New())
