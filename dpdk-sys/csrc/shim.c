/* txlog's DPDK shim: plain functions over DPDK 22.11's inline ones (mbuf,
 * burst I/O, errno), so Rust declares them by hand with no bindgen. Every
 * pointer that crosses is opaque to Rust; lengths are checked here. */
#include <errno.h>
#include <string.h>

#include <rte_bus_vdev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

int txlog_dpdk_eal_init(int argc, char **argv) { return rte_eal_init(argc, argv); }

int txlog_dpdk_errno(void) { return rte_errno; }

const char *txlog_dpdk_strerror(int err) { return rte_strerror(err); }

uint16_t txlog_dpdk_port_count(void) { return rte_eth_dev_count_avail(); }

int txlog_dpdk_vdev_create(const char *name, const char *args) { return rte_vdev_init(name, args); }

int txlog_dpdk_vdev_remove(const char *name) { return rte_vdev_uninit(name); }

int txlog_dpdk_port_by_name(const char *name, uint16_t *port) { return rte_eth_dev_get_port_by_name(name, port); }

struct rte_mempool *txlog_dpdk_pool_create(const char *name, unsigned int mbufs, unsigned int cache,
                                           uint16_t data_room_bytes) {
    return rte_pktmbuf_pool_create(name, mbufs, cache, 0, data_room_bytes + RTE_PKTMBUF_HEADROOM,
                                   (int)rte_socket_id());
}

void txlog_dpdk_pool_free(struct rte_mempool *pool) { rte_mempool_free(pool); }

/* One RX and one TX queue, started, promiscuous where the driver can. */
int txlog_dpdk_port_start(uint16_t port, struct rte_mempool *pool, uint16_t rx_descriptors,
                          uint16_t tx_descriptors) {
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof conf);
    int rc = rte_eth_dev_configure(port, 1, 1, &conf);
    if (rc < 0) return rc;
    uint16_t rx = rx_descriptors, tx = tx_descriptors;
    rc = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rx, &tx);
    if (rc < 0) return rc;
    int socket = rte_eth_dev_socket_id(port);
    rc = rte_eth_rx_queue_setup(port, 0, rx, socket < 0 ? 0 : (unsigned)socket, NULL, pool);
    if (rc < 0) return rc;
    rc = rte_eth_tx_queue_setup(port, 0, tx, socket < 0 ? 0 : (unsigned)socket, NULL);
    if (rc < 0) return rc;
    rc = rte_eth_dev_start(port);
    if (rc < 0) return rc;
    (void)rte_eth_promiscuous_enable(port);
    return 0;
}

void txlog_dpdk_port_close(uint16_t port) {
    (void)rte_eth_dev_stop(port);
    (void)rte_eth_dev_close(port);
}

int txlog_dpdk_port_mac(uint16_t port, uint8_t mac[6]) {
    struct rte_ether_addr addr;
    int rc = rte_eth_macaddr_get(port, &addr);
    if (rc == 0) memcpy(mac, addr.addr_bytes, 6);
    return rc;
}

int txlog_dpdk_alloc_bulk(struct rte_mempool *pool, struct rte_mbuf **mbufs, unsigned int count) {
    return rte_pktmbuf_alloc_bulk(pool, mbufs, count);
}

/* Room for `bytes` at the end of an empty mbuf: its data pointer, or NULL
 * when the mbuf's data room is too small. */
uint8_t *txlog_dpdk_mbuf_put(struct rte_mbuf *mbuf, uint16_t bytes) {
    return (uint8_t *)rte_pktmbuf_append(mbuf, bytes);
}

const uint8_t *txlog_dpdk_mbuf_data(const struct rte_mbuf *mbuf, uint16_t *bytes) {
    *bytes = rte_pktmbuf_data_len(mbuf);
    return rte_pktmbuf_mtod(mbuf, const uint8_t *);
}

uint16_t txlog_dpdk_mbuf_segments(const struct rte_mbuf *mbuf) { return mbuf->nb_segs; }

void txlog_dpdk_free_bulk(struct rte_mbuf **mbufs, unsigned int count) { rte_pktmbuf_free_bulk(mbufs, count); }

uint16_t txlog_dpdk_tx_burst(uint16_t port, struct rte_mbuf **mbufs, uint16_t count) {
    return rte_eth_tx_burst(port, 0, mbufs, count);
}

uint16_t txlog_dpdk_rx_burst(uint16_t port, struct rte_mbuf **mbufs, uint16_t count) {
    return rte_eth_rx_burst(port, 0, mbufs, count);
}
