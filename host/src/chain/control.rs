//! The control plane: membership events from below, plug-in probe and timer
//! results, the channel heartbeat and chain changes, run through the
//! chain's control instances one at a time, in order, by the node's control
//! loop.

use super::{Chain, handle::ChainChange};
use crate::member::MemberEvent;
use crate::plugins::{FailureMode, HostEvent, MemberVerdict, PluginShared, Raised};

/// Work for the node's control loop, which runs every membership, heartbeat,
/// probe-result and timer call on the plug-ins' control instances, and every
/// change of the chain, one at a time, in order.
#[derive(Debug)]
pub enum ControlEvent {
    /// A membership event from below the chain.
    Member(MemberEvent),
    /// A probe or timer a plug-in started has reported back.
    Plugin(HostEvent),
    /// The channel heartbeat.
    Heartbeat,
    /// A connection to a member broke or could not be opened (the
    /// transport's watch, [`crate::transport::watch`]), with the cause.
    ConnectionLost(crate::member::Member, String),
    /// A heartbeat from a member arrived at this time
    /// (`host.monotonic-ms`'s clock).
    MemberHeartbeat(crate::member::Member, u64),
    /// A change of the chain on the running node (live swap).
    Apply(Box<ChainChange>),
}

impl Chain {
    /// Runs one control event through the chain on the control instances and
    /// returns the membership events that reached the top, in order.
    pub async fn control(&self, ev: ControlEvent) -> Vec<MemberEvent> {
        let mut work: Vec<(usize, MemberEvent)> = Vec::new();
        match ev {
            ControlEvent::Member(e) => work.push((self.interceptors.len(), e)),
            ControlEvent::Plugin(HostEvent::ProbeResult {
                plugin,
                id,
                target,
                alive,
            }) => {
                if let Some(i) = self.route(&plugin, "probe result")
                    && let Ok(raised) = self.interceptors[i].on_probe_result(id, &target, alive)
                {
                    self.interceptors[i].note_raised(&raised);
                    push_raised(&mut work, i, raised);
                }
            }
            ControlEvent::Plugin(HostEvent::Timer { plugin, id }) => {
                if let Some(i) = self.route(&plugin, "timer")
                    && let Ok(raised) = self.interceptors[i].on_timer(id)
                {
                    self.interceptors[i].note_raised(&raised);
                    push_raised(&mut work, i, raised);
                }
            }
            ControlEvent::Apply(change) => {
                // Only the node's control loop applies chain changes; a chain
                // asked to do it has nothing to say.
                change.refuse("chain changes are applied by the node's control loop");
            }
            ControlEvent::Heartbeat => {
                self.each_control(&mut work, |c| c.heartbeat, |ic| ic.heartbeat())
            }
            ControlEvent::ConnectionLost(m, cause) => self.each_control(
                &mut work,
                |c| c.connections,
                |ic| ic.connection_lost(&m, &cause),
            ),
            ControlEvent::MemberHeartbeat(m, at) => self.each_control(
                &mut work,
                |c| c.member_heartbeats,
                |ic| ic.member_heartbeat(&m, at),
            ),
        }
        self.run_up(work).await
    }

    /// Whether any interceptor asked for every member heartbeat (the node
    /// skips the control call for each otherwise).
    pub fn wants_member_heartbeats(&self) -> bool {
        self.interceptors.iter().any(|ic| ic.caps.member_heartbeats)
    }

    /// Calls every interceptor that asked for a hook (`wants`), in chain
    /// order, and queues the membership events they raise.
    fn each_control(
        &self,
        work: &mut Vec<(usize, MemberEvent)>,
        wants: impl Fn(&crate::plugins::Caps) -> bool,
        call: impl Fn(&crate::plugins::Interceptor) -> Result<Vec<Raised>, crate::plugins::FailureKind>,
    ) {
        for (i, ic) in self.interceptors.iter().enumerate() {
            if !wants(&ic.caps) {
                continue;
            }
            if let Ok(raised) = call(ic) {
                ic.note_raised(&raised);
                push_raised(work, i, raised);
            }
        }
    }

    /// Passes each `(above, event)` up from its position, in order, with the
    /// events raised on the way; returns those that reached the top.
    pub(crate) async fn run_up(&self, mut work: Vec<(usize, MemberEvent)>) -> Vec<MemberEvent> {
        let mut out = Vec::new();
        // Process in order: a FIFO over the work list.
        let mut next = 0;
        while next < work.len() {
            let (above, ev) = work[next].clone();
            next += 1;
            if let Some(e) = self.member_up(above, ev, &mut work).await {
                out.push(e);
            }
            if work.len() > 10_000 {
                tracing::error!(
                    "interceptors raised too many membership events; dropping the rest"
                );
                break;
            }
        }
        out
    }

    /// Passes a membership event up through the `above` interceptors nearest
    /// the network; events raised on the way are appended to `work`.
    async fn member_up(
        &self,
        above: usize,
        ev: MemberEvent,
        work: &mut Vec<(usize, MemberEvent)>,
    ) -> Option<MemberEvent> {
        for i in (0..above.min(self.interceptors.len())).rev() {
            let ic = &self.interceptors[i];
            if !ic.caps.members {
                continue;
            }
            let r = ic.member_event(&ev);
            match r {
                Ok((verdict, raised)) => {
                    ic.note_event(&ev, matches!(verdict, MemberVerdict::Hold));
                    ic.note_raised(&raised);
                    push_raised(work, i, raised);
                    match verdict {
                        MemberVerdict::Pass => {}
                        MemberVerdict::Drop(reason) => {
                            tracing::debug!(plugin = %ic.spec.name, %reason, "membership event filtered");
                            return None;
                        }
                        MemberVerdict::Hold => return None,
                    }
                }
                Err(_) if ic.spec.failure_mode == FailureMode::FailClosed => return None,
                Err(_) => {}
            }
        }
        Some(ev)
    }

    /// Where a probe or timer result of `plugin` goes: to the plug-in of
    /// that name if it is the same load, or a later one that took its state
    /// over. Otherwise it is dropped (logged): a successor that started
    /// without state was offered the events its predecessor held instead.
    fn route(&self, plugin: &PluginShared, what: &str) -> Option<usize> {
        let i = self.index_of(&plugin.name)?;
        let ic = &self.interceptors[i];
        if ic.shared.generation == plugin.generation
            || (plugin.generation < ic.shared.generation && plugin.generation >= ic.lineage())
        {
            return Some(i);
        }
        tracing::debug!(
            plugin = %plugin.name, generation = plugin.generation,
            current = ic.shared.generation, "dropping a {what} of a replaced version"
        );
        None
    }

    /// Position of the interceptor named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.interceptors.iter().position(|ic| ic.spec.name == name)
    }
}

fn push_raised(work: &mut Vec<(usize, MemberEvent)>, from: usize, raised: Vec<Raised>) {
    for r in raised {
        work.push((
            from,
            match r {
                Raised::Added(m) => MemberEvent::Added(m),
                Raised::Disappeared(m, reason) => MemberEvent::Disappeared(m, reason),
            },
        ));
    }
}
