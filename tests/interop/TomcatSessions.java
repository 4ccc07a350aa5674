// One node of a real Tomcat 10.1 session-replication cluster, embedded, for
// host/benches/sessions.rs (shoal's session replication next to Tomcat's
// DeltaManager and BackupManager, and Redis).
//
// The node is org.apache.catalina.startup.Tomcat with one distributable ROOT
// context and the cluster of Tomcat's documented configuration
// (cluster-howto.html; reference/tribes.md §7): SimpleTcpCluster with a
// GroupChannel of McastService, NioReceiver (selectorTimeout 5000,
// maxThreads 6), ReplicationTransmitter + PooledParallelSender, interceptors
// TcpFailureDetector + MessageDispatchInterceptor; ReplicationValve
// (filter "") and JvmRouteBinderValve; ClusterSessionListener; the manager
// template DeltaManager or BackupManager (mapSendOptions = the cluster's
// send options, so "async" and "sync" mean the same for both managers). The
// HTTP connector keeps connections alive without limit
// (maxKeepAliveRequests -1; Tomcat's default 100 would make a load test
// measure reconnects). Everything else is Tomcat's default.
//
// Build and run (host/benches/sessions.rs does this):
//   J=/usr/share/java
//   CP=$J/tomcat10-catalina.jar:$J/tomcat10-catalina-ha.jar:$J/tomcat10-tribes.jar:$J/tomcat10-coyote.jar:\
//   $J/tomcat10-util.jar:$J/tomcat10-util-scan.jar:$J/tomcat10-api.jar:$J/tomcat10-juli.jar:$J/tomcat10-jni.jar:\
//   $J/tomcat10-servlet-api.jar:$J/tomcat10-annotations-api.jar:$J/tomcat10-jaspic-api.jar
//   javac -d /tmp/ts -cp $CP tests/interop/TomcatSessions.java
//   java -Djava.net.preferIPv4Stack=true -cp /tmp/ts:$CP TomcatSessions \
//       http=8081 tribes=4101 mcastPort=45701 route=t1 manager=delta options=8 base=/tmp/ts-t1
//
// Arguments (key=value; a JVM system property `tomcatSessions.KEY` is used
// when the argument is absent):
//   http        HTTP port on 127.0.0.1 (default 8080)
//   tribes      Tribes receiver port on 127.0.0.1, autoBind 100 (default 4000)
//   mcastAddress, mcastPort   multicast group (228.0.0.4, 45564); the
//               membership binds 127.0.0.1. Use an own port per cluster.
//   route       the Engine's jvmRoute (session ids end in .ROUTE)
//   manager     delta | backup
//   options     cluster channelSendOptions, and BackupManager's
//               mapSendOptions: 8 (async) or 6 (USE_ACK | SYNC_ACK)
//   base        Tomcat's base directory (work files), created if missing
//   senderTimeout  the PooledParallelSender's timeout in ms (absent: Tribes'
//               default, 3000). It bounds every send including the wait for
//               its ACK, so also the DeltaManager's one-message state
//               transfer (ALL_SESSION_DATA, options 6).
//
// HTTP endpoints (context ROOT, so the manager's cluster name is
// "localhost#"):
//   POST /write          sets session attribute `a` to the request body (a
//                        String, ISO-8859-1); creates the session if the
//                        request has none. Answers the session id (text).
//                        The client sends Cookie: JSESSIONID=ID after that.
//   GET  /count          {"sessions":N,"full":F,"members":M,"route":S}:
//                        sessions this node's manager holds (DeltaManager:
//                        all, primary or replica; BackupManager: the
//                        entries with a value, primary or backup; `full`
//                        also counts its proxies), and cluster members
//                        seen (not counting itself)
//   POST /fill?n=N&bytes=B  creates N sessions with a B-byte attribute `a`
//                        each (distinct values), straight through the
//                        manager (no cookies); answers {"created":N,"ms":T}
// Sessions created by /fill are ordinary sessions of this node: with a
// DeltaManager and no members nothing is sent; a node started later gets
// them all by state transfer (GET_ALL_SESSIONS).
//
// Output: {"event":"started","http":N,"tribes":N} on stdout once the
// connector accepts; Tomcat's log on stderr (JULI, INFO). The joining node's
// DeltaManager logs "... received in [T] ms" when a state transfer is done.
//
// Stop: "stop" or the end of stdin (so the JVM exits when its parent dies),
// or SIGTERM: Tomcat stops gracefully (the member leaves the cluster).

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;

import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import jakarta.servlet.http.HttpSession;

