//! A cluster member as the rest of the node sees it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::wire::MemberPacket;

/// A member's identity, as Tribes defines it (tribes.md §1.3): host bytes, TCP
/// port and the 16-byte unique id. A restarted node has a new unique id and is
/// therefore a new member.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId {
    /// Host address of the member's receiver.
    pub host: IpAddr,
    /// TCP port of the member's receiver.
    pub port: u16,
    /// Random id chosen when the member started.
    pub unique_id: [u8; 16],
}

impl MemberId {
    /// The unique id as 32 lowercase hex digits.
    pub fn unique_hex(&self) -> String {
        hex::encode(self.unique_id)
    }

    /// Where the member's receiver listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for MemberId {
    /// `tcp://host:port#uniqueid-prefix`, after Tribes' member name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcp://{}#{}",
            self.addr(),
            &hex::encode(&self.unique_id[..4])
        )
    }
}

/// Why a member packet cannot describe a usable member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMember {
    /// The host is neither 4 (IPv4) nor 16 (IPv6) bytes.
    #[error("host has {0} bytes, expected 4 or 16")]
    Host(usize),
    /// The port is outside 1..=65535.
    #[error("port {0} out of range")]
    Port(i32),
}

/// A member with its latest attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Identity.
    pub id: MemberId,
    /// Cluster domain (opaque bytes, usually ASCII).
    pub domain: Bytes,
    /// Milliseconds the member reported being up in its latest heartbeat.
    pub alive_ms: i64,
    /// Opaque member payload.
    pub payload: Bytes,
    /// The latest command (empty, or the shutdown command).
    pub command: Bytes,
    /// Advertised secure port (−1: none).
    pub secure_port: i32,
    /// Advertised UDP port (−1: none).
    pub udp_port: i32,
}

impl Member {
    /// The member a packet describes, if its host and port are usable.
    pub fn from_packet(p: &MemberPacket) -> Result<Self, InvalidMember> {
        let host = p.ip().ok_or(InvalidMember::Host(p.host.len()))?;
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(InvalidMember::Port(p.port))?;
        Ok(Self {
            id: MemberId {
                host,
                port,
                unique_id: p.unique_id,
            },
            domain: p.domain.clone(),
            alive_ms: p.alive_ms,
            payload: p.payload.clone(),
            command: p.command.clone(),
            secure_port: p.secure_port,
            udp_port: p.udp_port,
        })
    }

    /// The domain as text (ISO-8859-1, as Tomcat configures it).
    pub fn domain_str(&self) -> String {
        self.domain.iter().map(|&b| b as char).collect()
    }
}

/// Why a member left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// Silent for longer than the drop time.
    Expired,
    /// It announced a graceful stop (the shutdown command).
    Shutdown,
}

/// A change in membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member was heard from for the first time.
    Added(Member),
    /// A member left.
    Disappeared(Member, LeaveReason),
}

impl MemberEvent {
    /// The member the event is about.
    pub fn member(&self) -> &Member {
        match self {
            Self::Added(m) | Self::Disappeared(m, _) => m,
        }
    }
}
