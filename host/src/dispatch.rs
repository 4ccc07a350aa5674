//! The deferred-send queue (the host half of Tomcat's
//! MessageDispatchInterceptor, tribes.md §4.3). A message is queued when an
//! interceptor answers `defer` (the message-dispatch plug-in does for
//! ASYNCHRONOUS sends) — or, with no interceptor chain at all, when the send
//! has the ASYNCHRONOUS bit, as Tribes adds a MessageDispatchInterceptor to a
//! bare channel. The caller returns at once; workers continue the chain below
//! the deferring interceptor and send.
//!
//! The queue is bounded in bytes (`max_queue_size`); when full, the message
//! is handed back to be sent in the caller (`always_send`, Tomcat's default)
//! or refused. When no interceptor below the deferring one needs to see the
//! message (the default chain: only `throughput`, which the host counts
//! for), the caller finishes the chain and frames the message itself, into
//! the buffer of the messages queued just before it for the same members;
//! otherwise the message is queued as it is and a worker runs the rest of
//! the chain on it. Workers drain several queued messages at a time and
//! write those for the same destinations in one system call. With
//! `dispatch.ordered` (the default) they send their batches in the order
//! taken, over one connection per member, so a member receives queued
//! messages in the order queued; without it they send in parallel. Failures are logged
//! and counted (`async_send_failures_total`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Mutex, Notify, oneshot};
use tokio::task::JoinSet;

use crate::chain::{Chain, Flow, OutMsg};
use crate::config::DispatchConfig;
use crate::member::MemberId;
use crate::metrics::Metrics;
use crate::transport::sender::{LaneTicket, SendError, Sender};
use crate::wire::FrameEncoder;

/// Most messages one worker takes from the queue at a time.
const BATCH: usize = 64;
/// Bytes a queued message is charged besides its body (frame and bookkeeping).
const OVERHEAD: usize = 160;
/// Size of the buffers finished frames are encoded into, one after another
/// while they go to the same members: a worker writes a whole buffer with
/// one system call.
const FRAME_BUF: usize = 32 * 1024;

/// One queued message and where to resume its way down the chain.
#[derive(Debug)]
pub struct Job {
    /// The message.
    pub msg: OutMsg,
    /// Index of the next interceptor down.
    pub resume: usize,
    /// The chain it started on (a swapped chain does not affect it).
    pub chain: Arc<Chain>,
}

impl Job {
    /// A job for `msg`, to continue at interceptor `resume` of `chain`.
    pub fn new(msg: OutMsg, resume: usize, chain: Arc<Chain>) -> Self {
        Self { msg, resume, chain }
    }

    fn cost(&self) -> usize {
        self.msg.body.len() + OVERHEAD
    }
}

/// Why an asynchronous send was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// The queue is full and `always_send` is off.
    #[error("asynchronous send queue full ({limit} bytes)")]
    QueueFull {
        /// The configured limit.
        limit: usize,
    },
    /// The node is shutting down.
    #[error("asynchronous send queue closed")]
    Closed,
}

/// What the caller should do with a message.
#[derive(Debug)]
pub enum Enqueued<T> {
    /// Queued; a worker will send it.
    Queued,
    /// The queue is full and `always_send` is on: send it now, in the caller.
    SendNow(T),
}

/// Finished frames for the same members, encoded one after another.
#[derive(Debug)]
struct Frames {
    dests: Arc<[MemberId]>,
    buf: BytesMut,
    acks: usize,
    messages: usize,
    cost: usize,
}

/// What the queue holds, in the order queued.
#[derive(Debug)]
enum Entry {
    /// A message some interceptor below the deferring one must still see.
    Job(Job),
    /// Messages whose way down the chain is over, already framed.
    Frames(Frames),
}

impl Entry {
    fn cost(&self) -> usize {
        match self {
            Self::Job(j) => j.cost(),
            Self::Frames(f) => f.cost,
        }
    }

    fn messages(&self) -> usize {
        match self {
            Self::Job(_) => 1,
            Self::Frames(f) => f.messages,
        }
    }
}

/// The queue: entries, their bytes, and the order in which workers send.
#[derive(Debug)]
struct State {
    entries: VecDeque<Entry>,
    bytes: usize,
    open: bool,
    /// A worker may be waiting: the next message queued must wake one.
    idle: bool,
    /// Fires when the batch taken last has been handed to the sender.
    turn: Option<oneshot::Receiver<()>>,
}

