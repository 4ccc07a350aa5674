// A stock Apache Tomcat Tribes node for shoal's interop tests
// (host/tests/interop.rs). It uses Tomcat's own classes only: GroupChannel,
// McastService, NioReceiver, ReplicationTransmitter + PooledParallelSender and
// the interceptors TcpFailureDetector, MessageDispatchInterceptor and
// ThroughputInterceptor (and EncryptInterceptor when given a key). The only addition is a pass-through interceptor at the
// top of the stack that remembers the option bits of the message being
// delivered, so the listener can report them.
//
// Build and run (see README.md, "Interoperating with Tomcat"):
//   CP=/usr/share/java/tomcat10-tribes.jar:/usr/share/java/tomcat10-juli.jar
//   javac -d /tmp/peer -cp $CP tests/interop/TribesPeer.java
//   java -Djava.net.preferIPv4Stack=true -cp /tmp/peer:$CP TribesPeer \
//       name=t1 port=4100 mcastPort=45564 domain=tomcat
//
// Arguments (key=value, all optional): name, address (receiver, default
// 127.0.0.1), port (receiver, default 4000), mcastAddress (228.0.0.4),
// mcastPort (45564), bind (127.0.0.1), frequency (500), dropTime (3000),
// domain (none), encryptionKey (hex; adds Tomcat's EncryptInterceptor right
// below the recorder, above TcpFailureDetector as Tomcat requires) and
// encryptionAlgorithm (with encryptionKey; default: Tomcat's own).
//
// Output: one JSON object per line on stdout, flushed:
//   {"event":"started","id":HEX,"host":"127.0.0.1","port":N,"domain":S}
//   {"event":"member_added","id":HEX,"host":S,"port":N,"domain":S,"alive":N}
//   {"event":"member_disappeared","id":HEX,"host":S,"port":N,"domain":S,"shutdown":BOOL}
//   {"event":"message","from":HEX,"from_host":S,"from_port":N,"options":N,"len":N,"body":HEX,"threw":BOOL}
//   {"event":"send_result","tag":S,"ok":true}            (or "ok":false,"error":S,"faulty":[{"id":HEX,"error":S}])
//   {"event":"send_complete","tag":S,"ok":BOOL,...}       (asynchronous sends: MessageDispatchInterceptor's ErrorHandler)
//   {"event":"members","tag":S,"members":[{"id":HEX,"host":S,"port":N,"domain":S,"alive":N},...]}
//   {"event":"ok","command":S} / {"event":"error","message":S}
//   {"event":"stopped"}
// The member list is the channel's, in Tribes' order (longest-running first).
//
// Commands on stdin, one per line:
//   send TAG all|ID[,ID...] OPTIONS HEXBODY   ("-" for an empty body)
//   members [TAG]
//   throw on|off        make the ChannelListener throw for every message
//   stop                graceful channel.stop(Channel.DEFAULT), then exit 0
// End of stdin also stops the channel gracefully.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.catalina.tribes.ByteMessage;
import org.apache.catalina.tribes.Channel;
import org.apache.catalina.tribes.ChannelException;
import org.apache.catalina.tribes.ChannelListener;
import org.apache.catalina.tribes.ChannelMessage;
import org.apache.catalina.tribes.ErrorHandler;
import org.apache.catalina.tribes.Member;
import org.apache.catalina.tribes.MembershipListener;
import org.apache.catalina.tribes.UniqueId;
import org.apache.catalina.tribes.group.ChannelInterceptorBase;
import org.apache.catalina.tribes.group.GroupChannel;
import org.apache.catalina.tribes.group.interceptors.EncryptInterceptor;
import org.apache.catalina.tribes.group.interceptors.MessageDispatchInterceptor;
import org.apache.catalina.tribes.group.interceptors.TcpFailureDetector;
import org.apache.catalina.tribes.group.interceptors.ThroughputInterceptor;
import org.apache.catalina.tribes.membership.McastService;
import org.apache.catalina.tribes.transport.ReplicationTransmitter;
import org.apache.catalina.tribes.transport.nio.NioReceiver;
import org.apache.catalina.tribes.transport.nio.PooledParallelSender;

