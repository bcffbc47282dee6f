"""A private network namespace holding only loopback, for tests whose processes open listeners on every interface.

SynapseML's LightGBM opens its driver's server socket and its workers' sockets on all interfaces, with no setting
for the address (``NetworkManager``: ``new ServerSocket(port)``). Tests that train it run, with every process they
start (the Spark driver, a YARN cluster and its containers), under ``unshare -n`` (as root), where the only
interface is ``lo``: nothing they open is reachable from another machine. Where namespaces are not available the
tests that need one are skipped, never run on the open network.
"""

from __future__ import annotations

import functools
import shutil
import subprocess


@functools.cache
def available() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True).returncode == 0


def command(argv: list[str]) -> list[str]:
    """``argv`` run in a new network namespace whose loopback is up."""
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "netns", *argv]
