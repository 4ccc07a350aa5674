//! The interceptor chain: an onion of plug-ins between the channel and the
//! transport, run message by message or batch by batch ([`Chain`]), the
//! control plane that runs membership, heartbeat, probe and timer events
//! through it ([`ControlEvent`], `control.rs`), its metrics (`metrics.rs`)
//! and the node's handle that changes it while it runs ([`ChainHandle`],
//! `handle.rs`).
//!
//! # Order (an onion)
//!
//! Interceptors are listed top (nearest the application) to bottom (nearest
//! the network). A message being sent visits them in list order; a received
//! message, membership events and events a plug-in raises travel up, in
//! reverse list order. A plug-in's `defer` on send hands the message to the
//! host's bounded queue, and a worker continues with the plug-ins below it.

mod control;
mod handle;
mod metrics;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

pub use control::ControlEvent;
pub use handle::{ChainChange, ChainHandle, ChangeKind, ChangeReport, PluginChange, SwapError};

use crate::member::{Member, MemberId};
use crate::plugins::{
    Batch, DestSets, Dests, FailureKind, FailureMode, Interceptor, InterceptorSpec, NodeCtx,
    PluginLoadError, PluginOptions, Sender, Senders, Tally, Verdict,
};
use crate::wire::SendOptions;

/// A message on its way down the chain.
#[derive(Debug, Clone)]
pub struct OutMsg {
    /// Option bits.
    pub options: SendOptions,
    /// Sender's wall clock.
    pub timestamp: i64,
    /// Body.
    pub body: Bytes,
    /// Destinations.
    pub dests: Arc<[MemberId]>,
}

/// A message on its way up the chain.
#[derive(Debug, Clone)]
pub struct InMsg {
    /// Option bits.
    pub options: SendOptions,
    /// Sender's wall clock.
    pub timestamp: i64,
    /// Who sent it.
    pub sender: Member,
    /// Message id.
    pub unique_id: Bytes,
    /// Body.
    pub body: Bytes,
}

/// Where a message stands after passing (part of) the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// It passed every interceptor.
    Continue,
    /// An interceptor dropped it.
    Dropped {
        /// Which.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// An interceptor deferred it; continue at `resume` (for send: the index
    /// of the next interceptor down; for receive: the number of interceptors
    /// still to pass above, counting down).
    Deferred {
        /// Where to resume.
        resume: usize,
    },
}

/// The ordered interceptors of a node. Replaced as a whole (never edited in
/// place), so a chain can be swapped atomically while messages flow.
#[derive(Debug, Default)]
pub struct Chain {
    interceptors: Vec<Arc<Interceptor>>,
}

impl Chain {
    /// A chain of already loaded interceptors, top first.
    pub fn new(interceptors: Vec<Arc<Interceptor>>) -> Self {
        Self { interceptors }
    }

    /// Loads every spec, top first.
    pub async fn load(
        specs: Vec<InterceptorSpec>,
        opts: &PluginOptions,
        node: Arc<NodeCtx>,
    ) -> Result<Self, PluginLoadError> {
        let mut v = Vec::new();
        for s in specs {
            v.push(Arc::new(Interceptor::load(s, opts, node.clone()).await?));
        }
        Ok(Self::new(v))
    }

    /// Whether there is no interceptor.
    pub fn is_empty(&self) -> bool {
        self.interceptors.is_empty()
    }

    /// Number of interceptors.
    pub fn len(&self) -> usize {
        self.interceptors.len()
    }

    /// The interceptors, top first.
    pub fn interceptors(&self) -> &[Arc<Interceptor>] {
        &self.interceptors
    }

    /// The chain's fingerprint, top first (advertised in the member packet).
    pub fn fingerprint(&self) -> Vec<crate::wire::fingerprint::ChainEntry> {
        self.interceptors.iter().map(|i| i.fingerprint()).collect()
    }

    fn failed(&self, ic: &Interceptor, kind: FailureKind) -> Option<Flow> {
        match ic.spec.failure_mode {
            FailureMode::FailOpen => None,
            FailureMode::FailClosed => Some(Flow::Dropped {
                plugin: ic.spec.name.clone(),
                reason: format!("interceptor failed ({}) and is fail-closed", kind.label()),
            }),
        }
    }