public final class TribesPeer {

    private static final PrintStream OUT = new PrintStream(System.out, false, StandardCharsets.UTF_8);
    private static final byte[] SHUTDOWN = "BABY-ALEX".getBytes(StandardCharsets.ISO_8859_1);

    /** Options of the message being delivered on this thread (set by {@link OptionsRecorder}). */
    private static final ThreadLocal<Integer> CURRENT_OPTIONS = new ThreadLocal<>();

    private static final AtomicBoolean listenerThrows = new AtomicBoolean(false);

    private TribesPeer() {
    }

    /** Pass-through interceptor at the top of the stack: remembers the options of a received message. */
    public static final class OptionsRecorder extends ChannelInterceptorBase {
        @Override
        public void messageReceived(ChannelMessage msg) {
            CURRENT_OPTIONS.set(Integer.valueOf(msg.getOptions()));
            try {
                super.messageReceived(msg);
            } finally {
                CURRENT_OPTIONS.remove();
            }
        }
    }

    static synchronized void emit(String json) {
        OUT.println(json);
        OUT.flush();
    }

    static String hex(byte[] b) {
        StringBuilder sb = new StringBuilder(b.length * 2);
        for (byte x : b) {
            sb.append(Character.forDigit((x >> 4) & 0xf, 16)).append(Character.forDigit(x & 0xf, 16));
        }
        return sb.toString();
    }

    static byte[] unhex(String s) {
        if (s.equals("-")) {
            return new byte[0];
        }
        if (s.length() % 2 != 0) {
            throw new IllegalArgumentException("odd number of hex digits");
        }
        byte[] b = new byte[s.length() / 2];
        for (int i = 0; i < b.length; i++) {
            int hi = Character.digit(s.charAt(2 * i), 16);
            int lo = Character.digit(s.charAt(2 * i + 1), 16);
            if (hi < 0 || lo < 0) {
                throw new IllegalArgumentException("not a hex digit near position " + (2 * i));
            }
            b[i] = (byte) ((hi << 4) | lo);
        }
        return b;
    }

