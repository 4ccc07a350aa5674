//! TCP transport: the [`receiver`] accepts peers and decodes frames, the
//! [`sender`] keeps pooled connections to members and fans messages out,
//! [`watch`] keeps one idle connection to each member to see it crash.

mod busy_poll;
pub(crate) mod cpu_pressure;
mod iov;
pub mod park_spin;
mod pipe;
pub mod ports;
pub mod receiver;
pub mod sender;
mod socket;
pub mod watch;
