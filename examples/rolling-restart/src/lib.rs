//! The rolling-restart example: a 3-node cluster of `examples/webapp`
//! behind Apache httpd changes its filter plug-in under user traffic — by a
//! rolling restart onto a new config, or by one `shoal plugin deploy` — and
//! the driver counts what the users lost (see README.md here).
//!
//! # Layout
//!
//! - [`cluster`]: the processes (nodes with generated configs, httpd, the
//!   deploy key), graceful stop, restart, readiness; killed on Drop.
//! - [`load`]: the bounded load generator (users with carts, a retry,
//!   per-request samples, the final check of every cart).
//! - [`roll`]: the two rolls and the deploy timings, their reports.
//! - `cpu`: CPU of this run, the kernel and everyone else, per phase.
//! - `httpd` and `measure` are shared with other tests and benches
//!   (`examples/webapp/tests/common/httpd.rs`,
//!   `host/benches/common/measure.rs`), included by path.

pub mod cluster;
mod cpu;
#[path = "../../webapp/tests/common/httpd.rs"]
mod httpd;
pub mod load;
#[path = "../../../host/benches/common/measure.rs"]
#[allow(dead_code)] // the CPU sampler uses the per-process figures only
mod measure;
pub mod roll;

pub use cluster::{Binaries, Cluster};
pub use cpu::PhaseCpu;
pub use load::LoadSpec;
pub use roll::{Mode, Options, RollReport, TimingReport, deploy_timing, roll};
