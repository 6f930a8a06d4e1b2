//! Ethernet / IPv4 / UDP framing for backends that bypass the kernel (DPDK):
//! they build the 42 bytes of headers in front of each feed packet
//! themselves, and read them off received frames.
//!
//! Only what the feed needs: IPv4 without options, UDP with the checksum
//! left at 0 (allowed over IPv4; the feed packet carries its own CRC32),
//! no VLAN tags, no fragmentation (a feed packet always fits the MTU).
//! A multicast target's MAC is derived from its group (RFC 1112: 01:00:5e
//! and the group's low 23 bits); a unicast target's is the next hop's,
//! given in configuration (there is no ARP here).

use std::net::Ipv4Addr;
use std::net::SocketAddrV4;

use crate::error::Error;

pub const ETHERNET_HEADER_BYTES: usize = 14;
pub const IPV4_HEADER_BYTES: usize = 20;
pub const UDP_HEADER_BYTES: usize = 8;
/// Headers in front of every feed packet in a frame.
pub const FRAME_HEADER_BYTES: usize = ETHERNET_HEADER_BYTES + IPV4_HEADER_BYTES + UDP_HEADER_BYTES;
pub const MAC_BYTES: usize = 6;

const ETHERTYPE_IPV4: u16 = 0x0800;
const IP_PROTOCOL_UDP: u8 = 17;
/// Don't fragment: a feed packet is sized to fit the MTU.
const IP_FLAG_DONT_FRAGMENT: u16 = 0x4000;

pub type Mac = [u8; MAC_BYTES];

/// The headers of frames from one source to one target, filled once; only
/// lengths, the IP id and the IP checksum change per frame.
#[derive(Debug, Clone)]
pub struct FrameTemplate {
    header: [u8; FRAME_HEADER_BYTES],
}

impl FrameTemplate {
    /// Frames from `source` (MAC and address) to `target`. `target_mac` is
    /// used for a unicast target; a multicast one gets its group's MAC.
    pub fn new(
        source_mac: Mac,
        source: SocketAddrV4,
        target: SocketAddrV4,
        target_mac: Option<Mac>,
        ttl: u8,
    ) -> Result<FrameTemplate, Error> {
        let destination_mac = if target.ip().is_multicast() {
            multicast_mac(*target.ip())
        } else {
            target_mac.ok_or_else(|| {
                Error::config(format!(
                    "feed target {target} is unicast: frames to it need the next hop's MAC (feed_dpdk_next_hop_mac)"
                ))
            })?
        };
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[0..6].copy_from_slice(&destination_mac);
        header[6..12].copy_from_slice(&source_mac);
        header[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip = &mut header[ETHERNET_HEADER_BYTES..ETHERNET_HEADER_BYTES + IPV4_HEADER_BYTES];
        ip[0] = 0x45; // version 4, 5 words of header
        ip[6..8].copy_from_slice(&IP_FLAG_DONT_FRAGMENT.to_be_bytes());
        ip[8] = ttl;
        ip[9] = IP_PROTOCOL_UDP;
        ip[12..16].copy_from_slice(&source.ip().octets());
        ip[16..20].copy_from_slice(&target.ip().octets());
        let udp = &mut header[ETHERNET_HEADER_BYTES + IPV4_HEADER_BYTES..];
        udp[0..2].copy_from_slice(&source.port().to_be_bytes());
        udp[2..4].copy_from_slice(&target.port().to_be_bytes());
        Ok(FrameTemplate { header })
    }

    /// Write the frame carrying `payload` into `out`, which is exactly
    /// [`FRAME_HEADER_BYTES`] + `payload.len()` long.
    pub fn write(&self, out: &mut [u8], payload: &[u8], ip_id: u16) {
        assert_eq!(
            out.len(),
            FRAME_HEADER_BYTES + payload.len(),
            "frame buffer sized for its payload"
        );
        let ip_bytes = u16::try_from(IPV4_HEADER_BYTES + UDP_HEADER_BYTES + payload.len())
            .expect("a feed packet fits one IPv4 datagram");
        out[..FRAME_HEADER_BYTES].copy_from_slice(&self.header);
        let ip = &mut out[ETHERNET_HEADER_BYTES..ETHERNET_HEADER_BYTES + IPV4_HEADER_BYTES];
        ip[2..4].copy_from_slice(&ip_bytes.to_be_bytes());
        ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
        let checksum = ipv4_checksum(ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        let udp_bytes = (UDP_HEADER_BYTES + payload.len()) as u16;
        let udp = &mut out[ETHERNET_HEADER_BYTES + IPV4_HEADER_BYTES..FRAME_HEADER_BYTES];
        udp[4..6].copy_from_slice(&udp_bytes.to_be_bytes());
        out[FRAME_HEADER_BYTES..].copy_from_slice(payload);
    }
}

/// A UDP datagram read off a frame.
#[derive(Debug, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    pub source: SocketAddrV4,
    pub destination: SocketAddrV4,
    pub payload: &'a [u8],
}

/// The UDP datagram in an Ethernet frame: the IPv4 checksum and every
/// length are checked; frames that are not unfragmented IPv4/UDP are
/// refused (the caller counts them).
pub fn parse_udp(frame: &[u8]) -> Result<UdpDatagram<'_>, Error> {
    if frame.len() < FRAME_HEADER_BYTES {
        return Err(Error::malformed(format!(
            "frame of {} bytes is shorter than its headers",
            frame.len()
        )));
    }
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return Err(Error::malformed("frame is not IPv4"));
    }
    let ip = &frame[ETHERNET_HEADER_BYTES..];
    let header_bytes = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || header_bytes < IPV4_HEADER_BYTES || ip.len() < header_bytes + UDP_HEADER_BYTES {
        return Err(Error::malformed("bad IPv4 header"));
    }
    if ipv4_checksum(&ip[..header_bytes]) != 0 {
        return Err(Error::malformed("IPv4 header checksum mismatch"));
    }
    if ip[9] != IP_PROTOCOL_UDP {
        return Err(Error::malformed("IPv4 payload is not UDP"));
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(Error::malformed("IPv4 fragment"));
    }
    let total_bytes = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total_bytes < header_bytes + UDP_HEADER_BYTES || total_bytes > ip.len() {
        return Err(Error::malformed("IPv4 total length disagrees with the frame"));
    }
    let udp = &ip[header_bytes..total_bytes];
    let udp_bytes = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_bytes < UDP_HEADER_BYTES || udp_bytes > udp.len() {
        return Err(Error::malformed("UDP length disagrees with the IPv4 length"));
    }
    let address = |at: usize, port_at: usize| {
        SocketAddrV4::new(
            Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]),
            u16::from_be_bytes([udp[port_at], udp[port_at + 1]]),
        )
    };
    Ok(UdpDatagram {
        source: address(12, 0),
        destination: address(16, 2),
        payload: &udp[UDP_HEADER_BYTES..udp_bytes],
    })
}

