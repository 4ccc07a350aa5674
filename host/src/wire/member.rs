//! The Tribes member packet (`MemberImpl.getData`, tribes.md §1.1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, Bytes, BytesMut};

use super::{DecodeError, Reader};

/// `TRIBES-B` followed by the format version bytes `01 00`.
pub const TRIBES_MBR_BEGIN: [u8; 10] = *b"TRIBES-B\x01\x00";
/// `TRIBES-E` followed by the format version bytes `01 00`.
pub const TRIBES_MBR_END: [u8; 10] = *b"TRIBES-E\x01\x00";
/// The command a member sends once on graceful stop (`Member.SHUTDOWN_PAYLOAD`).
pub const SHUTDOWN_COMMAND: &[u8] = b"BABY-ALEX";

/// Fixed bytes of a packet besides host, command, domain and payload.
const FIXED_LEN: usize = 73;
/// Tribes refuses hosts longer than this (the length is one signed byte).
const MAX_HOST_LEN: usize = 127;
/// A member packet must fit a UDP datagram (Tribes' `MAX_PACKET_SIZE`).
pub(crate) const MAX_PACKET_LEN: usize = 65_535;

/// One member's self-description, as multicast in heartbeats and embedded in
/// every channel message.
///
/// Identity (see `MemberId`) is host bytes + port + `unique_id`; the
/// other fields are attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPacket {
    /// Milliseconds since the member's service started, when the packet was built.
    pub alive_ms: i64,
    /// TCP port of the member's receiver.
    pub port: i32,
    /// Advertised secure port; −1 when none (always, for stock Tribes).
    pub secure_port: i32,
    /// UDP receive port; −1 when none.
    pub udp_port: i32,
    /// Raw address bytes: 4 for IPv4, 16 for IPv6.
    pub host: Bytes,
    /// Empty normally; [`SHUTDOWN_COMMAND`] on graceful stop.
    pub command: Bytes,
    /// Cluster domain, opaque bytes (ISO-8859-1 in Tomcat's config).
    pub domain: Bytes,
    /// 16 random bytes chosen at start; a restarted node is a new member.
    pub unique_id: [u8; 16],
    /// Opaque application bytes (shoal will carry its plug-in fingerprint here).
    pub payload: Bytes,
}

