"""A real single-machine YARN with HDFS, for the tests, ``make bench-cluster`` and ``make yarn``: a ResourceManager,
N NodeManagers and a NameNode with one DataNode, Hadoop's own servers from Maven Central (pom-yarn.xml, fetched by
``make yarn-jars`` into .cache/yarn-jars), in one JVM started by ``yarn/MiniYarn.java`` and stopped by process id.

Every address is 127.0.0.1 (bind hosts and advertised hosts both), on ports chosen here, so nothing listens on another
interface and the client configuration written beside the cluster (``hadoop-conf/``: ``core-site.xml`` and
``yarn-site.xml``, what a cluster's edge node has) names the same ports. Spark finds it through ``HADOOP_CONF_DIR``
and ``spark.master=yarn``, in client mode, as HDInsight runs notebooks and ``spark-submit``.

Run as a module it is ``make yarn`` / ``make yarn-stop``: ``start`` prints the ``export`` lines that point
``make run`` at the cluster; ``stop`` stops the process its pid file names. ``run -- <command>`` starts a cluster, runs
the command against it and stops it: the tests run it inside a private network namespace (:mod:`.netns`) where what
runs on the cluster opens listeners of its own on every interface (SynapseML's LightGBM).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import xml.sax.saxutils
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

from aerial_assets_tests.standalone_cluster import free_port, spark_conf_dir, stop_group

REPO = Path(__file__).resolve().parents[1]
JARS = REPO / ".cache" / "yarn-jars"
LAUNCHER = Path(__file__).resolve().parent / "yarn" / "MiniYarn.java"
LOOPBACK = "127.0.0.1"
#: what Hadoop 3.4's servers reach into on Java 17 (its reflection on the JDK's internals)
JAVA_OPENS = [f"--add-opens=java.base/{package}=ALL-UNNAMED" for package in (
    "java.lang", "java.lang.reflect", "java.util", "java.util.concurrent", "java.io", "java.net", "java.nio",
    "sun.nio.ch")]


def jars_present(folder: Path = JARS) -> bool:
    return (folder / ".complete").exists()


def _site_xml(settings: dict[str, str]) -> str:
    escape = xml.sax.saxutils.escape
    body = "".join(f"  <property><name>{escape(k)}</name><value>{escape(v)}</value></property>\n"
                   for k, v in settings.items())
    return f'<?xml version="1.0"?>\n<configuration>\n{body}</configuration>\n'


@dataclass
class YarnCluster:
    """``with YarnCluster(folder, node_managers=2) as yarn:`` ... ``yarn.conf_dir`` is the ``HADOOP_CONF_DIR``.

    Each NodeManager offers ``vcores`` and ``memory_mb`` to containers; the scheduler counts both (the dominant
    resource calculator), so a single-core executor takes one vcore and the application master one more. Physical
    and virtual memory checks are off: an executor's Python workers (onnxruntime, pandas) count towards its
    container, and on a shared test machine a container killed for a burst would fail a test for the wrong reason.
    """

    folder: Path
    node_managers: int = 2
    vcores: int = 2
    memory_mb: int = 4096
    heap: str = "768m"
    ports: dict[str, int] = field(default_factory=dict)
    #: each NodeManager's ``host:port`` id and its web port, as the cluster printed them
    nodes: list[tuple[str, int]] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    @property
    def conf_dir(self) -> Path:
        return self.folder / "hadoop-conf"

    @property
    def log(self) -> Path:
        return self.folder / "cluster.log"

    @property
    def default_fs(self) -> str:
        return f"hdfs://{LOOPBACK}:{self.ports['namenode']}"

    def settings(self) -> dict[str, str]:
        """The servers' settings: every bind and advertised host on loopback, fixed ports for what clients dial."""
        lo, p = LOOPBACK, self.ports
        return {
            # the ResourceManager's addresses as configured here, not replaced by ephemeral ones on the machine's
            # host name (which MiniYARNCluster does otherwise, and which resolves to another interface)
            "yarn.minicluster.fixed.ports": "true",
            "yarn.resourcemanager.hostname": lo, "yarn.resourcemanager.bind-host": lo,
            "yarn.resourcemanager.address": f"{lo}:{p['rm']}",
            "yarn.resourcemanager.scheduler.address": f"{lo}:{p['scheduler']}",
            "yarn.resourcemanager.resource-tracker.address": f"{lo}:{p['tracker']}",
            "yarn.resourcemanager.admin.address": f"{lo}:{p['admin']}",
            "yarn.resourcemanager.webapp.address": f"{lo}:{p['webapp']}",
            "yarn.nodemanager.hostname": lo, "yarn.nodemanager.bind-host": lo,
            # every NodeManager of the JVM takes ports of its own
            "yarn.nodemanager.address": f"{lo}:0", "yarn.nodemanager.localizer.address": f"{lo}:0",
            "yarn.nodemanager.webapp.address": f"{lo}:0",
            "yarn.nodemanager.resource.cpu-vcores": str(self.vcores),
            "yarn.nodemanager.resource.memory-mb": str(self.memory_mb),
            "yarn.scheduler.minimum-allocation-mb": "256",
            "yarn.scheduler.maximum-allocation-mb": str(self.memory_mb),
            "yarn.scheduler.maximum-allocation-vcores": str(self.vcores),
            "yarn.scheduler.capacity.resource-calculator":
                "org.apache.hadoop.yarn.util.resource.DominantResourceCalculator",
            "yarn.nodemanager.vmem-check-enabled": "false", "yarn.nodemanager.pmem-check-enabled": "false",
            # an application's container logs stay on its NodeManager, where a test reads them
            "yarn.log-aggregation-enable": "false", "yarn.nodemanager.delete.debug-delay-sec": "600",
            "yarn.timeline-service.enabled": "false",
            "dfs.namenode.rpc-bind-host": lo, "dfs.namenode.servicerpc-bind-host": lo,
            "dfs.namenode.http-bind-host": lo, "dfs.namenode.https-bind-host": lo,
            "dfs.replication": "1", "dfs.permissions.enabled": "false",
        }

    def client_settings(self) -> tuple[dict[str, str], dict[str, str]]:
        """What a client needs (``core-site.xml``, ``yarn-site.xml``): the file system and the ResourceManager."""
        lo, p = LOOPBACK, self.ports
        core = {"fs.defaultFS": self.default_fs}
        yarn = {"yarn.resourcemanager.hostname": lo, "yarn.resourcemanager.address": f"{lo}:{p['rm']}",
                "yarn.resourcemanager.scheduler.address": f"{lo}:{p['scheduler']}",
                "yarn.resourcemanager.webapp.address": f"{lo}:{p['webapp']}"}
        return core, yarn

    def __enter__(self) -> YarnCluster:
        if not jars_present():
            raise FileNotFoundError(f"no YARN jars in {JARS}: run `make yarn-jars` (needs Maven)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in ("rm", "scheduler", "tracker", "admin", "webapp", "namenode")}
        args = ["java", f"-Xmx{self.heap}", "-Djava.net.preferIPv4Stack=true", *JAVA_OPENS, "-cp", f"{JARS}/*",
                str(LAUNCHER), str(self.folder), str(self.node_managers), str(self.ports["namenode"]),
                *(f"{k}={v}" for k, v in self.settings().items())]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(args, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._wait_ready()
        core, yarn = self.client_settings()
        self.conf_dir.mkdir(exist_ok=True)
        (self.conf_dir / "core-site.xml").write_text(_site_xml(core))
        (self.conf_dir / "yarn-site.xml").write_text(_site_xml(yarn))
        return self

    def _wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if re.search(r"^READY ", text, re.M):
                self.nodes = [(m.group(1), int(m.group(2))) for m in re.finditer(r"^NODE (\S+) (\d+)$", text, re.M)]
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the YARN cluster exited during start; see {self.log}")
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the YARN cluster was not up within {timeout} s; see {self.log}")

    def spark_conf(self) -> dict[str, str]:
        """Spark settings for a client of this cluster, as a cluster's ``spark-defaults.conf`` gives them: the
        driver on loopback, and Spark's jars taken from where Spark is installed on the nodes (``local:``, as
        HDInsight's configuration does), not uploaded to HDFS for every application."""
        return {"spark.driver.host": LOOPBACK, "spark.driver.bindAddress": LOOPBACK,
                "spark.yarn.jars": f"local:{os.path.dirname(pyspark.__file__)}/jars/*"}

    def container_dirs(self, application: str) -> dict[int, list[Path]]:
        """Each NodeManager's log folders of the containers an application ran there: YARN's own record."""
        base = next(self.folder.glob("target/test/data/aerial-yarn/yarn-*"), None)
        out = {}
        for i in range(self.node_managers):
            logs = base and next(base.glob(f"aerial-yarn-logDir-nm-{i}_*"), None)
            out[i] = sorted((logs / application).glob("container_*")) if logs and (logs / application).is_dir() else []
        return out

    def stop(self) -> None:
        if self.proc is not None:
            # the shutdown hook stops YARN, then HDFS; a NodeManager waiting on a container can take longer
            stop_group(self.proc, timeout=15)

    def __exit__(self, *exc) -> None:
        self.stop()


PID_FILE = "cluster.pid"
NODES_FILE = "nodes.json"


def write_spark_conf(cluster: YarnCluster, extra: dict[str, str]) -> Path:
    """The ``SPARK_CONF_DIR`` of a client of ``cluster``: its settings, then ``extra``."""
    return spark_conf_dir(cluster.folder / "spark-conf", {**cluster.spark_conf(), **extra})


def main(argv: list[str] | None = None) -> int:
    """``make yarn`` / ``make yarn-stop``: a cluster that stays up for ``make run`` (stopped by its process id).
    ``run [--conf key=value]... -- command...``: the command against a cluster of its own (exit status: the
    command's), with ``HADOOP_CONF_DIR``, ``SPARK_CONF_DIR`` and ``AERIAL_SPARK_MASTER=yarn`` set; the NodeManagers'
    ids and web ports are left in ``nodes.json``, their logs under the folder."""
    parser = argparse.ArgumentParser(prog="python -m aerial_assets_tests.yarn_cluster")
    parser.add_argument("command", choices=["start", "stop", "run"])
    parser.add_argument("--folder", type=Path, default=REPO / ".cache" / "yarn-cluster")
    parser.add_argument("--node-managers", type=int, default=2)
    parser.add_argument("--vcores", type=int, default=2)
    parser.add_argument("--memory-mb", type=int, default=4096)
    parser.add_argument("--conf", action="append", default=[], help="a Spark setting for the command (key=value)")
    argv = sys.argv[1:] if argv is None else argv
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.command == "run":
        if not command:
            parser.error("run needs the command after --")
        extra = dict(item.split("=", 1) for item in args.conf)
        with YarnCluster(args.folder, args.node_managers, args.vcores, args.memory_mb) as cluster:
            (args.folder / NODES_FILE).write_text(json.dumps(cluster.nodes))
            env = {**os.environ, "HADOOP_CONF_DIR": str(cluster.conf_dir),
                   "SPARK_CONF_DIR": str(write_spark_conf(cluster, extra)), "AERIAL_SPARK_MASTER": "yarn"}
            return subprocess.run(command, env=env).returncode
    pid_file = args.folder / PID_FILE
    if args.command == "stop":
        if not pid_file.exists():
            print(f"no YARN cluster started from {args.folder}")
            return 0
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        pid_file.unlink()
        print(f"stopped the YARN cluster (process group {pid})")
        return 0
    if pid_file.exists():
        print(f"a YARN cluster was started from {args.folder} (pid {pid_file.read_text().strip()}); "
              "`make yarn-stop` first", file=sys.stderr)
        return 2
    cluster = YarnCluster(args.folder, args.node_managers, args.vcores, args.memory_mb).__enter__()
    pid_file.write_text(str(cluster.proc.pid))
    spark_conf = write_spark_conf(cluster, {})
    web = f"http://{LOOPBACK}:{cluster.ports['webapp']}"
    print(f"YARN is up: {cluster.node_managers} NodeManagers, HDFS at {cluster.default_fs}, ResourceManager UI {web}")
    print("Point the graph at it (client mode) with:")
    print(f"  export HADOOP_CONF_DIR={shlex.quote(str(cluster.conf_dir))} "
          f"SPARK_CONF_DIR={shlex.quote(str(spark_conf))} AERIAL_SPARK_MASTER=yarn")
    print("Stop it with: make yarn-stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
