/* receive.c: UDP -> TUN, for both sides, and the one IP header parser of the compiled path.
 *
 * path_udp_ready receives up to BATCH times and splits what GRO coalesced; path_datagram is the one
 * handler of a datagram, at the client and at the gateway: it parses the transport header, finds
 * the session (the side's receiver hook: at the gateway also the roaming check), applies the
 * keypair rule, opens it against the replay window, counts it, and delivers an IP packet to the
 * TUN (the gateway's hooks add the allowed-source and client-to-client checks). What it is not
 * sure about goes to Python untouched; what Python would drop it drops and counts.
 *
 * ip_packet_length and ip_addresses are the twins of protocol/ip.py's packet_length and
 * source/destination (tests/unit/test_fastpath_constants.py holds them to the same answers).
 */
#include "fastpath.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* Length of the IP packet at the start of ``pt`` (``len`` bytes, the rest is padding), or -1; also
 * -1 when the header's length is shorter than the header itself or longer than ``len``. */
Py_ssize_t ip_packet_length(const unsigned char *pt, Py_ssize_t len) {
    Py_ssize_t ip;
    if (len < 1) return -1;
    if (pt[0] >> 4 == 4 && len >= 20) {
        ip = (Py_ssize_t)(pt[2] << 8 | pt[3]);
        if (ip < 20) return -1;
    } else if (pt[0] >> 4 == 6 && len >= 40) {
        ip = 40 + (Py_ssize_t)(pt[4] << 8 | pt[5]);
    } else {
        return -1;
    }
    return ip <= len ? ip : -1;
}

/* Where the source and destination addresses of the IP header at ``pt`` are: 1, or 0 if ``len``
 * bytes are not an IPv4 or IPv6 header. */
int ip_addresses(const unsigned char *pt, Py_ssize_t len, IpAddrs *out) {
    if (len >= 20 && pt[0] >> 4 == 4) {
        *out = (IpAddrs){pt + 12, pt + 16, 4};
        return 1;
    }
    if (len >= 40 && pt[0] >> 4 == 6) {
        *out = (IpAddrs){pt + 8, pt + 24, 16};
        return 1;
    }
    return 0;
}

static int is_transport(const unsigned char *d, Py_ssize_t n) {
    return n >= TRANSPORT_MIN_LEN && d[0] == TYPE_TRANSPORT && d[1] == PROTOCOL_VERSION && !d[2] && !d[3];
}

