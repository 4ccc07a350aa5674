//! Tribes' send-option bits (`Channel.SEND_OPTIONS_*`, tribes.md §3).

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign};
use std::str::FromStr;

/// The option word of a channel message. Bits other than the named ones are
/// interceptor flags and are carried unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SendOptions(pub i32);

impl SendOptions {
    /// The body is raw bytes, not a Java-serialized object.
    pub const BYTE_MESSAGE: Self = Self(0x0001);
    /// The sender waits for an ACK frame.
    pub const USE_ACK: Self = Self(0x0002);
    /// With `USE_ACK`: the ACK is sent after delivery, FAIL-ACK if delivery failed.
    pub const SYNCHRONIZED_ACK: Self = Self(0x0004);
    /// Queue the send (MessageDispatch); the caller returns at once.
    pub const ASYNCHRONOUS: Self = Self(0x0008);
    /// Defined by Tribes but acted on by nothing.
    pub const SECURE: Self = Self(0x0010);
    /// Send as a UDP datagram to the member's udpPort.
    pub const UDP: Self = Self(0x0020);
    /// Send as a multicast datagram through the membership service.
    pub const MULTICAST: Self = Self(0x0040);
    /// Tribes' default: `USE_ACK`.
    pub const DEFAULT: Self = Self::USE_ACK;

    const NAMES: [(&'static str, Self); 10] = [
        ("byte_message", Self::BYTE_MESSAGE),
        ("byte", Self::BYTE_MESSAGE),
        ("use_ack", Self::USE_ACK),
        ("synchronized_ack", Self::SYNCHRONIZED_ACK),
        ("sync", Self::SYNCHRONIZED_ACK),
        ("asynchronous", Self::ASYNCHRONOUS),
        ("async", Self::ASYNCHRONOUS),
        ("secure", Self::SECURE),
        ("udp", Self::UDP),
        ("multicast", Self::MULTICAST),
    ];

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the sender must wait for an acknowledgement.
    pub fn wants_ack(self) -> bool {
        self.contains(Self::USE_ACK)
    }

    /// Whether the receiver acknowledges after delivery (and may FAIL-ACK).
    pub fn wants_sync_ack(self) -> bool {
        self.contains(Self::USE_ACK) && self.contains(Self::SYNCHRONIZED_ACK)
    }

    /// Whether the send is queued for asynchronous dispatch.
    pub fn is_async(self) -> bool {
        self.contains(Self::ASYNCHRONOUS)
    }
}

impl BitOr for SendOptions {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for SendOptions {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for SendOptions {
    type Output = Self;
    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

impl fmt::Debug for SendOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SendOptions({self})")
    }
}

impl fmt::Display for SendOptions {
    /// The integer, then the named bits: `7 (byte|use_ack|sync)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let names: Vec<&str> = [
            ("byte", Self::BYTE_MESSAGE),
            ("use_ack", Self::USE_ACK),
            ("sync", Self::SYNCHRONIZED_ACK),
            ("async", Self::ASYNCHRONOUS),
            ("secure", Self::SECURE),
            ("udp", Self::UDP),
            ("multicast", Self::MULTICAST),
        ]
        .into_iter()
        .filter(|(_, b)| self.contains(*b))
        .map(|(n, _)| n)
        .collect();
        if !names.is_empty() {
            write!(f, " ({})", names.join("|"))?;
        }
        Ok(())
    }
}

/// A send-options string that is neither an integer nor a comma list of known names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown send option {0:?} (expected an integer or a comma list of byte, use_ack, sync, async, secure, udp, multicast)"
)]
pub struct ParseOptionsError(pub String);

impl FromStr for SendOptions {
    type Err = ParseOptionsError;

    /// As `Channel.parseSendOptions`: empty gives 0, an integer is taken as is,
    /// otherwise named bits separated by commas (or `|`) are ORed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self(0));
        }
        if let Ok(v) = s.parse::<i32>() {
            return Ok(Self(v));
        }
        let mut out = Self(0);
        for part in s.split([',', '|']) {
            let part = part.trim().to_ascii_lowercase();
            let bit = Self::NAMES
                .iter()
                .find(|(n, _)| *n == part)
                .map(|(_, b)| *b)
                .ok_or_else(|| ParseOptionsError(part.clone()))?;
            out |= bit;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_like_tribes() {
        assert_eq!("".parse::<SendOptions>(), Ok(SendOptions(0)));
        assert_eq!("6".parse::<SendOptions>(), Ok(SendOptions(6)));
        assert_eq!("async".parse::<SendOptions>(), Ok(SendOptions(8)));
        assert_eq!(
            "byte,use_ack,sync".parse::<SendOptions>(),
            Ok(SendOptions(7))
        );
        assert!("bogus".parse::<SendOptions>().is_err());
        assert!(SendOptions(6).wants_sync_ack());
        assert!(!SendOptions(4).wants_sync_ack());
        assert!(SendOptions(10).wants_ack() && SendOptions(10).is_async());
        assert_eq!(SendOptions(7).to_string(), "7 (byte|use_ack|sync)");
    }
}
