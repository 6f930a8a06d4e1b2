//! The kernel backend: UDP through the socket API, batched with
//! `sendmmsg` / `recvmmsg` (one system call per batch of datagrams).
//!
//! Multicast targets leave through the interface that owns the bound
//! address (`IP_MULTICAST_IF`), looped back to local members, TTL 1 unless
//! configured: a feed stays inside its region's network.

use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use crate::backend::Backend;

/// Datagrams per `sendmmsg` / `recvmmsg` call.
pub const DATAGRAMS_PER_CALL_MAX: usize = 256;
/// Send and receive buffer the sockets ask for; the kernel may cap it
/// (`net.core.wmem_max`), and as root it is forced.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

pub struct KernelBackend {
    socket: UdpSocket,
    targets: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
}

// The raw pointers in `headers`/`iovecs` are scratch rebuilt on every call.
unsafe impl Send for KernelBackend {}

impl KernelBackend {
    /// Send from `socket` (bound to the feed address) to `targets`.
    pub fn new(socket: UdpSocket, targets: &[SocketAddr], multicast_ttl: u32) -> io::Result<KernelBackend> {
        let local = socket.local_addr()?;
        if targets.iter().any(|t| t.ip().is_multicast()) {
            let IpAddr::V4(interface) = local.ip() else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "multicast feed targets need an IPv4 feed address",
                ));
            };
            socket.set_multicast_loop_v4(true)?;
            socket.set_multicast_ttl_v4(multicast_ttl)?;
            if !interface.is_unspecified() {
                set_multicast_interface(&socket, interface)?;
            }
        }
        set_buffer(&socket, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
        Ok(KernelBackend {
            socket,
            targets: targets.iter().map(sockaddr).collect(),
            headers: Vec::new(),
            iovecs: Vec::new(),
        })
    }
}

impl Backend for KernelBackend {
    fn send(&mut self, packets: &[&[u8]]) -> io::Result<u64> {
        let mut dropped = 0;
        let total = packets.len() * self.targets.len();
        let mut sent = 0;
        while sent < total {
            let batch = (total - sent).min(DATAGRAMS_PER_CALL_MAX);
            self.iovecs.clear();
            self.headers.clear();
            for i in sent..sent + batch {
                let packet = packets[i / self.targets.len()];
                self.iovecs.push(libc::iovec {
                    iov_base: packet.as_ptr() as *mut libc::c_void,
                    iov_len: packet.len(),
                });
            }
            for (j, i) in (sent..sent + batch).enumerate() {
                let (addr, len) = &self.targets[i % self.targets.len()];
                // SAFETY: zeroed msghdr is valid; the pointers below stay
                // alive (self.iovecs, self.targets) until sendmmsg returns.
                let mut header: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
                header.msg_hdr.msg_name = addr as *const _ as *mut libc::c_void;
                header.msg_hdr.msg_namelen = *len;
                header.msg_hdr.msg_iov = &mut self.iovecs[j];
                header.msg_hdr.msg_iovlen = 1;
                self.headers.push(header);
            }
            // SAFETY: headers point at live iovecs and addresses (above).
            let n = unsafe { libc::sendmmsg(self.socket.as_raw_fd(), self.headers.as_mut_ptr(), batch as u32, 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // The first datagram found no buffer (or no route, for a
                    // target that went away): skip it, count it.
                    Some(
                        libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH,
                    ) => {
                        dropped += 1;
                        sent += 1;
                        continue;
                    }
                    _ => return Err(err),
                }
            }
            sent += n as usize;
        }
        Ok(dropped)
    }

    fn name(&self) -> &'static str {
        "kernel"
    }
}

