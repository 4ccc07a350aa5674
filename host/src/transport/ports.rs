//! Port numbers for processes started later: [`reserve_loopback`].
//!
//! `shoal demo`, the rolling-restart driver and the tests write a node's
//! ports into its config before the process starts (and a restart reuses
//! them), so the node cannot bind port 0 itself. A number taken from
//! `bind(0)` and released lies in the kernel's ephemeral range, where any
//! outgoing connection on the machine (a peer's sender or watch connection,
//! say) may take it as its local port before the node binds it. Numbers
//! below that range are never handed out by the kernel, so only a program
//! that asks for that exact number can take one.

use std::net::{Ipv4Addr, TcpListener};

use rand::Rng as _;

/// Lowest number tried below the ephemeral range: above the ports of most
/// well-known services.
const FLOOR: u16 = 20_000;

/// How many numbers are tried below the ephemeral range before falling
/// back to the kernel's choice.
const ATTEMPTS: usize = 2_000;

/// The kernel's ephemeral port range (Linux: `ip_local_port_range`), if
/// it can be read.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next()?, it.next()?) {
        (Ok(lo), Ok(hi)) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

/// `n` distinct TCP port numbers free on 127.0.0.1 now, chosen below the
/// kernel's ephemeral range where there is room (at random, so parallel
/// callers rarely try the same ones), else by the kernel. All are held at
/// once while choosing, so no two are equal; they are released on return.
pub fn reserve_loopback(n: usize) -> std::io::Result<Vec<u16>> {
    let mut held: Vec<TcpListener> = Vec::with_capacity(n);
    if let Some((lo, _)) = ephemeral_range().filter(|&(lo, _)| lo > FLOOR + 1_000) {
        let span = usize::from(lo - FLOOR);
        let mut rng = rand::rng();
        for _ in 0..ATTEMPTS {
            if held.len() == n {
                break;
            }
            let offset = u16::try_from(rng.random_range(0..span)).unwrap_or(0);
            if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, FLOOR + offset)) {
                held.push(l);
            }
        }
    }
    while held.len() < n {
        held.push(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?);
    }
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_free_and_outside_the_ephemeral_range() {
        let ports = reserve_loopback(8).expect("ports");
        assert_eq!(ports.len(), 8);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 8, "{ports:?}");
        if let Some((lo, hi)) = ephemeral_range().filter(|&(lo, _)| lo > FLOOR + 1_000) {
            assert!(
                ports.iter().all(|p| !(lo..=hi).contains(p)),
                "{ports:?} in {lo}-{hi}"
            );
        }
        for p in ports {
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).expect("released and free");
        }
    }
}
