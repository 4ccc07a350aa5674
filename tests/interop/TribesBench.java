// Benchmark driver for a stock Apache Tomcat Tribes node, used by
// host/benches/side_by_side.rs (Tomcat<->Tomcat next to shoal<->shoal).
//
// One JVM = one Tribes node, built from Tribes' defaults: GroupChannel with
// McastService, NioReceiver, ReplicationTransmitter + PooledParallelSender,
// and the interceptors TcpFailureDetector, MessageDispatchInterceptor,
// ThroughputInterceptor (the same stack as shoal's default chain). Nothing is
// tuned: thread counts, pool sizes, queue sizes and timeouts are Tribes'.
// The ChannelListener only counts ByteMessages.
//
// Build and run:
//   CP=/usr/share/java/tomcat10-tribes.jar:/usr/share/java/tomcat10-juli.jar
//   javac -d /tmp/bench -cp $CP tests/interop/TribesBench.java
//   java -Djava.net.preferIPv4Stack=true -cp /tmp/bench:$CP TribesBench name=a port=4600 mcastPort=45600
//
// Arguments (key=value): name, port (receiver, autoBind 100), mcastPort,
// frequency (500), dropTime (3000). Receiver and multicast bind: 127.0.0.1,
// group 228.0.0.4.
//
// Output (stdout, one JSON object per line):
//   {"event":"started","id":HEX,"port":N}
//   {"event":"member_added","id":HEX}  /  {"event":"member_disappeared","id":HEX}
//   {"event":"count","n":N}
//   {"event":"result","cmd":S,...}
// Commands (stdin, one per line; every loop is bounded by its duration):
//   count                                       messages received so far
//   async SIZE MILLIS                           options 9 (ASYNC|BYTE) to all members for MILLIS
//   latency SIZE WARMUP_MS MILLIS               options 7, one thread, per-send latency
//   syncpar THREADS SIZE WARMUP_MS MILLIS       options 7, THREADS concurrent senders
//   stop                                        channel.stop(), exit 0

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.catalina.tribes.ByteMessage;
import org.apache.catalina.tribes.Channel;
import org.apache.catalina.tribes.ChannelException;
import org.apache.catalina.tribes.ChannelListener;
import org.apache.catalina.tribes.Member;
import org.apache.catalina.tribes.MembershipListener;
import org.apache.catalina.tribes.group.GroupChannel;
import org.apache.catalina.tribes.group.interceptors.MessageDispatchInterceptor;
import org.apache.catalina.tribes.group.interceptors.TcpFailureDetector;
import org.apache.catalina.tribes.group.interceptors.ThroughputInterceptor;
import org.apache.catalina.tribes.membership.McastService;
import org.apache.catalina.tribes.transport.ReplicationTransmitter;
import org.apache.catalina.tribes.transport.nio.NioReceiver;
import org.apache.catalina.tribes.transport.nio.PooledParallelSender;

public final class TribesBench {

    private static final PrintStream OUT = new PrintStream(System.out, false, StandardCharsets.UTF_8);
    private static final AtomicLong RECEIVED = new AtomicLong();