import org.apache.catalina.Context;
import org.apache.catalina.Manager;
import org.apache.catalina.Session;
import org.apache.catalina.connector.Connector;
import org.apache.catalina.ha.ClusterManager;
import org.apache.catalina.ha.session.BackupManager;
import org.apache.catalina.ha.session.ClusterSessionListener;
import org.apache.catalina.ha.session.DeltaManager;
import org.apache.catalina.ha.session.JvmRouteBinderValve;
import org.apache.catalina.ha.tcp.ReplicationValve;
import org.apache.catalina.ha.tcp.SimpleTcpCluster;
import org.apache.catalina.startup.Tomcat;
import org.apache.catalina.tribes.group.GroupChannel;
import org.apache.catalina.tribes.group.interceptors.MessageDispatchInterceptor;
import org.apache.catalina.tribes.group.interceptors.TcpFailureDetector;
import org.apache.catalina.tribes.membership.McastService;
import org.apache.catalina.tribes.transport.ReplicationTransmitter;
import org.apache.catalina.tribes.transport.nio.NioReceiver;
import org.apache.catalina.tribes.transport.nio.PooledParallelSender;

public final class TomcatSessions {

    private static final PrintStream OUT = new PrintStream(System.out, false, StandardCharsets.UTF_8);
    /** Largest body /write accepts, and largest attribute /fill makes. */
    private static final int MAX_BYTES = 1 << 20;

    private static volatile Context context;
    private static volatile SimpleTcpCluster cluster;
    private static volatile String jvmRoute;

    private TomcatSessions() {
    }

    static synchronized void emit(String json) {
        OUT.println(json);
        OUT.flush();
    }

