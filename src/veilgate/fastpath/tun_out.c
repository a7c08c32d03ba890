/* tun_out.c: TUN output, for both sides.
 *
 * Without the virtio-net header each opened IP packet is one write(). With it (IFF_VNET_HDR), the
 * TCP segments of one flow that arrive in order within one receive batch are coalesced into one
 * packet before the write, as the kernel's GRO would have coalesced them on a network device: the
 * header then says GSO TCPV4 or TCPV6 with the first segment's payload as the segment size and a
 * partial checksum, and the kernel routes, filters, NATs and delivers the whole run as one packet
 * (segmenting it again only where a device needs that). This is what a write per packet cost on
 * the gateway: the forwarding path, once per 1420-byte packet.
 *
 * The rules are GRO's (net/ipv4/tcp_offload.c, tcp_gro_receive): same addresses, ports and
 * acknowledgement number, the same IP header fields (TOS or traffic class, TTL or hop limit, the
 * DF bit), equal TCP options, ACK or ACK|PSH only, the next sequence number, no segment longer
 * than the first, and a shorter segment or PSH ends the packet. IPv4 with options or fragments is
 * written as it is. A segment whose TCP checksum is wrong is never merged (the partial checksum
 * would make it right): it is written as it came, and the receiver drops it.
 */
#include "fastpath.h"

#include <linux/virtio_net.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* The ones'-complement sum of ``n`` bytes, in the host's byte order (RFC 1071: storing the folded
 * sum as it is gives the bytes in network order), added to ``s``. */
static uint64_t sum_bytes(uint64_t s, const unsigned char *d, size_t n) {
    while (n >= 4) {
        uint32_t w;
        memcpy(&w, d, 4);
        s += w;
        d += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t w;
        memcpy(&w, d, 2);
        s += w;
        d += 2;
        n -= 2;
    }
    if (n) {
        unsigned char last[2] = {d[0], 0};
        uint16_t w;
        memcpy(&w, last, 2);
        s += w;
    }
    return s;
}