impl MemberPacket {
    /// Total encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + self.host.len() + self.command.len() + self.domain.len() + self.payload.len()
    }

    /// Whether this packet announces a graceful stop.
    pub fn is_shutdown(&self) -> bool {
        self.command.as_ref() == SHUTDOWN_COMMAND
    }

    /// The host as an IP address, if it has 4 or 16 bytes.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host.len() {
            4 => {
                let mut a = [0u8; 4];
                a.copy_from_slice(&self.host);
                Some(IpAddr::V4(Ipv4Addr::from(a)))
            }
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&self.host);
                Some(IpAddr::V6(Ipv6Addr::from(a)))
            }
            _ => None,
        }
    }

    /// Raw host bytes for an IP address, as Java's `InetAddress.getAddress()`.
    pub fn host_bytes(ip: IpAddr) -> Bytes {
        match ip {
            IpAddr::V4(a) => Bytes::copy_from_slice(&a.octets()),
            IpAddr::V6(a) => Bytes::copy_from_slice(&a.octets()),
        }
    }

    /// Appends the encoded packet to `buf`.
    ///
    /// # Panics
    /// Never for values built by shoal; a host longer than 127 bytes or a field
    /// longer than `i32::MAX` is a programming error and is truncated by
    /// [`MemberPacket::validate_for_encoding`] callers beforehand.
    pub fn encode(&self, buf: &mut BytesMut) {
        let body_len = self.encoded_len() - 24;
        buf.reserve(self.encoded_len());
        buf.put_slice(&TRIBES_MBR_BEGIN);
        buf.put_i32(body_len as i32);
        buf.put_i64(self.alive_ms);
        buf.put_i32(self.port);
        buf.put_i32(self.secure_port);
        buf.put_i32(self.udp_port);
        buf.put_u8(self.host.len() as u8);
        buf.put_slice(&self.host);
        buf.put_i32(self.command.len() as i32);
        buf.put_slice(&self.command);
        buf.put_i32(self.domain.len() as i32);
        buf.put_slice(&self.domain);
        buf.put_slice(&self.unique_id);
        buf.put_i32(self.payload.len() as i32);
        buf.put_slice(&self.payload);
        buf.put_slice(&TRIBES_MBR_END);
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut b);
        b.freeze()
    }

    /// Checks that the packet can be encoded: host at most 127 bytes and the whole
    /// packet within one UDP datagram (65 535 bytes), as Tribes requires.
    pub fn validate_for_encoding(&self) -> Result<(), String> {
        if self.host.len() > MAX_HOST_LEN {
            return Err(format!(
                "host is {} bytes, at most {MAX_HOST_LEN}",
                self.host.len()
            ));
        }
        if self.encoded_len() > MAX_PACKET_LEN {
            return Err(format!(
                "member packet would be {} bytes, at most {MAX_PACKET_LEN}",
                self.encoded_len()
            ));
        }
        Ok(())
    }

    /// Decodes exactly one packet occupying all of `buf`.
    ///
    /// Stricter than Tribes (§1.2): the inner lengths must add up to the body
    /// length and nothing may follow the end marker.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_bytes(&Bytes::copy_from_slice(buf))
    }

    /// Like [`MemberPacket::decode`], but shares `buf`'s storage for the fields.
    pub fn decode_bytes(buf: &Bytes) -> Result<Self, DecodeError> {
        const WHAT: &str = "member packet";
        if buf.len() > MAX_PACKET_LEN {
            return Err(DecodeError::LengthOutOfRange {
                field: "member packet",
                len: buf.len() as i64,
                max: MAX_PACKET_LEN,
            });
        }
        let head = buf.len().min(TRIBES_MBR_BEGIN.len());
        if buf[..head] != TRIBES_MBR_BEGIN[..head] {
            return Err(DecodeError::BadStartMarker { what: WHAT });
        }
        if buf.len() < FIXED_LEN {
            return Err(DecodeError::Incomplete {
                needed: FIXED_LEN - buf.len(),
            });
        }
        let mut r = Reader::new(buf);
        r.take("begin", TRIBES_MBR_BEGIN.len())?;
        let body_len = r.i32("body length")?;
        let body_len = super::checked_len("body length", body_len, MAX_PACKET_LEN - 24)?;
        let total = body_len + 24;
        if buf.len() < total {
            return Err(DecodeError::Incomplete {
                needed: total - buf.len(),
            });
        }
        if buf[14 + body_len..total] != TRIBES_MBR_END {
            return Err(DecodeError::BadEndMarker { what: WHAT });
        }
        if buf.len() > total {
            return Err(DecodeError::TrailingBytes {
                what: WHAT,
                extra: buf.len() - total,
            });
        }
        // Parse the body only: the end marker is not available to the fields.
        let body = buf.slice(0..14 + body_len);
        let mut r = Reader::new(&body);
        r.take("begin", 14)?;
        let alive_ms = r.i64("alive")?;
        let port = r.i32("port")?;
        let secure_port = r.i32("secure port")?;
        let udp_port = r.i32("udp port")?;
        let host_len = r.u8("host length")? as usize;
        if host_len > MAX_HOST_LEN {
            return Err(DecodeError::LengthOutOfRange {
                field: "host",
                len: host_len as i64,
                max: MAX_HOST_LEN,
            });
        }
        let host_start = r.position();
        r.take("host", host_len)?;
        let host = body.slice(host_start..host_start + host_len);
        let command = body.slice(r.len_prefixed("command", MAX_PACKET_LEN)?);
        let domain = body.slice(r.len_prefixed("domain", MAX_PACKET_LEN)?);
        let unique_id = r.array::<16>("unique id")?;
        let payload = body.slice(r.len_prefixed("payload", MAX_PACKET_LEN)?);
        if r.remaining() != 0 {
            return Err(DecodeError::TrailingBytes {
                what: "member packet body",
                extra: r.remaining(),
            });
        }
        Ok(Self {
            alive_ms,
            port,
            secure_port,
            udp_port,
            host,
            command,
            domain,
            unique_id,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        hex::decode(s).expect("valid hex in test")
    }

    fn reference_member() -> MemberPacket {
        MemberPacket {
            alive_ms: 0x1234,
            port: 4000,
            secure_port: -1,
            udp_port: -1,
            host: Bytes::from_static(&[10, 0, 0, 1]),
            command: Bytes::new(),
            domain: Bytes::from_static(b"dom"),
            unique_id: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
            payload: Bytes::new(),
        }
    }

    /// tribes.md §1.1 [jar] example: host 10.0.0.1, port 4000, domain "dom", id 01..10.
    const REFERENCE_HEX: &str = "54 52 49 42 45 53 2d 42 01 00 00 00 00 38 00 00 00 00 00 00 12 34
        00 00 0f a0 ff ff ff ff ff ff ff ff 04 0a 00 00 01
        00 00 00 00 00 00 00 03 64 6f 6d 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10
        00 00 00 00 54 52 49 42 45 53 2d 45 01 00";

    #[test]
    fn golden_reference_member() {
        let m = reference_member();
        let bytes = m.to_bytes();
        assert_eq!(bytes.len(), 80);
        assert_eq!(bytes.as_ref(), hex(REFERENCE_HEX).as_slice());
        assert_eq!(MemberPacket::decode(&bytes).expect("decodes"), m);
    }

    #[test]
    fn golden_reference_member_shutdown() {
        let mut m = reference_member();
        m.command = Bytes::from_static(SHUTDOWN_COMMAND);
        let bytes = m.to_bytes();
        assert_eq!(bytes.len(), 89);
        assert_eq!(&bytes[10..14], &[0, 0, 0, 0x41]);
        // tribes.md says "at offset 35"; the layout (and the Tomcat capture) put the
        // command length at 35 + host length = 39.
        assert_eq!(
            &bytes[39..52],
            hex("00 00 00 09 42 41 42 59 2d 41 4c 45 58").as_slice()
        );
        let back = MemberPacket::decode(&bytes).expect("decodes");
        assert!(back.is_shutdown());
    }

    /// Real heartbeat captured from Tomcat 10.1.60 (captures/decoded.txt).
    #[test]
    fn captured_tomcat_heartbeat() {
        let raw = hex(
            "5452494245532d42010000000035000000000000040e00001004ffffffffffffffff047f0000010000000000000000\
             1c6d1963610e45a1874703f82b0a3c03000000005452494245532d450100",
        );
        let m = MemberPacket::decode(&raw).expect("decodes");
        assert_eq!(m.alive_ms, 1038);
        assert_eq!(m.port, 4100);
        assert_eq!(m.ip(), Some("127.0.0.1".parse().expect("ip")));
        assert!(m.domain.is_empty() && m.command.is_empty() && m.payload.is_empty());
        assert_eq!(hex::encode(m.unique_id), "1c6d1963610e45a1874703f82b0a3c03");
        assert_eq!(m.to_bytes().as_ref(), raw.as_slice());
    }

    #[test]
    fn captured_tomcat_shutdown() {
        let raw = hex(
            "5452494245532d4201000000003e000000000000160200001005ffffffffffffffff047f000001\
             00000009424142592d414c455800000000205e4cc350974980a3945be11b09ade9000000005452494245532d450100",
        );
        let m = MemberPacket::decode(&raw).expect("decodes");
        assert!(m.is_shutdown());
        assert_eq!(m.port, 4101);
        assert_eq!(m.alive_ms, 5634);
    }

    #[test]
    fn inconsistent_inner_length_is_an_error() {
        let mut raw = reference_member().to_bytes().to_vec();
        // domain length (offsets 43..47) 3 -> 200: runs past the body
        raw[46] = 200;
        assert!(matches!(
            MemberPacket::decode(&raw),
            Err(DecodeError::Truncated {
                field: "domain",
                ..
            })
        ));
        raw[43] = 0xff; // negative domain length
        assert!(matches!(
            MemberPacket::decode(&raw),
            Err(DecodeError::LengthOutOfRange {
                field: "domain",
                ..
            })
        ));
    }

    #[test]
    fn trailing_and_truncated() {
        let raw = reference_member().to_bytes();
        let mut long = raw.to_vec();
        long.push(0);
        assert!(matches!(
            MemberPacket::decode(&long),
            Err(DecodeError::TrailingBytes { .. })
        ));
        assert!(matches!(
            MemberPacket::decode(&raw[..raw.len() - 1]),
            Err(DecodeError::Incomplete { .. })
        ));
        assert!(matches!(
            MemberPacket::decode(b"TRIBES-X"),
            Err(DecodeError::BadStartMarker { .. })
        ));
    }
}