    public static void main(String[] args) throws Exception {
        Map<String,String> a = new HashMap<>();
        for (String arg : args) {
            int eq = arg.indexOf('=');
            if (eq <= 0) {
                System.err.println("usage: TomcatSessions key=value ...; bad argument " + arg);
                System.exit(2);
            }
            a.put(arg.substring(0, eq), arg.substring(eq + 1));
        }
        int http = Integer.parseInt(arg(a, "http", "8080"));
        int tribes = Integer.parseInt(arg(a, "tribes", "4000"));
        String route = arg(a, "route", "t" + http);
        String managerKind = arg(a, "manager", "delta");
        int options = Integer.parseInt(arg(a, "options", "8"));
        File base = new File(arg(a, "base", "tomcat-sessions-" + http)).getAbsoluteFile();
        File docBase = new File(base, "ROOT");
        if (!docBase.isDirectory() && !docBase.mkdirs()) {
            throw new IOException("cannot create " + docBase);
        }

        Tomcat tomcat = new Tomcat();
        tomcat.setBaseDir(base.getPath());
        tomcat.setPort(http);
        Connector connector = tomcat.getConnector();
        connector.setProperty("address", "127.0.0.1");
        connector.setProperty("maxKeepAliveRequests", "-1");
        tomcat.getEngine().setJvmRoute(route);
        jvmRoute = route;

        // The cluster, as in Tomcat's documented <Cluster> element.
        SimpleTcpCluster c = new SimpleTcpCluster();
        c.setChannelSendOptions(options);
        ClusterManager template;
        switch (managerKind) {
            case "delta" -> {
                DeltaManager m = new DeltaManager();
                m.setExpireSessionsOnShutdown(false);
                m.setNotifyListenersOnReplication(true);
                template = m;
            }
            case "backup" -> {
                BackupManager m = new BackupManager();
                m.setMapSendOptions(options);
                template = m;
            }
            default -> throw new IllegalArgumentException("manager=delta|backup, not " + managerKind);
        }
        c.setManagerTemplate(template);

        GroupChannel channel = new GroupChannel();
        McastService membership = (McastService) channel.getMembershipService();
        membership.setAddress(arg(a, "mcastAddress", "228.0.0.4"));
        membership.setPort(Integer.parseInt(arg(a, "mcastPort", "45564")));
        membership.setBind("127.0.0.1");
        membership.setFrequency(500);
        membership.setDropTime(3000);
        NioReceiver receiver = (NioReceiver) channel.getChannelReceiver();
        receiver.setAddress("127.0.0.1");
        receiver.setPort(tribes);
        receiver.setAutoBind(100);
        receiver.setSelectorTimeout(5000);
        receiver.setMaxThreads(6);
        ReplicationTransmitter transmitter = (ReplicationTransmitter) channel.getChannelSender();
        PooledParallelSender transport = new PooledParallelSender();
        String senderTimeout = arg(a, "senderTimeout", null);
        if (senderTimeout != null) {
            transport.setTimeout(Long.parseLong(senderTimeout));
        }
        transmitter.setTransport(transport);
        channel.addInterceptor(new TcpFailureDetector());
        channel.addInterceptor(new MessageDispatchInterceptor());
        c.setChannel(channel);

        ReplicationValve replication = new ReplicationValve();
        replication.setFilter("");
        c.addValve(replication);
        c.addValve(new JvmRouteBinderValve());
        c.addClusterListener(new ClusterSessionListener());
        tomcat.getEngine().setCluster(c);
        cluster = c;

        Context ctx = tomcat.addContext("", docBase.getPath());
        ctx.setDistributable(true);
        Tomcat.addServlet(ctx, "write", new WriteServlet());
        ctx.addServletMappingDecoded("/write", "write");
        Tomcat.addServlet(ctx, "count", new CountServlet());
        ctx.addServletMappingDecoded("/count", "count");
        Tomcat.addServlet(ctx, "fill", new FillServlet());
        ctx.addServletMappingDecoded("/fill", "fill");
        context = ctx;

        AtomicBoolean stopped = new AtomicBoolean();
        Runnable stop = () -> {
            if (stopped.compareAndSet(false, true)) {
                try {
                    tomcat.stop();
                    tomcat.destroy();
                } catch (Exception e) {
                    System.err.println("stopping: " + e);
                }
            }
        };
        Runtime.getRuntime().addShutdownHook(new Thread(stop, "stop"));

        tomcat.start();
        emit("{\"event\":\"started\",\"http\":" + connector.getLocalPort() + ",\"tribes\":"
                + receiver.getPort() + "}");

        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            if (line.trim().equals("stop")) {
                break;
            }
        }
        stop.run();
        System.exit(0);
    }

    private static String arg(Map<String,String> a, String key, String dflt) {
        String v = a.get(key);
        return v != null ? v : System.getProperty("tomcatSessions." + key, dflt);
    }

    private static void answer(HttpServletResponse resp, String type, String text) throws IOException {
        byte[] b = text.getBytes(StandardCharsets.UTF_8);
        resp.setContentType(type);
        resp.setContentLength(b.length);
        resp.getOutputStream().write(b);
    }

    /** POST /write: attribute `a` := the body. */
    public static final class WriteServlet extends HttpServlet {
        private static final long serialVersionUID = 1L;

        @Override
        protected void doPost(HttpServletRequest req, HttpServletResponse resp) throws IOException {
            byte[] body = req.getInputStream().readNBytes(MAX_BYTES + 1);
            if (body.length > MAX_BYTES) {
                resp.sendError(413);
                return;
            }
            HttpSession session = req.getSession(true);
            session.setAttribute("a", new String(body, StandardCharsets.ISO_8859_1));
            answer(resp, "text/plain", session.getId());
        }
    }

    /** GET /count: sessions held and members seen. */
    public static final class CountServlet extends HttpServlet {
        private static final long serialVersionUID = 1L;

        @Override
        protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws IOException {
            Manager m = context.getManager();
            int full = m instanceof BackupManager b ? b.getActiveSessionsFull() : m.getActiveSessions();
            answer(resp, "application/json", "{\"sessions\":" + m.getActiveSessions() + ",\"full\":" + full
                    + ",\"members\":" + cluster.getMembers().length + ",\"route\":\""
                    + jvmRoute + "\",\"manager\":\""
                    + m.getClass().getSimpleName() + "\"}");
        }
    }

    /** POST /fill?n=N&bytes=B: N sessions with a B-byte attribute each. */
    public static final class FillServlet extends HttpServlet {
        private static final long serialVersionUID = 1L;

        @Override
        protected void doPost(HttpServletRequest req, HttpServletResponse resp) throws IOException {
            int n;
            int bytes;
            try {
                n = Integer.parseInt(req.getParameter("n"));
                bytes = Integer.parseInt(req.getParameter("bytes"));
            } catch (NumberFormatException e) {
                resp.sendError(400, "n and bytes must be numbers");
                return;
            }
            if (n < 0 || n > 10_000_000 || bytes < 16 || bytes > MAX_BYTES) {
                resp.sendError(400, "0 <= n <= 10000000, 16 <= bytes <= " + MAX_BYTES);
                return;
            }
            Manager m = context.getManager();
            char[] pad = new char[bytes];
            Arrays.fill(pad, 'x');
            long t0 = System.nanoTime();
            for (int i = 0; i < n; i++) {
                String tag = String.format("%016d", i);
                tag.getChars(0, tag.length(), pad, 0);
                Session s = m.createSession(null);
                s.getSession().setAttribute("a", new String(pad));
            }
            long ms = (System.nanoTime() - t0) / 1_000_000;
            answer(resp, "application/json", "{\"created\":" + n + ",\"ms\":" + ms + "}");
        }
    }
}