    static String str(String s) {
        StringBuilder sb = new StringBuilder(s.length() + 2).append('"');
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '\t' -> sb.append("\\t");
                default -> {
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
                }
            }
        }
        return sb.append('"').toString();
    }

    static String host(Member m) {
        byte[] h = m.getHost();
        try {
            return java.net.InetAddress.getByAddress(h).getHostAddress();
        } catch (java.net.UnknownHostException e) {
            return hex(h);
        }
    }

    static String domain(Member m) {
        byte[] d = m.getDomain();
        return d == null ? "" : new String(d, StandardCharsets.ISO_8859_1);
    }

    static String memberFields(Member m) {
        return "\"id\":" + str(hex(m.getUniqueId())) + ",\"host\":" + str(host(m)) + ",\"port\":" + m.getPort() +
                ",\"domain\":" + str(domain(m));
    }

    static String describe(Throwable t) {
        StringBuilder sb = new StringBuilder(t.getClass().getSimpleName());
        if (t.getMessage() != null) {
            sb.append(": ").append(t.getMessage());
        }
        return sb.toString();
    }

    static String failure(ChannelException cx) {
        StringBuilder sb = new StringBuilder();
        sb.append("\"ok\":false,\"error\":").append(str(describe(cx))).append(",\"faulty\":[");
        ChannelException.FaultyMember[] faulty = cx.getFaultyMembers();
        for (int i = 0; i < faulty.length; i++) {
            if (i > 0) {
                sb.append(',');
            }
            Exception cause = faulty[i].getCause();
            sb.append("{\"id\":").append(str(hex(faulty[i].getMember().getUniqueId()))).append(",\"error\":")
                    .append(str(cause == null ? "" : describe(cause))).append(",\"kind\":")
                    .append(str(cause == null ? "" : cause.getClass().getSimpleName())).append('}');
        }
        return sb.append(']').toString();
    }

    public static void main(String[] args) throws Exception {
        Map<String,String> a = new HashMap<>();
        for (String arg : args) {
            int eq = arg.indexOf('=');
            if (eq <= 0) {
                System.err.println("usage: TribesPeer key=value ...; bad argument " + arg);
                System.exit(2);
            }
            a.put(arg.substring(0, eq), arg.substring(eq + 1));
        }
        String name = a.getOrDefault("name", "tribes-peer");

        GroupChannel channel = new GroupChannel();
        channel.setName(name);
        channel.setJmxEnabled(false);
        ScheduledThreadPoolExecutor utility = new ScheduledThreadPoolExecutor(2, r -> {
            Thread t = new Thread(r, name + "-utility");
            t.setDaemon(true);
            return t;
        });
        channel.setUtilityExecutor(utility);

        McastService membership = (McastService) channel.getMembershipService();
        membership.setAddress(a.getOrDefault("mcastAddress", "228.0.0.4"));
        membership.setPort(Integer.parseInt(a.getOrDefault("mcastPort", "45564")));
        membership.setBind(a.getOrDefault("bind", "127.0.0.1"));
        membership.setFrequency(Long.parseLong(a.getOrDefault("frequency", "500")));
        membership.setDropTime(Long.parseLong(a.getOrDefault("dropTime", "3000")));
        if (a.containsKey("domain")) {
            membership.setDomain(a.get("domain"));
        }

        NioReceiver receiver = (NioReceiver) channel.getChannelReceiver();
        receiver.setAddress(a.getOrDefault("address", "127.0.0.1"));
        receiver.setPort(Integer.parseInt(a.getOrDefault("port", "4000")));
        receiver.setAutoBind(Integer.parseInt(a.getOrDefault("autoBind", "20")));
        receiver.setMinThreads(2);
        receiver.setMaxThreads(6);

        ReplicationTransmitter transmitter = (ReplicationTransmitter) channel.getChannelSender();
        transmitter.setTransport(new PooledParallelSender());

        // Top to bottom: the recorder sits right below the GroupChannel.
        channel.addInterceptor(new OptionsRecorder());
        if (a.containsKey("encryptionKey")) {
            EncryptInterceptor encrypt = new EncryptInterceptor();
            encrypt.setEncryptionKey(a.get("encryptionKey"));
            if (a.containsKey("encryptionAlgorithm")) {
                encrypt.setEncryptionAlgorithm(a.get("encryptionAlgorithm"));
            }
            channel.addInterceptor(encrypt);
        }
        channel.addInterceptor(new TcpFailureDetector());
        channel.addInterceptor(new MessageDispatchInterceptor());
        channel.addInterceptor(new ThroughputInterceptor());

        channel.addMembershipListener(new MembershipListener() {
            @Override
            public void memberAdded(Member member) {
                emit("{\"event\":\"member_added\"," + memberFields(member) + ",\"alive\":" +
                        member.getMemberAliveTime() + "}");
            }

            @Override
            public void memberDisappeared(Member member) {
                boolean shutdown = java.util.Arrays.equals(member.getCommand(), SHUTDOWN);
                emit("{\"event\":\"member_disappeared\"," + memberFields(member) + ",\"shutdown\":" + shutdown +
                        "}");
            }
        });

        channel.addChannelListener(new ChannelListener() {
            @Override
            public boolean accept(Serializable msg, Member sender) {
                return msg instanceof ByteMessage;
            }

            @Override
            public void messageReceived(Serializable msg, Member sender) {
                byte[] body = ((ByteMessage) msg).getMessage();
                Integer options = CURRENT_OPTIONS.get();
                boolean threw = listenerThrows.get();
                emit("{\"event\":\"message\",\"from\":" + str(hex(sender.getUniqueId())) + ",\"from_host\":" +
                        str(host(sender)) + ",\"from_port\":" + sender.getPort() + ",\"options\":" +
                        (options == null ? -1 : options.intValue()) + ",\"len\":" + body.length + ",\"body\":" +
                        str(hex(body)) + ",\"threw\":" + threw + "}");
                if (threw) {
                    throw new IllegalStateException("TribesPeer listener told to throw");
                }
            }
        });

        channel.start(Channel.DEFAULT);
        Member local = channel.getLocalMember(true);
        emit("{\"event\":\"started\"," + memberFields(local) + "}");

        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            line = line.trim();
            if (line.isEmpty()) {
                continue;
            }
            String[] w = line.split("\\s+");
            try {
                switch (w[0]) {
                    case "send" -> send(channel, w);
                    case "members" -> members(channel, w.length > 1 ? w[1] : "");
                    case "throw" -> {
                        listenerThrows.set("on".equals(w[1]));
                        emit("{\"event\":\"ok\",\"command\":" + str(line) + "}");
                    }
                    case "stop" -> {
                        stop(channel);
                        return;
                    }
                    default -> emit("{\"event\":\"error\",\"message\":" + str("unknown command: " + line) + "}");
                }
            } catch (RuntimeException e) {
                emit("{\"event\":\"error\",\"message\":" + str(describe(e) + " in: " + line) + "}");
            }
        }
        stop(channel);
    }

    static void stop(GroupChannel channel) throws ChannelException {
        channel.stop(Channel.DEFAULT);
        emit("{\"event\":\"stopped\"}");
        System.exit(0);
    }

    static void members(GroupChannel channel, String tag) {
        StringBuilder sb = new StringBuilder("{\"event\":\"members\",\"tag\":" + str(tag) + ",\"members\":[");
        Member[] ms = channel.getMembers();
        for (int i = 0; i < ms.length; i++) {
            if (i > 0) {
                sb.append(',');
            }
            sb.append('{').append(memberFields(ms[i])).append(",\"alive\":").append(ms[i].getMemberAliveTime())
                    .append('}');
        }
        emit(sb.append("]}").toString());
    }

    static void send(GroupChannel channel, String[] w) {
        if (w.length != 5) {
            throw new IllegalArgumentException("usage: send TAG all|ID[,ID...] OPTIONS HEXBODY");
        }
        String tag = w[1];
        Member[] all = channel.getMembers();
        Member[] dests;
        if (w[2].equals("all")) {
            dests = all;
        } else {
            List<Member> picked = new ArrayList<>();
            for (String id : w[2].split(",")) {
                Member found = null;
                for (Member m : all) {
                    if (hex(m.getUniqueId()).equalsIgnoreCase(id)) {
                        found = m;
                    }
                }
                if (found == null) {
                    emit("{\"event\":\"send_result\",\"tag\":" + str(tag) + ",\"ok\":false,\"error\":" +
                            str("no such member: " + id) + ",\"faulty\":[]}");
                    return;
                }
                picked.add(found);
            }
            dests = picked.toArray(new Member[0]);
        }
        int options = Integer.parseInt(w[3]);
        byte[] body = unhex(w[4]);
        ErrorHandler handler = new ErrorHandler() {
            @Override
            public void handleError(ChannelException x, UniqueId id) {
                emit("{\"event\":\"send_complete\",\"tag\":" + str(tag) + "," + failure(x) + "}");
            }

            @Override
            public void handleCompletion(UniqueId id) {
                emit("{\"event\":\"send_complete\",\"tag\":" + str(tag) + ",\"ok\":true}");
            }
        };
        try {
            channel.send(dests, new ByteMessage(body), options, handler);
            emit("{\"event\":\"send_result\",\"tag\":" + str(tag) + ",\"ok\":true}");
        } catch (ChannelException cx) {
            emit("{\"event\":\"send_result\",\"tag\":" + str(tag) + "," + failure(cx) + "}");
        }
    }
}