/// The queue shared by callers and workers. Callers lock it once per
/// message, workers once per batch; nothing else is shared per message
/// (no channel slot, budget permit or reference count crosses threads).
#[derive(Debug)]
struct Queue {
    state: std::sync::Mutex<State>,
    wake: Notify,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The queue and its workers.
#[derive(Debug)]
pub struct Dispatcher {
    queue: Arc<Queue>,
    encoder: Arc<FrameEncoder>,
    cfg: DispatchConfig,
    metrics: Arc<Metrics>,
    workers: Mutex<JoinSet<()>>,
}

impl Dispatcher {
    /// Starts `cfg.workers` workers sending through `sender`.
    pub fn start(
        cfg: DispatchConfig,
        sender: Arc<Sender>,
        encoder: Arc<FrameEncoder>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let queue = Arc::new(Queue {
            state: std::sync::Mutex::new(State {
                entries: VecDeque::new(),
                bytes: 0,
                open: true,
                idle: true,
                turn: None,
            }),
            wake: Notify::new(),
        });
        let mut workers = JoinSet::new();
        for _ in 0..cfg.workers {
            workers.spawn(worker(
                queue.clone(),
                sender.clone(),
                encoder.clone(),
                metrics.clone(),
                cfg.ordered,
            ));
        }
        Self {
            queue,
            encoder,
            cfg,
            metrics,
            workers: Mutex::new(workers),
        }
    }

    /// Refuses a message of `cost` bytes when the queue is full: `Ok(())`
    /// to send it in the caller (`always_send`), else the error.
    fn overflow(&self) -> Result<(), EnqueueError> {
        if self.cfg.always_send {
            Metrics::inc(&self.metrics.async_queue_overflow_sync_total);
            return Ok(());
        }
        Metrics::inc(&self.metrics.async_queue_full_total);
        Err(EnqueueError::QueueFull {
            limit: self.cfg.max_queue_size,
        })
    }

    /// Counts `cost` more bytes queued and wakes a worker if one waits.
    fn queued(&self, mut s: std::sync::MutexGuard<'_, State>, cost: usize) {
        s.bytes += cost;
        let wake = std::mem::take(&mut s.idle);
        drop(s);
        self.metrics
            .async_queue_bytes
            .fetch_add(cost as i64, Ordering::Relaxed);
        if wake {
            self.queue.wake.notify_one();
        }
    }

    /// Queues a message that interceptors below `job.resume` must still
    /// see, or hands it back when the queue is full and `always_send` is
    /// on. Never blocks.
    pub fn enqueue(&self, job: Job) -> Result<Enqueued<Job>, EnqueueError> {
        let cost = job.cost();
        let mut s = self.queue.lock();
        if !s.open {
            return Err(EnqueueError::Closed);
        }
        if s.bytes + cost > self.cfg.max_queue_size {
            drop(s);
            return self.overflow().map(|()| Enqueued::SendNow(job));
        }
        s.entries.push_back(Entry::Job(job));
        self.queued(s, cost);
        Ok(Enqueued::Queued)
    }

    /// Queues a message whose way down the chain is over: encoded at once,
    /// into the buffer of the messages queued just before it when they go
    /// to the same members, so a worker writes them with one system call
    /// and only that buffer passes to the worker's thread. Large bodies
    /// keep their own buffer (written without a copy). Hands the message
    /// back when the queue is full and `always_send` is on.
    pub fn enqueue_final(
        &self,
        msg: OutMsg,
        chain: &Arc<Chain>,
    ) -> Result<Enqueued<OutMsg>, EnqueueError> {
        if msg.body.len() >= crate::wire::SPLIT_BODY_AT {
            return Ok(
                match self.enqueue(Job::new(msg, usize::MAX, chain.clone()))? {
                    Enqueued::Queued => Enqueued::Queued,
                    Enqueued::SendNow(job) => Enqueued::SendNow(job.msg),
                },
            );
        }
        let len = self.encoder.frame_len(msg.body.len());
        let cost = msg.body.len() + OVERHEAD;
        let acks = usize::from(msg.options.wants_ack());
        let mut s = self.queue.lock();
        if !s.open {
            return Err(EnqueueError::Closed);
        }
        if s.bytes + cost > self.cfg.max_queue_size {
            drop(s);
            return self.overflow().map(|()| Enqueued::SendNow(msg));
        }
        let tail = match s.entries.back_mut() {
            Some(Entry::Frames(f))
                if f.buf.capacity() - f.buf.len() >= len
                    && (Arc::ptr_eq(&f.dests, &msg.dests) || f.dests == msg.dests) =>
            {
                f
            }
            _ => {
                s.entries.push_back(Entry::Frames(Frames {
                    dests: msg.dests.clone(),
                    buf: BytesMut::with_capacity(len.max(FRAME_BUF)),
                    acks: 0,
                    messages: 0,
                    cost: 0,
                }));
                let Some(Entry::Frames(f)) = s.entries.back_mut() else {
                    unreachable!("just pushed")
                };
                f
            }
        };
        if let Err(e) =
            self.encoder
                .encode_into(&mut tail.buf, msg.options, msg.timestamp, &msg.body)
        {
            // Checked when the send began; only a plug-in's change can get here.
            tracing::warn!(error = %e, "deferred message not sent");
            return Ok(Enqueued::Queued);
        }
        tail.acks += acks;
        tail.messages += 1;
        tail.cost += cost;
        self.queued(s, cost);
        Ok(Enqueued::Queued)
    }

