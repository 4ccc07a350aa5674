//! shoal: a cluster-communication node speaking Apache Tribes' wire format.
//!
//! # Layout
//!
//! Data flows one way (see `DESIGN.md`):
//!
//! ```text
//! config ─► node (wires everything, owns shutdown)
//! membership ─► member table ─► channel ─► [dispatch] ─► sender ══TCP══► receiver ─► channel ─► listeners
//! api (HTTP admin and metrics)          wire (codecs only; no I/O)
//! ```
//!
//! * [`wire`] — Tribes' member packet, frames, ChannelData, ACKs, option bits.
//! * [`membership`] — multicast, static-list or DNS-discovered heartbeats over UDP; the member table.
//! * [`transport`] — the TCP receiver and the pooled parallel sender.
//! * [`Channel`] — send with option bits; message and membership listeners.
//! * [`session`] — HTTP-session replication: host-owned sessions, WebAssembly
//!   placement policies, state transfer, the session API.
//! * [`deploy`] — cluster-wide, signed deploys of plug-ins.
//! * [`Node`] — start-up, readiness and graceful shutdown of all of the above.
//! * [`Config`] — the TOML configuration.

pub mod api;
pub mod chain;
mod channel;
pub mod clock;
pub mod config;
mod dedup;
pub mod deploy;
mod dispatch;
#[doc(hidden)]
pub mod fuzzing;
mod member;
pub mod membership;
mod metrics;
mod node;
pub mod plugins;
pub mod security;
pub mod session;
pub mod transport;
pub mod wasm;
pub mod wire;

pub use channel::{
    Channel, ChannelListener, ChannelSendError, EventSummary, ListenerError, MembershipListener,
    MessageSummary, ReceivedMessage,
};
pub use config::{Config, ConfigError};
pub use dispatch::EnqueueError;
pub use member::{InvalidMember, Member, MemberId};
pub use metrics::Metrics;
pub use node::{Node, StartError};
pub use transport::sender::{FaultyMember, PeerError, SendError};
pub use wire::SendOptions;