/* One received datagram; -1 on a Python error. ``src`` is NULL on a connected socket. */
static int path_datagram(Path *p, int sock, const unsigned char *d, Py_ssize_t n,
                         const struct sockaddr_storage *src, socklen_t srclen, double now) {
    const unsigned char *h = d; /* the header in the clear */
    unsigned char head[HP_MASKED_HEAD];
    if (p->hp_hdr != NULL) { /* header protection: bytes 0..7 under the gateway-wide key */
        unsigned char m[16];
        if (n < TRANSPORT_MIN_LEN || hp_mask(p->hp_hdr, d + HP_SAMPLE_OFFSET, m) < 0)
            return pend(p, PENDING_DATAGRAM, d, n, sock, src, srclen, 0);
        for (int i = 0; i < HP_MASKED_HEAD; i++) head[i] = d[i] ^ m[i];
        h = head;
    }
    if (!is_transport(h, n)) return pend(p, PENDING_DATAGRAM, d, n, sock, src, srclen, 0);
    uint32_t index = le32(h + 4);
    Link *link = p->ops->receiver(p, index, sock, src);
    if (link == NULL && PyErr_Occurred()) return -1;
    Keys *k = link != NULL ? keyset_receiver(&link->keys, index) : NULL;
    /* Unknown, or expired as the core counts it (the core drops it): the Python core decides. */
    if (k == NULL || keys_state(k, now) == KEYS_EXPIRED || (p->hp_hdr != NULL) != (k->hp_open != NULL))
        return pend(p, PENDING_DATAGRAM, d, n, sock, src, srclen, 0);
    unsigned long long counter = le64(d + 8);
    if (k->hp_open != NULL) { /* bytes 8..15 under the session's counter key */
        unsigned char m[16];
        if (hp_mask(k->hp_open, d + HP_SAMPLE_OFFSET, m) < 0) return pend(p, PENDING_DATAGRAM, d, n, sock, src, srclen, 0);
        counter ^= le64(m);
    }
    unsigned char *pt = p->out;
    int rc = keys_open(k, d, n, pt, counter);
    if (rc == OPEN_REPLAY) {
        p->drop_replay++;
        return 0;
    }
    if (rc == OPEN_FORGED) {
        p->drop_decrypt++;
        return 0;
    }
    link->authenticated++;
    link->last_rx = now;
    link->first_unanswered = 0.0;
    if (p->ops->touch) p->ops->touch(p, link);
    Py_ssize_t len = n - TRANSPORT_MIN_LEN;
    if (len == 0) return 0; /* keepalive */
    if (pt[0] == CONTROL_MARKER) return pend(p, PENDING_OPENED, pt, len, sock, src, srclen, index);
    Py_ssize_t ip = ip_packet_length(pt, len);
    IpAddrs addrs;
    if (ip < 0 || !ip_addresses(pt, ip, &addrs)) {
        p->drop_not_ip++;
        return 0;
    }
    if (p->ops->source_allowed && !p->ops->source_allowed(link, &addrs)) {
        p->drop_source++;
        return 0;
    }
    link->rx_packets++;
    link->rx_bytes += (unsigned long long)ip;
    if (p->ops->forward) {
        int fwd = p->ops->forward(p, &addrs);
        if (fwd <= 0) return fwd;
    }
    tun_out(p, pt, (size_t)ip);
    return 0;
}

/* Socket ``sock`` of the path is readable: receive up to BATCH times, splitting what GRO coalesced.
 * After a quiet spell a lone datagram is all there is: no receive is spent finding the socket empty
 * (epoll is level-triggered, so anything more wakes the loop again). -1 on a Python error. */
int path_udp_ready(Path *p, int sock) {
    if (sock < 0 || sock >= p->nsocks) return 0;
    UdpSock *s = &p->socks[sock];
    int want_source = !p->connected;
    double now = monotonic();
    int quiet = now - s->wake >= QUIET_GAP;
    s->wake = now;
    for (int i = 0; i < BATCH; i++) {
        struct sockaddr_storage src;
        struct iovec iov = {.iov_base = p->in, .iov_len = MAX_PACKET};
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } control;
        struct msghdr msg = {0};
        if (want_source) {
            msg.msg_name = &src;
            msg.msg_namelen = sizeof src;
        }
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (s->gro) {
            msg.msg_control = control.buf;
            msg.msg_controllen = sizeof control.buf;
        }
        ssize_t n = recvmsg(s->out.fd, &msg, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            p->udp_recv_error++; /* e.g. an ICMP error reported on the socket */
            continue;
        }
        int segment = 0;
        if (s->gro)
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm))
                if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO && cm->cmsg_len >= CMSG_LEN(sizeof(int)))
                    memcpy(&segment, CMSG_DATA(cm), sizeof(int));
        const struct sockaddr_storage *from = want_source ? &src : NULL;
        int parts = 0;
        if (segment > 0 && n > segment) {
            for (ssize_t off = 0; off < n; off += segment, parts++) {
                ssize_t len = n - off < segment ? n - off : segment;
                if (path_datagram(p, sock, p->in + off, len, from, msg.msg_namelen, now) < 0) goto fail;
            }
        } else {
            parts = 1;
            if (path_datagram(p, sock, p->in, n, from, msg.msg_namelen, now) < 0) goto fail;
        }
        if (quiet && parts == 1) break;
        quiet = 0;
    }
    tun_flush(p);
    return 0;
fail:
    tun_flush(p);
    return -1;
}