static uint16_t fold(uint64_t s) {
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

/* The TCP pseudo header's sum: addresses, protocol, ``tcplen``. */
static uint64_t pseudo_sum(const unsigned char *ip, int v6, size_t tcplen) {
    const unsigned char *src = v6 ? ip + 8 : ip + 12;
    int alen = v6 ? 16 : 4;
    unsigned char tail[4] = {0, IPPROTO_TCP, (unsigned char)(tcplen >> 8), (unsigned char)tcplen};
    return sum_bytes(sum_bytes(0, src, (size_t)alen * 2), tail, 4);
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void write_vnet(Path *p, const struct virtio_net_hdr *h, const unsigned char *pt, size_t n) {
    struct iovec iov[2] = {{.iov_base = (void *)h, .iov_len = VNET_HDR_LEN}, {.iov_base = (void *)pt, .iov_len = n}};
    p->tun_writes++;
    if (writev(p->tun_fd, iov, 2) < 0) p->tun_write_error++;
}

/* Write slot ``i`` and free it. */
static void slot_flush(Path *p, int i) {
    GroSlot *g = &p->gro[i];
    unsigned char *pt = g->buf + VNET_HDR_LEN;
    struct virtio_net_hdr h = {0};
    if (g->count > 1) {
        if (g->v6) {
            pt[4] = (unsigned char)((g->len - 40) >> 8);
            pt[5] = (unsigned char)(g->len - 40);
        } else {
            pt[2] = (unsigned char)(g->len >> 8);
            pt[3] = (unsigned char)g->len;
            pt[10] = pt[11] = 0;
            uint16_t c = (uint16_t)~fold(sum_bytes(0, pt, (size_t)g->iphl));
            memcpy(pt + 10, &c, 2);
        }
        /* CHECKSUM_PARTIAL: the pseudo header's sum, not inverted; the kernel adds the rest. */
        uint16_t c = fold(pseudo_sum(pt, g->v6, g->len - (size_t)g->iphl));
        memcpy(pt + g->iphl + 16, &c, 2);
        h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        h.gso_type = g->v6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4;
        h.hdr_len = (uint16_t)(g->iphl + g->tcphl);
        h.gso_size = (uint16_t)g->gso;
        h.csum_start = (uint16_t)g->iphl;
        h.csum_offset = 16;
    }
    write_vnet(p, &h, pt, g->len);
    unsigned char *freed = g->buf; /* each slot keeps a buffer: the last one moves into the gap */
    if (i != --p->ngro) {
        p->gro[i] = p->gro[p->ngro];
        p->gro[p->ngro].buf = freed;
    }
}

void tun_flush(Path *p) {
    while (p->ngro) slot_flush(p, p->ngro - 1);
}

/* The IP and TCP header lengths of a segment GRO may merge (ACK or ACK|PSH, a payload, no IPv4
 * options or fragments, a valid checksum), or 0. */
static int candidate(const unsigned char *pt, size_t n, int *iphl, int *tcphl, int *v6) {
    if (n < 40) return 0;
    if (pt[0] == 0x45) {
        if (pt[9] != IPPROTO_TCP || (pt[6] & 0x3f) || pt[7]) return 0; /* MF or a fragment offset */
        *iphl = 20, *v6 = 0;
    } else if (pt[0] >> 4 == 6) {
        if (pt[6] != IPPROTO_TCP || n < 60) return 0;
        *iphl = 40, *v6 = 1;
    } else {
        return 0;
    }
    const unsigned char *th = pt + *iphl;
    *tcphl = (th[12] >> 4) * 4;
    if (*tcphl < 20 || n <= (size_t)(*iphl + *tcphl)) return 0;
    if (th[13] != 0x10 && th[13] != 0x18) return 0; /* ACK, or ACK|PSH */
    size_t tcplen = n - (size_t)*iphl;
    return fold(sum_bytes(pseudo_sum(pt, *v6, tcplen), th, tcplen)) == 0xffff;
}

/* Whether segment ``pt`` continues slot ``g``'s flow (not yet whether it may join). */
static int same_flow(const GroSlot *g, const unsigned char *pt, int v6) {
    const unsigned char *q = g->buf + VNET_HDR_LEN;
    if (g->v6 != v6) return 0;
    const unsigned char *a = pt + (v6 ? 8 : 12), *b = q + (v6 ? 8 : 12);
    int alen = v6 ? 32 : 8;
    /* addresses, then ports, then the acknowledgement number */
    return memcmp(a, b, (size_t)alen) == 0 && memcmp(pt + g->iphl, q + g->iphl, 4) == 0 &&
           memcmp(pt + g->iphl + 8, q + g->iphl + 8, 4) == 0;
}

static int may_join(const GroSlot *g, const unsigned char *pt, int tcphl, size_t payload) {
    const unsigned char *q = g->buf + VNET_HDR_LEN;
    if (g->closed || tcphl != g->tcphl || payload > g->gso || g->len + payload > GRO_MAX) return 0;
    if (be32(pt + g->iphl + 4) != g->next_seq) return 0;
    if (g->v6) {
        if (pt[0] != q[0] || pt[1] >> 4 != q[1] >> 4 || pt[7] != q[7]) return 0; /* traffic class, hop limit */
    } else if (pt[1] != q[1] || pt[6] >> 5 != q[6] >> 5 || pt[8] != q[8]) {
        return 0; /* TOS, the DF and reserved bits, TTL */
    }
    return memcmp(pt + g->iphl + 20, q + g->iphl + 20, (size_t)tcphl - 20) == 0; /* the options */
}

/* An opened IP packet of ``n`` bytes for the TUN. */
void tun_out(Path *p, const unsigned char *pt, size_t n) {
    if (!p->vnet) {
        p->tun_writes++;
        if (write(p->tun_fd, pt, n) < 0) p->tun_write_error++;
        return;
    }
    int iphl, tcphl, v6;
    if (!candidate(pt, n, &iphl, &tcphl, &v6)) {
        tun_flush(p); /* keeps the order of a flow: its FIN after its data */
        struct virtio_net_hdr h = {0};
        write_vnet(p, &h, pt, n);
        return;
    }
    size_t payload = n - (size_t)(iphl + tcphl);
    int psh = pt[iphl + 13] & 0x08;
    for (int i = 0; i < p->ngro; i++) {
        GroSlot *g = &p->gro[i];
        if (!same_flow(g, pt, v6)) continue;
        if (!may_join(g, pt, tcphl, payload)) {
            slot_flush(p, i);
            break;
        }
        memcpy(g->buf + VNET_HDR_LEN + g->len, pt + iphl + tcphl, payload);
        g->len += payload;
        g->count++;
        g->next_seq += (uint32_t)payload;
        p->tun_coalesced++;
        if (psh) g->buf[VNET_HDR_LEN + iphl + 13] |= 0x08;
        if (psh || payload < g->gso) g->closed = 1;
        return;
    }
    if (p->ngro == GRO_SLOTS) slot_flush(p, 0);
    GroSlot *g = &p->gro[p->ngro++];
    memcpy(g->buf + VNET_HDR_LEN, pt, n);
    g->len = n;
    g->gso = payload;
    g->iphl = iphl, g->tcphl = tcphl, g->v6 = v6;
    g->count = 1;
    g->closed = psh != 0;
    g->next_seq = be32(pt + iphl + 4) + (uint32_t)payload;
}