    /// Stops taking messages and waits up to `deadline` for the queue to drain.
    /// Returns whether it drained completely.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.queue.lock().open = false;
        self.queue.wake.notify_waiters();
        let mut workers = self.workers.lock().await;
        let drained = tokio::time::timeout(deadline, async {
            while workers.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            workers.abort_all();
        }
        drained
    }
}

/// One write: destinations, the frames' bytes in order, ACKs expected,
/// messages.
#[derive(Debug)]
struct Group {
    dests: Arc<[MemberId]>,
    parts: Vec<Bytes>,
    acks: usize,
    messages: usize,
}

/// What a worker took: entries in queue order, and its turn to send.
struct Taken {
    entries: Vec<Entry>,
    my_turn: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

/// Waits for entries and takes up to [`BATCH`] messages' worth; `None`
/// once the queue is closed and empty.
async fn take(queue: &Queue, ordered: bool, metrics: &Metrics) -> Option<Taken> {
    loop {
        let wait = queue.wake.notified();
        tokio::pin!(wait);
        {
            let mut s = queue.lock();
            if !s.entries.is_empty() {
                let mut entries = Vec::new();
                let (mut messages, mut bytes) = (0, 0);
                while messages < BATCH
                    && let Some(e) = s.entries.pop_front()
                {
                    messages += e.messages();
                    bytes += e.cost();
                    entries.push(e);
                }
                s.bytes -= bytes;
                let (my_turn, done) = if ordered {
                    let (done, next) = oneshot::channel();
                    (s.turn.replace(next), Some(done))
                } else {
                    (None, None)
                };
                let more = !s.entries.is_empty();
                drop(s);
                metrics
                    .async_queue_bytes
                    .fetch_sub(bytes as i64, Ordering::Relaxed);
                if more {
                    // Another worker may take the rest meanwhile.
                    queue.wake.notify_one();
                }
                return Some(Taken {
                    entries,
                    my_turn,
                    done,
                });
            }
            if !s.open {
                // Closed and empty: wake the next worker to see it too.
                drop(s);
                queue.wake.notify_one();
                return None;
            }
            s.idle = true;
            // Registered before the lock is released, so neither a caller's
            // `notify_one` nor the close's `notify_waiters` is missed.
            wait.as_mut().enable();
        }
        wait.await;
    }
}

async fn worker(
    queue: Arc<Queue>,
    sender: Arc<Sender>,
    encoder: Arc<FrameEncoder>,
    metrics: Arc<Metrics>,
    ordered: bool,
) {
    let mut ready: Vec<OutMsg> = Vec::with_capacity(BATCH);
    let mut msgs: Vec<OutMsg> = Vec::with_capacity(BATCH);
    let mut flows: Vec<Flow> = Vec::with_capacity(BATCH);
    // Workers run the chain on their batches in parallel, but send them in
    // queue order: each waits for the batch taken before its own to be
    // sent, so messages to a member leave in the order queued.
    while let Some(Taken {
        entries,
        my_turn,
        done,
    }) = take(&queue, ordered, &metrics).await
    {
        let mut groups: Vec<Group> = Vec::new();
        let mut entries = entries.into_iter().peekable();
        while let Some(entry) = entries.next() {
            let first = match entry {
                Entry::Frames(f) => {
                    groups.push(Group {
                        dests: f.dests,
                        parts: vec![f.buf.freeze()],
                        acks: f.acks,
                        messages: f.messages,
                    });
                    continue;
                }
                Entry::Job(j) => j,
            };
            // Finish the messages' way down the chain, one call per
            // interceptor for each run of messages that share a chain and
            // a resume point.
            let (chain, resume) = (first.chain, first.resume);
            msgs.push(first.msg);
            while let Some(Entry::Job(next)) = entries.next_if(|e| {
                matches!(e, Entry::Job(j) if j.resume == resume && Arc::ptr_eq(&j.chain, &chain))
            }) {
                msgs.push(next.msg);
            }
            flows.clear();
            flows.resize(msgs.len(), Flow::Continue);
            if resume < chain.len() {
                chain.send_batch(resume, &mut msgs, &mut flows).await;
            }
            for (msg, flow) in msgs.drain(..).zip(flows.drain(..)) {
                if let Flow::Dropped { plugin, reason } = flow {
                    tracing::debug!(%plugin, %reason, "deferred message dropped by an interceptor");
                    continue;
                }
                ready.push(msg);
            }
            groups.extend(encode_groups(&encoder, &mut ready));
        }
        let failed = |e: SendError, messages: usize| {
            Metrics::inc(&metrics.async_send_failures_total);
            tracing::warn!(error = %e, messages, "asynchronous send failed");
        };
        if ordered {
            if let Some(turn) = my_turn {
                // An error means the previous worker ended (aborted): go on.
                let _ = turn.await;
            }
            // Take each member's place in its ordered lane, in queue order,
            // then hand the turn on: the next batch queues behind this one
            // per member, and a member that does not answer delays only its
            // own sends.
            let tickets: Vec<Vec<LaneTicket>> = groups
                .iter()
                .map(|g| g.dests.iter().map(|m| sender.queue_on_lane(*m)).collect())
                .collect();
            if let Some(done) = done {
                let _ = done.send(());
            }
            let sends = groups
                .iter()
                .zip(tickets)
                .map(|(g, t)| sender.send_with_tickets(t, &g.parts, g.acks));
            for (r, g) in futures_util::future::join_all(sends)
                .await
                .into_iter()
                .zip(&groups)
            {
                if let Err(e) = r {
                    failed(e, g.messages);
                }
            }
        } else {
            for g in &groups {
                if let Err(e) = sender.send(&g.dests, &g.parts, g.acks).await {
                    failed(e, g.messages);
                }
            }
        }
        drop(groups);
    }
}

/// Encodes `msgs` (emptied) into groups of consecutive messages with the
/// same destinations, each written with one system call: small frames
/// encoded one after another into one buffer (no copy to join them later),
/// bodies of [`crate::wire::SPLIT_BODY_AT`] bytes or more from their own
/// buffers.
fn encode_groups(encoder: &FrameEncoder, msgs: &mut Vec<OutMsg>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut start = 0;
    while start < msgs.len() {
        let dests = msgs[start].dests.clone();
        let mut end = start + 1;
        while end < msgs.len()
            && (Arc::ptr_eq(&msgs[end].dests, &dests) || msgs[end].dests == dests)
        {
            end += 1;
        }
        let run = &msgs[start..end];
        let small: usize = run
            .iter()
            .filter(|m| m.body.len() < crate::wire::SPLIT_BODY_AT)
            .map(|m| encoder.frame_len(m.body.len()))
            .sum();
        let mut open = BytesMut::with_capacity(small);
        let mut group = Group {
            dests,
            parts: Vec::new(),
            acks: 0,
            messages: 0,
        };
        for m in run {
            let encoded = if m.body.len() < crate::wire::SPLIT_BODY_AT {
                encoder.encode_into(&mut open, m.options, m.timestamp, &m.body)
            } else {
                encoder.encode(m.options, m.timestamp, &m.body).map(|f| {
                    if !open.is_empty() {
                        group.parts.push(open.split().freeze());
                    }
                    group.parts.extend(f.parts().iter().cloned());
                })
            };
            match encoded {
                Ok(()) => {
                    group.acks += usize::from(m.options.wants_ack());
                    group.messages += 1;
                }
                Err(e) => tracing::warn!(error = %e, "deferred message not sent"),
            }
        }
        if !open.is_empty() {
            group.parts.push(open.freeze());
        }
        if group.messages > 0 {
            groups.push(group);
        }
        start = end;
    }
    msgs.clear();
    groups
}