    /// Passes `msg` down from interceptor `start`.
    pub async fn send_from(&self, start: usize, msg: &mut OutMsg) -> Flow {
        let mut flows = [Flow::Continue];
        self.send_batch(start, std::slice::from_mut(msg), &mut flows)
            .await;
        let [f] = flows;
        f
    }

    /// Passes `msg` up through the `above` interceptors nearest the network
    /// … up to the top (`above` = [`Chain::len`] for a fresh message).
    pub async fn receive_from(&self, above: usize, msg: &mut InMsg) -> Flow {
        let mut flows = [Flow::Continue];
        self.receive_batch(above, std::slice::from_mut(msg), &mut flows)
            .await;
        let [f] = flows;
        f
    }

    /// Applies one plug-in's verdict (or failure) to one message.
    fn apply_one<M: BodyOwner>(
        &self,
        ic: &Interceptor,
        result: Result<Verdict, FailureKind>,
        msg: &mut M,
        flow: &mut Flow,
        deferred: &Flow,
    ) {
        match result {
            Err(kind) => {
                if let Some(f) = self.failed(ic, kind) {
                    *flow = f;
                }
            }
            Ok(Verdict::Pass) => {}
            Ok(Verdict::Modify { options, body }) => {
                if let Some(o) = options {
                    msg.set_options(o);
                }
                if let (Some(b), true) = (body, ic.caps.body_limit > 0) {
                    msg.set_body(b);
                }
            }
            Ok(Verdict::Drop(reason)) => {
                ic.shared.drops.fetch_add(1, Ordering::Relaxed);
                *flow = Flow::Dropped {
                    plugin: ic.spec.name.clone(),
                    reason,
                };
            }
            Ok(Verdict::Defer) => {
                ic.shared.defers.fetch_add(1, Ordering::Relaxed);
                *flow = deferred.clone();
            }
        }
    }

    /// Applies one plug-in's verdicts (or failure) to the messages `live`.
    fn apply<M: BodyOwner>(
        &self,
        ic: &Interceptor,
        result: Result<Vec<Verdict>, FailureKind>,
        live: &[usize],
        msgs: &mut [M],
        flows: &mut [Flow],
        deferred: &Flow,
    ) {
        match result {
            Ok(verdicts) => {
                for (&j, v) in live.iter().zip(verdicts) {
                    self.apply_one(ic, Ok(v), &mut msgs[j], &mut flows[j], deferred);
                }
            }
            Err(kind) => {
                if let Some(f) = self.failed(ic, kind) {
                    for &j in live {
                        flows[j] = f.clone();
                    }
                }
            }
        }
    }

    /// Passes a batch down from interceptor `start`. `flows[j]` must start as
    /// [`Flow::Continue`]; a message stops at the first drop or defer. A
    /// plug-in is called once per batch, with the messages its filter admits;
    /// a batch of one takes the flat per-message hook.
    pub async fn send_batch(&self, start: usize, msgs: &mut [OutMsg], flows: &mut [Flow]) {
        self.run(start, msgs, flows);
    }

    /// Passes a batch up through the `above` interceptors nearest the
    /// network. `flows[j]` must start as [`Flow::Continue`].
    pub async fn receive_batch(&self, above: usize, msgs: &mut [InMsg], flows: &mut [Flow]) {
        self.run(above, msgs, flows);
    }

    /// The one runner of both directions ([`Way`] says what differs).
    fn run<M: Way>(&self, from: usize, msgs: &mut [M], flows: &mut [Flow]) {
        if let ([msg], [flow]) = (&mut *msgs, &mut *flows) {
            self.run_one(from, msg, flow);
            return;
        }
        let mut parties: Option<M::Parties> = None;
        let mut live: Vec<usize> = Vec::with_capacity(msgs.len());
        for (i, resume) in M::positions(self.interceptors.len(), from) {
            let ic = &self.interceptors[i];
            if !M::hooked(ic) {
                continue;
            }
            live.clear();
            let mut any = false;
            let mut pending = 0u64;
            let deferred = Flow::Deferred { resume };
            for (j, m) in msgs.iter().enumerate() {
                if flows[j] == Flow::Continue {
                    any = true;
                    if !ic.caps.sees(m.options(), m.body().len()) {
                        continue;
                    }
                    if let Some(t) = &ic.tally
                        && !M::tally(t, m)
                    {
                        continue;
                    }
                    if M::defers_at_once(ic, m, pending) {
                        pending += m.body().len() as u64;
                        ic.shared.defers.fetch_add(1, Ordering::Relaxed);
                        flows[j] = deferred.clone();
                    } else {
                        live.push(j);
                    }
                }
            }
            if !any {
                return;
            }
            if live.is_empty() {
                continue;
            }
            let batch = ic.batch(live.iter().map(|&j| {
                let m = &msgs[j];
                (m.options(), m.timestamp(), m.body())
            }));
            let parties = parties.get_or_insert_with(|| M::parties(msgs));
            let r = M::call_many(ic, &batch, &live, parties);
            self.apply(ic, r, &live, msgs, flows, &deferred);
        }
    }

