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
// The web tier's routes, the same as the Rust example app examples/webapp
// (for its bench and for examples/webapp/tests/httpd_tomcat.rs, behind
// Apache httpd's mod_proxy_balancer; NAME is the route):
//   GET  /visit          attribute `visits` (an Integer) += 1, creating the
//                        session if needed; {"visits":N,"node":"NAME"}
//   POST /cart/add?item=ITEM&qty=N   body: an optional note (UTF-8, at most
//                        4096 bytes). Attribute `cart:ITEM` := the String
//                        {"qty":TOTAL,"note":NOTE} (TOTAL = the old qty + N,
//                        qty 1-1000, default 1; NOTE = the body, or the old
//                        note when the body is empty). Answers the cart.
//   POST /cart/remove?item=ITEM      removes `cart:ITEM`; answers the cart
//   GET  /cart           {"items":{"ITEM":{"qty":N,"note":"..."}},"node":"NAME"}
//                        (items sorted by name; no session: no items)
//   POST /cart/checkout  answers the cart with "checked_out":true, then
//                        invalidates the session
// ITEM is 1-64 of A-Z a-z 0-9 - _; a bad item, qty or note is a 400 with
// {"error":"..."}, as in the Rust app. Every response (these and the ones
// above) has the header X-Node: NAME.
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
import java.util.Collections;
import java.util.HashMap;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import jakarta.servlet.FilterChain;
import jakarta.servlet.ServletException;
import jakarta.servlet.http.HttpFilter;
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
import org.apache.tomcat.util.descriptor.web.FilterDef;
import org.apache.tomcat.util.descriptor.web.FilterMap;
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
    /** Largest note POST /cart/add accepts (the same as examples/webapp). */
    private static final int MAX_NOTE_BYTES = 4096;
    /** Largest qty of one POST /cart/add (the same as examples/webapp). */
    private static final int MAX_QTY = 1000;
    /** A cart item's name (the same as examples/webapp). */
    private static final Pattern ITEM = Pattern.compile("[A-Za-z0-9_-]{1,64}");
    /** Session attribute prefix of a cart item. */
    private static final String CART_PREFIX = "cart:";

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
        Tomcat.addServlet(ctx, "visit", new VisitServlet());
        ctx.addServletMappingDecoded("/visit", "visit");
        Tomcat.addServlet(ctx, "cart", new CartServlet());
        ctx.addServletMappingDecoded("/cart", "cart");
        ctx.addServletMappingDecoded("/cart/*", "cart");
        FilterDef node = new FilterDef();
        node.setFilterName("node");
        node.setFilter(new NodeHeaderFilter());
        ctx.addFilterDef(node);
        FilterMap nodeMap = new FilterMap();
        nodeMap.setFilterName("node");
        nodeMap.addURLPatternDecoded("/*");
        ctx.addFilterMap(nodeMap);
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

    /** A JSON string literal. */
    static String jsonString(String v) {
        StringBuilder b = new StringBuilder(v.length() + 2).append('"');
        for (int i = 0; i < v.length(); i++) {
            char c = v.charAt(i);
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                case '\b' -> b.append("\\b");
                case '\f' -> b.append("\\f");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        return b.append('"').toString();
    }

    /** Every response names the node: X-Node: ROUTE. */
    public static final class NodeHeaderFilter extends HttpFilter {
        private static final long serialVersionUID = 1L;

        @Override
        protected void doFilter(HttpServletRequest req, HttpServletResponse resp, FilterChain chain)
                throws IOException, ServletException {
            resp.setHeader("X-Node", jvmRoute);
            chain.doFilter(req, resp);
        }
    }

    /** GET /visit: `visits` (Integer) += 1. */
    public static final class VisitServlet extends HttpServlet {
        private static final long serialVersionUID = 1L;

        @Override
        protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws IOException {
            HttpSession session = req.getSession(true);
            int visits;
            synchronized (session) {
                Object old = session.getAttribute("visits");
                visits = (old instanceof Integer i ? i : 0) + 1;
                session.setAttribute("visits", visits);
            }
            answer(resp, "application/json", "{\"visits\":" + visits + ",\"node\":" + jsonString(jvmRoute) + "}");
        }
    }

    /** GET /cart, POST /cart/add, /cart/remove, /cart/checkout. */
    public static final class CartServlet extends HttpServlet {
        private static final long serialVersionUID = 1L;
        private static final Pattern QTY = Pattern.compile("^\\{\"qty\":(\\d+),");
        private static final Pattern NOTE = Pattern.compile(",\"note\":(\".*\")\\}$");

        @Override
        protected void service(HttpServletRequest req, HttpServletResponse resp) throws IOException {
            String path = req.getPathInfo() == null ? "" : req.getPathInfo();
            String method = req.getMethod();
            switch (path) {
                case "", "/" -> {
                    if (!method.equals("GET")) {
                        resp.sendError(405);
                        return;
                    }
                    answerCart(resp, req.getSession(false));
                }
                case "/add" -> {
                    if (method.equals("POST")) {
                        add(req, resp);
                    } else {
                        resp.sendError(405);
                    }
                }
                case "/remove" -> {
                    if (!method.equals("POST")) {
                        resp.sendError(405);
                        return;
                    }
                    String item = item(req, resp);
                    if (item == null) {
                        return;
                    }
                    HttpSession session = req.getSession(false);
                    if (session != null) {
                        session.removeAttribute(CART_PREFIX + item);
                    }
                    answerCart(resp, session);
                }
                case "/checkout" -> {
                    if (!method.equals("POST")) {
                        resp.sendError(405);
                        return;
                    }
                    HttpSession session = req.getSession(false);
                    String cart = cart(session, true);
                    if (session != null) {
                        session.invalidate();
                    }
                    answer(resp, "application/json", cart);
                }
                default -> resp.sendError(404);
            }
        }

        private static void add(HttpServletRequest req, HttpServletResponse resp) throws IOException {
            // The body first: a client that sends the note as
            // application/x-www-form-urlencoded (curl --data) would otherwise
            // have it parsed away as form parameters by getParameter.
            byte[] body = req.getInputStream().readNBytes(MAX_NOTE_BYTES + 1);
            if (body.length > MAX_NOTE_BYTES) {
                badRequest(resp, "a note is at most " + MAX_NOTE_BYTES + " bytes");
                return;
            }
            String item = item(req, resp);
            if (item == null) {
                return;
            }
            String q = req.getParameter("qty");
            int qty;
            try {
                qty = q == null ? 1 : Integer.parseInt(q);
            } catch (NumberFormatException e) {
                qty = -1;
            }
            if (qty < 1 || qty > MAX_QTY) {
                badRequest(resp, "qty must be 1-" + MAX_QTY + ", not " + q);
                return;
            }
            String note = new String(body, StandardCharsets.UTF_8);
            HttpSession session = req.getSession(true);
            String key = CART_PREFIX + item;
            synchronized (session) {
                long total = qty;
                if (session.getAttribute(key) instanceof String old) {
                    Matcher m = QTY.matcher(old);
                    if (m.find()) {
                        total += Long.parseLong(m.group(1));
                    }
                    if (note.isEmpty()) {
                        m = NOTE.matcher(old);
                        if (m.find()) {
                            note = unescape(m.group(1));
                        }
                    }
                }
                session.setAttribute(key, "{\"qty\":" + total + ",\"note\":" + jsonString(note) + "}");
            }
            answerCart(resp, session);
        }

        /** The `item` parameter, or null after answering 400. */
        private static String item(HttpServletRequest req, HttpServletResponse resp) throws IOException {
            String item = req.getParameter("item");
            if (item == null || !ITEM.matcher(item).matches()) {
                badRequest(resp, "item must be 1-64 of A-Z a-z 0-9 - _, not " + item);
                return null;
            }
            return item;
        }

        private static void badRequest(HttpServletResponse resp, String msg) throws IOException {
            resp.setStatus(400);
            answer(resp, "application/json", "{\"error\":" + jsonString(msg) + "}");
        }

        /** The text of a JSON string literal written by jsonString. */
        private static String unescape(String literal) {
            StringBuilder b = new StringBuilder();
            for (int i = 1; i < literal.length() - 1; i++) {
                char c = literal.charAt(i);
                if (c != '\\') {
                    b.append(c);
                    continue;
                }
                char e = literal.charAt(++i);
                switch (e) {
                    case 'n' -> b.append('\n');
                    case 'r' -> b.append('\r');
                    case 't' -> b.append('\t');
                    case 'b' -> b.append('\b');
                    case 'f' -> b.append('\f');
                    case 'u' -> {
                        b.append((char) Integer.parseInt(literal.substring(i + 1, i + 5), 16));
                        i += 4;
                    }
                    default -> b.append(e);
                }
            }
            return b.toString();
        }

        private static void answerCart(HttpServletResponse resp, HttpSession session) throws IOException {
            answer(resp, "application/json", cart(session, false));
        }

        /**
         * {"items":{...},"node":"NAME"} from the session's `cart:`
         * attributes (with "checked_out":true after the items at checkout).
         */
        private static String cart(HttpSession session, boolean checkedOut) {
            TreeMap<String,String> items = new TreeMap<>();
            if (session != null) {
                try {
                    for (String name : Collections.list(session.getAttributeNames())) {
                        if (name.startsWith(CART_PREFIX) && session.getAttribute(name) instanceof String v) {
                            items.put(name.substring(CART_PREFIX.length()), v);
                        }
                    }
                } catch (IllegalStateException invalidated) {
                    // a session invalidated meanwhile has no items
                }
            }
            StringBuilder b = new StringBuilder("{\"items\":{");
            boolean first = true;
            for (Map.Entry<String,String> e : items.entrySet()) {
                if (!first) {
                    b.append(',');
                }
                first = false;
                b.append(jsonString(e.getKey())).append(':').append(e.getValue());
            }
            b.append('}');
            if (checkedOut) {
                b.append(",\"checked_out\":true");
            }
            return b.append(",\"node\":").append(jsonString(jvmRoute)).append('}').toString();
        }
    }
}
