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
//! or refused. Workers drain several queued messages at a time and write
//! those for the same destinations in one system call. With
//! `dispatch.ordered` (the default) they send their batches in the order
//! taken, over one connection per member, so a member receives queued
//! messages in the order queued; without it they send in parallel. Failures are logged
//! and counted (`async_send_failures_total`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
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

/// One queued message and where to resume its way down the chain.
#[derive(Debug)]
pub struct Job {
    /// The message.
    pub msg: OutMsg,
    /// Index of the next interceptor down.
    pub resume: usize,
    /// The chain it started on (a swapped chain does not affect it).
    pub chain: Arc<Chain>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Job {
    /// A job for `msg`, to continue at interceptor `resume` of `chain`.
    pub fn new(msg: OutMsg, resume: usize, chain: Arc<Chain>) -> Self {
        Self {
            msg,
            resume,
            chain,
            permit: None,
        }
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
pub enum Enqueued {
    /// Queued; a worker will send it.
    Queued,
    /// The queue is full and `always_send` is on: send it now, in the caller.
    SendNow(Job),
}

/// The queue and its workers.
#[derive(Debug)]
pub struct Dispatcher {
    tx: std::sync::Mutex<Option<mpsc::UnboundedSender<Job>>>,
    budget: Arc<Semaphore>,
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
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let rx = Arc::new(Mutex::new(Queue { rx, turn: None }));
        let mut workers = JoinSet::new();
        for _ in 0..cfg.workers {
            workers.spawn(worker(
                rx.clone(),
                sender.clone(),
                encoder.clone(),
                metrics.clone(),
                cfg.ordered,
            ));
        }
        let budget = Arc::new(Semaphore::new(
            cfg.max_queue_size.min(Semaphore::MAX_PERMITS),
        ));
        Self {
            tx: std::sync::Mutex::new(Some(tx)),
            budget,
            cfg,
            metrics,
            workers: Mutex::new(workers),
        }
    }

    /// Queues a message, or hands it back when the queue is full and
    /// `always_send` is on. Never blocks.
    pub fn enqueue(&self, mut job: Job) -> Result<Enqueued, EnqueueError> {
        let cost = job.cost();
        let permit = u32::try_from(cost)
            .ok()
            .and_then(|n| self.budget.clone().try_acquire_many_owned(n).ok());
        let Some(permit) = permit else {
            if self.budget.is_closed() {
                return Err(EnqueueError::Closed);
            }
            if self.cfg.always_send {
                Metrics::inc(&self.metrics.async_queue_overflow_sync_total);
                return Ok(Enqueued::SendNow(job));
            }
            Metrics::inc(&self.metrics.async_queue_full_total);
            return Err(EnqueueError::QueueFull {
                limit: self.cfg.max_queue_size,
            });
        };
        job.permit = Some(permit);
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else {
            return Err(EnqueueError::Closed);
        };
        self.metrics
            .async_queue_bytes
            .fetch_add(cost as i64, Ordering::Relaxed);
        tx.send(job).map_err(|_| EnqueueError::Closed)?;
        Ok(Enqueued::Queued)
    }

    /// Stops taking messages and waits up to `deadline` for the queue to drain.
    /// Returns whether it drained completely.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut workers = self.workers.lock().await;
        let drained = tokio::time::timeout(deadline, async {
            while workers.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            workers.abort_all();
        }
        self.budget.close();
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

/// The queue's receiving end, shared by the workers, with the turn of the
/// batch taken last: batches are sent in the order they were taken.
struct Queue {
    rx: mpsc::UnboundedReceiver<Job>,
    /// Fires when the batch taken last has been handed to the sender.
    turn: Option<oneshot::Receiver<()>>,
}

async fn worker(
    rx: Arc<Mutex<Queue>>,
    sender: Arc<Sender>,
    encoder: Arc<FrameEncoder>,
    metrics: Arc<Metrics>,
    ordered: bool,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut ready: Vec<OutMsg> = Vec::with_capacity(BATCH);
    let mut msgs: Vec<OutMsg> = Vec::with_capacity(BATCH);
    let mut flows: Vec<Flow> = Vec::with_capacity(BATCH);
    // The batch's queue budget, merged into one permit: released with one
    // lock of the semaphore instead of one per message.
    let mut permits: Option<OwnedSemaphorePermit> = None;
    loop {
        // Workers run the chain on their batches in parallel, but send
        // them in queue order: each waits for the batch taken before its own
        // to be sent, so messages to a member leave in the order queued.
        let (my_turn, done) = {
            let mut q = rx.lock().await;
            if q.rx.recv_many(&mut batch, BATCH).await == 0 {
                return; // closed and empty
            }
            if ordered {
                let (done, next) = oneshot::channel();
                (q.turn.replace(next), Some(done))
            } else {
                (None, None)
            }
        };
        let queued: usize = batch.iter().map(Job::cost).sum();
        metrics
            .async_queue_bytes
            .fetch_sub(queued as i64, Ordering::Relaxed);
        // Finish the messages' way down the chain, one call per interceptor
        // for each run of messages that share a chain and a resume point.
        let mut jobs = batch.drain(..).peekable();
        while let Some(first) = jobs.next() {
            let (chain, resume) = (first.chain, first.resume);
            msgs.push(first.msg);
            merge(&mut permits, first.permit);
            while let Some(next) =
                jobs.next_if(|j| j.resume == resume && Arc::ptr_eq(&j.chain, &chain))
            {
                msgs.push(next.msg);
                merge(&mut permits, next.permit);
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
            permits = None;
        }
        drop(jobs);
        let groups = encode_groups(&encoder, &mut ready);
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

/// Adds `p` to the merged permit `into`.
fn merge(into: &mut Option<OwnedSemaphorePermit>, p: Option<OwnedSemaphorePermit>) {
    match (into.as_mut(), p) {
        (Some(all), Some(p)) => all.merge(p),
        (None, p) => *into = p,
        (_, None) => {}
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