/// The Internet checksum of an IPv4 header (RFC 1071). Over a header whose
/// checksum field is filled in, a correct one gives 0.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Ethernet address of IPv4 multicast group `group` (RFC 1112).
pub fn multicast_mac(group: Ipv4Addr) -> Mac {
    let o = group.octets();
    [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
}

/// `aa:bb:cc:dd:ee:ff` (or with `-`) as an Ethernet address.
pub fn parse_mac(text: &str) -> Result<Mac, Error> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    let bad = || Error::config(format!("{text:?} is not an Ethernet address (want aa:bb:cc:dd:ee:ff)"));
    if parts.len() != MAC_BYTES {
        return Err(bad());
    }
    let mut mac = [0u8; MAC_BYTES];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// `mac` as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE_MAC: Mac = [0x02, 0, 0, 0, 0, 1];

    fn source() -> SocketAddrV4 {
        "10.77.0.1:7411".parse().expect("addr")
    }

    /// A frame written from a template reads back as the same datagram,
    /// with a valid IPv4 checksum, for every payload length up to the MTU.
    #[test]
    fn written_frames_parse_back() {
        let target: SocketAddrV4 = "10.77.0.2:7410".parse().expect("addr");
        let template =
            FrameTemplate::new(SOURCE_MAC, source(), target, Some([0x02, 0, 0, 0, 0, 2]), 64).expect("template");
        for len in [0usize, 1, 2, 35, 36, 255, 1471, 1472] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut frame = vec![0; FRAME_HEADER_BYTES + len];
            template.write(&mut frame, &payload, len as u16);
            assert_eq!(&frame[0..6], &[0x02, 0, 0, 0, 0, 2]);
            assert_eq!(&frame[6..12], &SOURCE_MAC);
            let datagram = parse_udp(&frame).expect("parses");
            assert_eq!(datagram.source, source());
            assert_eq!(datagram.destination, target);
            assert_eq!(datagram.payload, &payload[..]);
        }
    }

    /// The checksum matches RFC 1071's worked example (a header from
    /// Wikipedia's IPv4 checksum article: 0xb861).
    #[test]
    fn checksum_matches_a_known_header() {
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&header), 0xb861);
    }

    #[test]
    fn multicast_targets_get_their_group_mac_and_unicast_needs_one() {
        let group: SocketAddrV4 = "239.192.74.1:7410".parse().expect("addr");
        let template = FrameTemplate::new(SOURCE_MAC, source(), group, None, 1).expect("template");
        let mut frame = vec![0; FRAME_HEADER_BYTES];
        template.write(&mut frame, &[], 1);
        assert_eq!(&frame[0..6], &[0x01, 0x00, 0x5e, 0x40, 74, 1]);
        let unicast: SocketAddrV4 = "10.77.0.2:7410".parse().expect("addr");
        let err = FrameTemplate::new(SOURCE_MAC, source(), unicast, None, 64).expect_err("no MAC");
        assert!(err.to_string().contains("next hop's MAC"), "{err}");
    }

    /// Damaged or foreign frames are refused, never misread.
    #[test]
    fn damaged_frames_are_refused() {
        let target: SocketAddrV4 = "10.77.0.2:7410".parse().expect("addr");
        let template = FrameTemplate::new(SOURCE_MAC, source(), target, Some([2; 6]), 64).expect("template");
        let mut frame = vec![0; FRAME_HEADER_BYTES + 10];
        template.write(&mut frame, &[9; 10], 7);
        for cut in 0..frame.len() {
            let short = &frame[..cut];
            if let Ok(datagram) = parse_udp(short) {
                panic!("a frame cut at {cut} parsed as {datagram:?}");
            }
        }
        let mut flipped = frame.clone();
        flipped[ETHERNET_HEADER_BYTES + 8] ^= 1; // TTL: checksum no longer holds
        assert!(parse_udp(&flipped)
            .expect_err("checksum")
            .to_string()
            .contains("checksum"));
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(parse_udp(&arp).is_err());
    }

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(parse_mac("02:00:0a:4d:00:02").expect("mac"), [2, 0, 10, 77, 0, 2]);
        assert_eq!(parse_mac("02-00-0A-4D-00-02").expect("mac"), [2, 0, 10, 77, 0, 2]);
        for bad in [
            "",
            "02:00:0a:4d:00",
            "02:00:0a:4d:00:02:03",
            "zz:00:0a:4d:00:02",
            "2:0:a:4d:0:2",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_mac(&[2, 0, 10, 77, 0, 2]), "02:00:0a:4d:00:02");
    }
}
