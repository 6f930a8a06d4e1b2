//! DPDK for txlog: hand-written declarations of the C shim in
//! `csrc/shim.c`, which wraps the DPDK 22.11 calls txlog's feed uses
//! (EAL, virtual devices, one RX and one TX queue per port, mbuf pools and
//! burst I/O). Debian's `libdpdk-dev` provides the library; `pkg-config
//! libdpdk` says where it is.
//!
//! DPDK's structs stay opaque here: Rust only holds pointers to them
//! (`RteMempool`, `RteMbuf`) and hands them back to the shim. All of it is
//! `unsafe` FFI; the safe wrapper is the feed's DPDK backend.
//!
//! Rules the callers keep (DPDK's, not ours):
//! - `txlog_dpdk_eal_init` once per process. The calling thread becomes
//!   EAL's main lcore (pinned to its CPU set); later calls on mbufs and
//!   ports run on that thread, which owns the per-lcore mempool cache.
//! - A port's RX and TX queue are used by one thread at a time.
//! - After init, check that the expected port exists: `net_af_packet`
//!   without `CAP_NET_RAW` can leave no port behind.

#![allow(non_camel_case_types)]

use std::os::raw::c_char;
use std::os::raw::c_int;
use std::os::raw::c_uint;

/// `struct rte_mempool`, opaque.
#[repr(C)]
pub struct RteMempool {
    _private: [u8; 0],
}

/// `struct rte_mbuf`, opaque.
#[repr(C)]
pub struct RteMbuf {
    _private: [u8; 0],
}

/// Bytes of an Ethernet address.
pub const ETHER_ADDR_BYTES: usize = 6;

extern "C" {
    /// `rte_eal_init`: parsed argument count, or -1 with `rte_errno` set.
    pub fn txlog_dpdk_eal_init(argc: c_int, argv: *mut *mut c_char) -> c_int;
    /// `rte_errno` of the calling thread.
    pub fn txlog_dpdk_errno() -> c_int;
    /// `rte_strerror`: a static string.
    pub fn txlog_dpdk_strerror(err: c_int) -> *const c_char;
    /// Ports available (`rte_eth_dev_count_avail`).
    pub fn txlog_dpdk_port_count() -> u16;
    /// Create a virtual device (`rte_vdev_init`): `name` like `net_ring0`,
    /// `args` like `iface=veth0` (may be empty). 0 or a negative errno.
    pub fn txlog_dpdk_vdev_create(name: *const c_char, args: *const c_char) -> c_int;
    /// Remove a virtual device made by `txlog_dpdk_vdev_create`.
    pub fn txlog_dpdk_vdev_remove(name: *const c_char) -> c_int;
    /// The port id of the device `name`. 0 or a negative errno.
    pub fn txlog_dpdk_port_by_name(name: *const c_char, port: *mut u16) -> c_int;
    /// A packet mbuf pool of `mbufs` buffers with `data_room_bytes` each
    /// after the headroom; NULL with `rte_errno` set.
    pub fn txlog_dpdk_pool_create(
        name: *const c_char,
        mbufs: c_uint,
        cache: c_uint,
        data_room_bytes: u16,
    ) -> *mut RteMempool;
    pub fn txlog_dpdk_pool_free(pool: *mut RteMempool);
    /// Configure one RX and one TX queue, start, set promiscuous.
    pub fn txlog_dpdk_port_start(port: u16, pool: *mut RteMempool, rx_descriptors: u16, tx_descriptors: u16) -> c_int;
    /// Stop and close a port.
    pub fn txlog_dpdk_port_close(port: u16);
    pub fn txlog_dpdk_port_mac(port: u16, mac: *mut u8) -> c_int;
    /// `count` fresh, empty mbufs, or none (non-zero return).
    pub fn txlog_dpdk_alloc_bulk(pool: *mut RteMempool, mbufs: *mut *mut RteMbuf, count: c_uint) -> c_int;
    /// Grow an mbuf's data by `bytes`; its new tail, or NULL if no room.
    pub fn txlog_dpdk_mbuf_put(mbuf: *mut RteMbuf, bytes: u16) -> *mut u8;
    /// The first segment's data and its length.
    pub fn txlog_dpdk_mbuf_data(mbuf: *const RteMbuf, bytes: *mut u16) -> *const u8;
    pub fn txlog_dpdk_mbuf_segments(mbuf: *const RteMbuf) -> u16;
    pub fn txlog_dpdk_free_bulk(mbufs: *mut *mut RteMbuf, count: c_uint);
    /// Queue up to `count` mbufs on the port's TX queue; the driver owns
    /// the ones it took (the return value), the caller the rest.
    pub fn txlog_dpdk_tx_burst(port: u16, mbufs: *mut *mut RteMbuf, count: u16) -> u16;
    /// Up to `count` received mbufs, now owned by the caller.
    pub fn txlog_dpdk_rx_burst(port: u16, mbufs: *mut *mut RteMbuf, count: u16) -> u16;
}

/// The text of DPDK error `err` (positive errno or `rte_errno` value).
pub fn strerror(err: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local
    // NUL-terminated string.
    unsafe {
        let text = txlog_dpdk_strerror(err);
        if text.is_null() {
            return format!("error {err}");
        }
        std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned()
    }
}

/// `rte_errno` of the calling thread.
pub fn errno() -> i32 {
    // SAFETY: reads a thread-local integer.
    unsafe { txlog_dpdk_errno() }
}