    private TribesBench() {
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

    public static void main(String[] args) throws Exception {
        Map<String,String> a = new HashMap<>();
        for (String arg : args) {
            int eq = arg.indexOf('=');
            if (eq <= 0) {
                System.err.println("usage: TribesBench key=value ...; bad argument " + arg);
                System.exit(2);
            }
            a.put(arg.substring(0, eq), arg.substring(eq + 1));
        }
        GroupChannel channel = new GroupChannel();
        channel.setName(a.getOrDefault("name", "bench"));
        channel.setJmxEnabled(false);

        McastService membership = (McastService) channel.getMembershipService();
        membership.setAddress("228.0.0.4");
        membership.setPort(Integer.parseInt(a.getOrDefault("mcastPort", "45564")));
        membership.setBind("127.0.0.1");
        membership.setFrequency(Long.parseLong(a.getOrDefault("frequency", "500")));
        membership.setDropTime(Long.parseLong(a.getOrDefault("dropTime", "3000")));

        NioReceiver receiver = (NioReceiver) channel.getChannelReceiver();
        receiver.setAddress("127.0.0.1");
        receiver.setPort(Integer.parseInt(a.getOrDefault("port", "4000")));
        receiver.setAutoBind(100);

        ReplicationTransmitter transmitter = (ReplicationTransmitter) channel.getChannelSender();
        transmitter.setTransport(new PooledParallelSender());

        channel.addInterceptor(new TcpFailureDetector());
        channel.addInterceptor(new MessageDispatchInterceptor());
        channel.addInterceptor(new ThroughputInterceptor());

        channel.addMembershipListener(new MembershipListener() {
            @Override
            public void memberAdded(Member member) {
                emit("{\"event\":\"member_added\",\"id\":\"" + hex(member.getUniqueId()) + "\"}");
            }

            @Override
            public void memberDisappeared(Member member) {
                emit("{\"event\":\"member_disappeared\",\"id\":\"" + hex(member.getUniqueId()) + "\"}");
            }
        });
        channel.addChannelListener(new ChannelListener() {
            @Override
            public boolean accept(Serializable msg, Member sender) {
                return msg instanceof ByteMessage;
            }

            @Override
            public void messageReceived(Serializable msg, Member sender) {
                RECEIVED.incrementAndGet();
            }
        });

        channel.start(Channel.DEFAULT);
        Member local = channel.getLocalMember(true);
        emit("{\"event\":\"started\",\"id\":\"" + hex(local.getUniqueId()) + "\",\"port\":" + local.getPort() + "}");

        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] w = line.trim().split("\\s+");
            try {
                switch (w[0]) {
                    case "count" -> emit("{\"event\":\"count\",\"n\":" + RECEIVED.get() + "}");
                    case "async" -> async(channel, Integer.parseInt(w[1]), Long.parseLong(w[2]));
                    case "latency" -> latency(channel, Integer.parseInt(w[1]), Long.parseLong(w[2]),
                            Long.parseLong(w[3]));
                    case "syncpar" -> syncpar(channel, Integer.parseInt(w[1]), Integer.parseInt(w[2]),
                            Long.parseLong(w[3]), Long.parseLong(w[4]));
                    case "stop" -> {
                        channel.stop(Channel.DEFAULT);
                        System.exit(0);
                    }
                    default -> emit("{\"event\":\"error\",\"message\":\"unknown command\"}");
                }
            } catch (Exception e) {
                emit("{\"event\":\"error\",\"message\":\"" + e.getClass().getSimpleName() + "\"}");
            }
        }
        channel.stop(Channel.DEFAULT);
        System.exit(0);
    }

    static void async(GroupChannel channel, int size, long millis) {
        Member[] dests = channel.getMembers();
        byte[] body = new byte[size];
        Arrays.fill(body, (byte) 1);
        long errors = 0;
        long sent = 0;
        long start = System.nanoTime();
        long end = start + millis * 1_000_000L;
        while (System.nanoTime() < end) {
            for (int i = 0; i < 256; i++) {
                try {
                    channel.send(dests, new ByteMessage(body), Channel.SEND_OPTIONS_ASYNCHRONOUS |
                            Channel.SEND_OPTIONS_BYTE_MESSAGE);
                    sent++;
                } catch (ChannelException e) {
                    errors++;
                }
            }
        }
        long elapsed = System.nanoTime() - start;
        emit("{\"event\":\"result\",\"cmd\":\"async\",\"sent\":" + sent + ",\"errors\":" + errors +
                ",\"elapsed_ms\":" + elapsed / 1_000_000.0 + "}");
    }

    static final int SYNC = Channel.SEND_OPTIONS_BYTE_MESSAGE | Channel.SEND_OPTIONS_USE_ACK |
            Channel.SEND_OPTIONS_SYNCHRONIZED_ACK;

    static void latency(GroupChannel channel, int size, long warmupMs, long millis) {
        Member[] dests = channel.getMembers();
        byte[] body = new byte[size];
        long errors = 0;
        long warmEnd = System.nanoTime() + warmupMs * 1_000_000L;
        while (System.nanoTime() < warmEnd) {
            try {
                channel.send(dests, new ByteMessage(body), SYNC);
            } catch (ChannelException e) {
                errors++;
            }
        }
        long[] samples = new long[4_000_000];
        int n = 0;
        long end = System.nanoTime() + millis * 1_000_000L;
        while (n < samples.length) {
            long t = System.nanoTime();
            if (t >= end) {
                break;
            }
            try {
                channel.send(dests, new ByteMessage(body), SYNC);
            } catch (ChannelException e) {
                errors++;
            }
            samples[n++] = System.nanoTime() - t;
        }
        Arrays.sort(samples, 0, n);
        double sum = 0;
        for (int i = 0; i < n; i++) {
            sum += samples[i];
        }
        emit("{\"event\":\"result\",\"cmd\":\"latency\",\"n\":" + n + ",\"errors\":" + errors + ",\"p50_us\":" +
                (n == 0 ? 0 : samples[n / 2] / 1000.0) + ",\"p99_us\":" +
                (n == 0 ? 0 : samples[Math.min(n - 1, (int) (n * 0.99))] / 1000.0) + ",\"mean_us\":" +
                (n == 0 ? 0 : sum / n / 1000.0) + "}");
    }

    static void syncpar(GroupChannel channel, int threads, int size, long warmupMs, long millis)
            throws InterruptedException {
        Member[] dests = channel.getMembers();
        byte[] body = new byte[size];
        AtomicLong done = new AtomicLong();
        AtomicLong errors = new AtomicLong();
        long warmEnd = System.nanoTime() + warmupMs * 1_000_000L;
        long end = warmEnd + millis * 1_000_000L;
        Thread[] ts = new Thread[threads];
        for (int i = 0; i < threads; i++) {
            ts[i] = new Thread(() -> {
                while (true) {
                    long t = System.nanoTime();
                    if (t >= end) {
                        break;
                    }
                    try {
                        channel.send(dests, new ByteMessage(body), SYNC);
                        long c = System.nanoTime();
                        if (c >= warmEnd && c <= end) {
                            done.incrementAndGet();
                        }
                    } catch (ChannelException e) {
                        errors.incrementAndGet();
                    }
                }
            }, "syncpar-" + i);
            ts[i].start();
        }
        for (Thread t : ts) {
            t.join();
        }
        emit("{\"event\":\"result\",\"cmd\":\"syncpar\",\"n\":" + done.get() + ",\"errors\":" + errors.get() +
                ",\"elapsed_ms\":" + millis + "}");
    }
}
