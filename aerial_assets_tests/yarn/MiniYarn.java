// A single-machine YARN with HDFS for the tests and `make yarn`, started by aerial_assets_tests/yarn_cluster.py.
//
// Hadoop's own MiniHadoopClusterManager also starts a MapReduce JobHistoryServer and a MapReduce shuffle service on
// every NodeManager, and those bind every interface (their bind address cannot be set). Spark needs neither, so this
// starts the two clusters that Hadoop's test jars provide, MiniDFSCluster and MiniYARNCluster, with nothing else.
// Every setting (addresses, resources) comes from the command line as key=value, chosen by the Python harness, so the
// client configuration it writes names the same ports. Run as a single-file program: `java -cp <jars> MiniYarn.java
// <work dir> <node managers> <namenode port> key=value...`; prints "READY" once both clusters serve, then runs until
// its process is stopped (SIGTERM runs the shutdown hook, which stops YARN, then HDFS).
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.hadoop.yarn.conf.YarnConfiguration;
import org.apache.hadoop.yarn.server.MiniYARNCluster;

public class MiniYarn {
    public static void main(String[] args) throws Exception {
        String work = args[0];
        int nodeManagers = Integer.parseInt(args[1]);
        int nameNodePort = Integer.parseInt(args[2]);
        YarnConfiguration conf = new YarnConfiguration();
        for (int i = 3; i < args.length; i++) {
            int eq = args[i].indexOf('=');
            conf.set(args[i].substring(0, eq), args[i].substring(eq + 1));
        }
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, work + "/hdfs");
        MiniDFSCluster dfs = new MiniDFSCluster.Builder(conf).numDataNodes(1).nameNodePort(nameNodePort)
                .format(true).build();
        dfs.waitActive();
        conf.set("fs.defaultFS", dfs.getFileSystem().getUri().toString());
        MiniYARNCluster yarn = new MiniYARNCluster("aerial-yarn", nodeManagers, 1, 1);
        yarn.init(conf);
        yarn.start();
        if (!yarn.waitForNodeManagersToConnect(60000)) {
            throw new IllegalStateException("the NodeManagers did not register with the ResourceManager in 60 s");
        }
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            yarn.stop();
            dfs.shutdown();
        }));
        for (int i = 0; i < nodeManagers; i++) {
            var context = yarn.getNodeManager(i).getNMContext();
            System.out.println("NODE " + context.getNodeId() + " " + context.getHttpPort());
        }
        System.out.println("READY " + conf.get("fs.defaultFS"));
        System.out.flush();
        Thread.currentThread().join();
    }
}