    fn run_one<M: Way>(&self, from: usize, msg: &mut M, flow: &mut Flow) {
        let mut party: Option<M::Party> = None;
        for (i, resume) in M::positions(self.interceptors.len(), from) {
            let ic = &self.interceptors[i];
            if *flow != Flow::Continue {
                return;
            }
            if !M::hooked(ic) || !ic.caps.sees(msg.options(), msg.body().len()) {
                continue;
            }
            if let Some(t) = &ic.tally
                && !M::tally(t, msg)
            {
                continue;
            }
            let r = if M::defers_at_once(ic, msg, 0) {
                Ok(Verdict::Defer)
            } else {
                let p = party.get_or_insert_with(|| msg.party());
                M::call_one(ic, msg, p)
            };
            self.apply_one(ic, r, msg, flow, &Flow::Deferred { resume });
        }
    }
}

/// Messages whose options and body a plug-in may change.
trait BodyOwner {
    fn options(&self) -> SendOptions;
    fn timestamp(&self) -> i64;
    fn body(&self) -> &Bytes;
    fn set_options(&mut self, o: SendOptions);
    fn set_body(&mut self, b: Bytes);
}

/// What differs between the chain's two directions: which interceptors a
/// message visits and in which order, which hook is called, with whom (the
/// destinations down, the sender up), and whether the host may defer it.
trait Way: BodyOwner + Sized {
    /// Whom one message concerns, as the flat hook takes it.
    type Party;
    /// Whom a batch concerns, interned, as the batch hook takes it.
    type Parties;
    /// `(interceptor, where a deferred message resumes)` in visiting order,
    /// starting at `from` (down: an index; up: how many remain above).
    fn positions(len: usize, from: usize) -> Positions;
    /// Whether the interceptor has this direction's hook.
    fn hooked(ic: &Interceptor) -> bool;
    /// Whether the interceptor's defer rule covers the message.
    fn defers_at_once(ic: &Interceptor, m: &Self, pending: u64) -> bool;
    /// Counts the message for a plug-in the host counts for; whether its
    /// hook must see it all the same.
    fn tally(t: &Tally, m: &Self) -> bool;
    fn party(&self) -> Self::Party;
    fn parties(msgs: &[Self]) -> Self::Parties;
    fn call_one(ic: &Interceptor, m: &Self, party: &Self::Party) -> Result<Verdict, FailureKind>;
    fn call_many(
        ic: &Interceptor,
        batch: &Batch,
        live: &[usize],
        parties: &Self::Parties,
    ) -> Result<Vec<Verdict>, FailureKind>;
}

/// Interns what each message concerns (its destinations, its sender): the
/// distinct values, and for each message the index of its own. Arcs of
/// destinations compare by pointer first.
fn intern<K: PartialEq, M, V>(
    msgs: impl ExactSizeIterator<Item = (K, M)>,
    value: impl Fn(M) -> V,
) -> (Vec<V>, Vec<u32>) {
    let mut values = Vec::new();
    let mut index = Vec::with_capacity(msgs.len());
    let mut seen: Vec<K> = Vec::new();
    for (k, m) in msgs {
        let i = match seen.iter().position(|s| *s == k) {
            Some(i) => i,
            None => {
                seen.push(k);
                values.push(value(m));
                seen.len() - 1
            }
        };
        index.push(i as u32);
    }
    (values, index)
}

/// Interceptor positions in visiting order: up from `next` to `end`
/// (down the chain), or from `next - 1` down to 0 (up the chain).
struct Positions {
    next: usize,
    end: usize,
    down: bool,
}