/// `addr` as a C socket address and its length.
pub fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; it is filled as the
    // matching family's struct, which it is large enough to hold.
    let mut storage: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn set_multicast_interface(socket: &UdpSocket, interface: Ipv4Addr) -> io::Result<()> {
    let addr = libc::in_addr {
        s_addr: u32::from(interface).to_be(),
    };
    // SAFETY: setsockopt reads `size_of::<in_addr>()` bytes from `addr`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            &addr as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::in_addr>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ask for [`SOCKET_BUFFER_BYTES`] of socket buffer: forced (root), else
/// as much as the kernel allows. Best effort: the default still works.
pub fn set_buffer(socket: &impl AsRawFd, force: libc::c_int, plain: libc::c_int) {
    let bytes = SOCKET_BUFFER_BYTES as libc::c_int;
    for option in [force, plain] {
        // SAFETY: setsockopt reads one c_int.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                &bytes as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Receives datagrams in batches with `recvmmsg`, into buffers it owns.
pub struct BatchReceiver {
    buffers: Vec<Vec<u8>>,
    lengths: Vec<usize>,
    sources: Vec<libc::sockaddr_storage>,
}

impl BatchReceiver {
    /// `batch` datagrams of up to `datagram_bytes_max` each per call.
    pub fn new(batch: usize, datagram_bytes_max: usize) -> BatchReceiver {
        let batch = batch.clamp(1, DATAGRAMS_PER_CALL_MAX);
        BatchReceiver {
            buffers: (0..batch).map(|_| vec![0; datagram_bytes_max]).collect(),
            lengths: vec![0; batch],
            // SAFETY: all-zero sockaddr_storage is valid.
            sources: (0..batch)
                .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
                .collect(),
        }
    }

    /// Block until at least one datagram arrives (or the socket's read
    /// timeout passes: then 0), and take what else is already queued.
    pub fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let batch = self.buffers.len();
        let mut iovecs: Vec<libc::iovec> = self
            .buffers
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = (0..batch)
            .map(|i| {
                // SAFETY: zeroed mmsghdr is valid; pointers set below.
                let mut header: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
                header.msg_hdr.msg_name = &mut self.sources[i] as *mut _ as *mut libc::c_void;
                header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                header.msg_hdr.msg_iov = &mut iovecs[i];
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        loop {
            // SAFETY: headers point into self.buffers/self.sources and
            // iovecs, all alive and sized as declared.
            let n = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    headers.as_mut_ptr(),
                    batch as u32,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return Ok(0),
                    _ => return Err(err),
                }
            }
            let n = n as usize;
            for (length, header) in self.lengths.iter_mut().zip(&headers).take(n) {
                *length = header.msg_len as usize;
            }
            return Ok(n);
        }
    }

    /// The `i`th datagram of the last [`Self::receive`] and its source.
    pub fn datagram(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        (&self.buffers[i][..self.lengths[i]], socket_addr(&self.sources[i]))
    }
}

fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says it holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::new(
                IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A batch sent to two unicast targets arrives whole and in order at both.
    #[test]
    fn sendmmsg_reaches_every_target_in_order() {
        let receivers: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind")).collect();
        for receiver in &receivers {
            set_buffer(receiver, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
        }
        let targets: Vec<SocketAddr> = receivers.iter().map(|r| r.local_addr().expect("addr")).collect();
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut backend = KernelBackend::new(sender, &targets, 1).expect("backend");
        let packets: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_le_bytes().repeat(10)).collect();
        let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        assert_eq!(backend.send(&refs).expect("sent"), 0);
        for receiver in &receivers {
            receiver
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut batch = BatchReceiver::new(64, 2048);
            let mut got = Vec::new();
            while got.len() < packets.len() {
                let n = batch.receive(receiver).expect("receive");
                assert!(n > 0, "timed out after {} datagrams", got.len());
                for i in 0..n {
                    let (bytes, source) = batch.datagram(i);
                    assert_eq!(source, Some(backend.socket.local_addr().expect("addr")));
                    got.push(bytes.to_vec());
                }
            }
            assert_eq!(got, packets);
        }
    }
}
