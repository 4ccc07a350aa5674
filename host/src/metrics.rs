//! Node counters, rendered in Prometheus' text format for `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident : $kind:ident ),* $(,)?) => {
        /// Every counter and gauge the node exports. Updated with relaxed atomics.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[doc = $doc])* pub $name: counters!(@ty $kind), )*
        }

        impl Metrics {
            /// Renders all metrics as Prometheus text exposition (version 0.0.4),
            /// each named `shoal_<field>`.
            pub fn render(&self) -> String {
                let mut out = String::with_capacity(4096);
                $(
                    let help = concat!($($doc),*).trim();
                    let _ = writeln!(out, "# HELP shoal_{} {}", stringify!($name), help);
                    let _ = writeln!(out, "# TYPE shoal_{} {}", stringify!($name), counters!(@prom $kind));
                    let _ = writeln!(out, "shoal_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )*
                out
            }
        }
    };
    (@ty counter) => { AtomicU64 };
    (@ty gauge) => { AtomicI64 };
    (@prom counter) => { "counter" };
    (@prom gauge) => { "gauge" };
}

counters! {
    /// Channel messages sent (one per destination member).
    messages_sent_total: counter,
    /// Bytes of channel frames sent, markers included.
    bytes_sent_total: counter,
    /// Channel messages received and decoded.
    messages_received_total: counter,
    /// Bytes of channel frames received, markers included.
    bytes_received_total: counter,
    /// Sends to a member that failed after retries (connect, write, timeout or FAIL-ACK).
    send_failures_total: counter,
    /// FAIL-ACKs received: the remote listener failed to process a message.
    fail_acks_received_total: counter,
    /// ACKs not received within the send timeout.
    ack_timeouts_total: counter,
    /// FAIL-ACKs sent because a local listener failed.
    fail_acks_sent_total: counter,
    /// Reconnect-and-resend attempts after a connection error.
    send_retries_total: counter,
    /// Frames dropped as malformed (bad markers, lengths or fields); the connection was closed.
    bad_frames_total: counter,
    /// Inbound connections closed because a partial frame stalled.
    stalled_connections_total: counter,
    /// Inbound connections refused because the connection limit was reached.
    refused_connections_total: counter,
    /// Inbound connections refused because their address already had `receiver.max_connections_per_address`.
    refused_connections_per_address_total: counter,
    /// Inbound connections closed because their frame would have taken the read buffers past `receiver.max_buffer_bytes`.
    over_budget_connections_total: counter,
    /// Inbound connections closed after `receiver.idle_timeout_ms` without a byte.
    idle_connections_closed_total: counter,
    /// Bytes held by inbound connections' read buffers.
    receiver_buffer_bytes: gauge,
    /// Inbound TCP connections currently open.
    inbound_connections: gauge,
    /// Membership datagrams dropped as malformed or unusable.
    bad_heartbeats_total: counter,
    /// Heartbeats refused for want of the cluster key: no trailer, an unknown key or a wrong MAC (security.key_file).
    auth_heartbeats_refused_total: counter,
    /// Heartbeats refused as replays: a time not later than the member's last, or beyond security.max_clock_skew_ms.
    auth_heartbeats_replayed_total: counter,
    /// Frames refused for want of the cluster key: not sealed, an unknown key or a wrong tag; the connection was closed.
    auth_frames_refused_total: counter,
    /// Frames refused as replays: a sequence number already accepted or behind the window, or a time beyond the skew.
    auth_frames_replayed_total: counter,
    /// Heartbeats sent.
    heartbeats_sent_total: counter,
    /// Heartbeats received (own excluded).
    heartbeats_received_total: counter,
    /// Heartbeats refused: from another address than the member advertises, or beyond the member caps.
    heartbeats_refused_total: counter,
    /// Batched reads of the membership socket (`membership.receive_batch_ms`): wake-ups that read every datagram queued since the last.
    membership_batches_total: counter,
    /// Heartbeat arrivals not reported to the failure detector because its queue was full.
    heartbeat_arrivals_dropped_total: counter,
    /// Watch connections to members (one idle connection each, to see a crash at once) currently open.
    watch_connections: gauge,
    /// Watch connections that broke or could not be opened, reported to the failure detector.
    watch_connections_lost_total: counter,
    /// DNS lookups of `membership.dns_name` (kind = "dns"), whatever their outcome.
    dns_lookups_total: counter,
    /// DNS lookups that failed or found no address; the last good list of members' addresses was kept.
    dns_lookup_failures_total: counter,
    /// Addresses heartbeats go to, from the last good DNS lookup (own address excluded).
    dns_targets: gauge,
    /// Members currently in the channel's view.
    members: gauge,
    /// Members added since start.
    members_added_total: counter,
    /// Members that disappeared since start (expired or shut down).
    members_disappeared_total: counter,
    /// Bytes waiting in the asynchronous send queue.
    async_queue_bytes: gauge,
    /// Asynchronous sends refused because the queue was full (alwaysSend off).
    async_queue_full_total: counter,
    /// Asynchronous sends made synchronously because the queue was full (alwaysSend on).
    async_queue_overflow_sync_total: counter,
    /// Asynchronous sends that failed for at least one member.
    async_send_failures_total: counter,
    /// Received messages dropped as duplicates (the same sender and message id within the last 2048 of that sender: a resend after a broken connection); acknowledged, not delivered again.
    duplicates_dropped_total: counter,
    /// Received messages whose delivery a plug-in deferred, being delivered now (at most 4096; then the receiving connection waits).
    deferred_receives: gauge,
    /// Deferred deliveries still running when shutdown's deadline passed: abandoned.
    deferred_abandoned_total: counter,
    /// Received messages a listener rejected (answered with FAIL-ACK when SYNC_ACK).
    listener_errors_total: counter,
    /// Acknowledged sends made on a member's pipelined connection because other acknowledged sends to it were in progress.
    sync_sends_pipelined_total: counter,
    /// Waits for an ACK answered by busy-polling the socket (no park, no wake-up).
    sender_polls_hit_total: counter,
    /// Waits for an ACK that busy-polled in vain (budget spent, or gave way to other work) and then parked.
    sender_polls_missed_total: counter,
    /// Waits for an ACK that parked without polling (backed off, other sends waiting, or another poller active).
    sender_polls_skipped_total: counter,
    /// Waits for the next frame answered by busy-polling the socket.
    receiver_polls_hit_total: counter,
    /// Waits for the next frame that busy-polled in vain and then parked.
    receiver_polls_missed_total: counter,
    /// Waits for the next frame that parked without polling (backed off, other connections busy, or another poller active).
    receiver_polls_skipped_total: counter,
}

impl Metrics {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Increments a counter.
    #[inline]
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.bytes_sent_total, 42);
        m.members.store(3, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains("# TYPE shoal_bytes_sent_total counter\nshoal_bytes_sent_total 42\n")
        );
        assert!(text.contains("# TYPE shoal_members gauge\nshoal_members 3\n"));
        assert!(text.contains("# HELP shoal_members Members currently in the channel's view."));
    }
}