impl Iterator for Positions {
    type Item = (usize, usize);
    fn next(&mut self) -> Option<(usize, usize)> {
        if self.down {
            (self.next < self.end).then(|| {
                self.next += 1;
                (self.next - 1, self.next)
            })
        } else {
            (self.next > 0).then(|| {
                self.next -= 1;
                (self.next, self.next)
            })
        }
    }
}

impl Way for OutMsg {
    type Party = Dests;
    /// Destination sets, and each message's set.
    type Parties = (DestSets, Vec<u32>);

    fn positions(len: usize, from: usize) -> Positions {
        Positions {
            next: from,
            end: len,
            down: true,
        }
    }
    fn hooked(ic: &Interceptor) -> bool {
        ic.caps.send
    }
    fn defers_at_once(ic: &Interceptor, m: &Self, pending: u64) -> bool {
        ic.defers_at_once(m.options, m.body.len(), pending)
    }
    fn tally(t: &Tally, m: &Self) -> bool {
        t.sent(m.dests.len(), m.body.len())
    }
    fn party(&self) -> Self::Party {
        Dests::new(&self.dests)
    }
    fn parties(msgs: &[Self]) -> Self::Parties {
        let (sets, set_of) = intern(msgs.iter().map(|m| (&m.dests, m)), |m| m.party());
        (sets.into_iter().collect(), set_of)
    }
    fn call_one(ic: &Interceptor, m: &Self, party: &Self::Party) -> Result<Verdict, FailureKind> {
        ic.on_send_one(m.options, m.timestamp, &m.body, party)
    }
    fn call_many(
        ic: &Interceptor,
        batch: &Batch,
        live: &[usize],
        (sets, set_of): &Self::Parties,
    ) -> Result<Vec<Verdict>, FailureKind> {
        let dests: Vec<u32> = live.iter().map(|&j| set_of[j]).collect();
        ic.on_send_many(batch, &dests, sets)
    }
}

impl Way for InMsg {
    type Party = Sender;
    /// Senders, and each message's sender.
    type Parties = (Senders, Vec<u32>);

    fn positions(len: usize, from: usize) -> Positions {
        Positions {
            next: from.min(len),
            end: 0,
            down: false,
        }
    }
    fn hooked(ic: &Interceptor) -> bool {
        ic.caps.receive
    }
    fn defers_at_once(_: &Interceptor, _: &Self, _: u64) -> bool {
        false
    }
    fn tally(t: &Tally, m: &Self) -> bool {
        t.received(m.body.len())
    }
    fn party(&self) -> Self::Party {
        Sender::new(&self.sender)
    }
    fn parties(msgs: &[Self]) -> Self::Parties {
        let (senders, sender_of) = intern(msgs.iter().map(|m| (m.sender.id, m)), |m| m.party());
        (senders.into_iter().collect(), sender_of)
    }
    fn call_one(ic: &Interceptor, m: &Self, party: &Self::Party) -> Result<Verdict, FailureKind> {
        ic.on_receive_one(m.options, m.timestamp, &m.body, party)
    }
    fn call_many(
        ic: &Interceptor,
        batch: &Batch,
        live: &[usize],
        (senders, sender_of): &Self::Parties,
    ) -> Result<Vec<Verdict>, FailureKind> {
        let from: Vec<u32> = live.iter().map(|&j| sender_of[j]).collect();
        ic.on_receive_many(batch, &from, senders)
    }
}

impl BodyOwner for OutMsg {
    fn options(&self) -> SendOptions {
        self.options
    }
    fn timestamp(&self) -> i64 {
        self.timestamp
    }
    fn body(&self) -> &Bytes {
        &self.body
    }
    fn set_options(&mut self, o: SendOptions) {
        self.options = o;
    }
    fn set_body(&mut self, b: Bytes) {
        self.body = b;
    }
}

impl BodyOwner for InMsg {
    fn options(&self) -> SendOptions {
        self.options
    }
    fn timestamp(&self) -> i64 {
        self.timestamp
    }
    fn body(&self) -> &Bytes {
        &self.body
    }
    fn set_options(&mut self, o: SendOptions) {
        self.options = o;
    }
    fn set_body(&mut self, b: Bytes) {
        self.body = b;
    }
}
