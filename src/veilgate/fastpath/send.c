/* send.c: TUN -> UDP, for both sides. Each packet read from the TUN goes where the side's target
 * hook says (the client: its one session; the gateway: the session its destination is routed to)
 * and is sealed straight into a GSO run (udp_out.c); a packet no keypair may send goes to Python
 * as a PENDING_TUN entry, in order. With the TUN's virtio-net header (IFF_VNET_HDR) each read
 * starts with it; the packet follows.
 */
#include "fastpath.h"

#include <errno.h>
#include <linux/virtio_net.h>
#include <string.h>
#include <unistd.h>

/* Account for a packet sealed and queued for ``link``. */
static void link_sent(Link *link, Py_ssize_t n, double now) {
    link->tx_packets++;
    link->tx_bytes += (unsigned long long)n;
    link->last_tx = now;
    if (link->unanswered && link->first_unanswered == 0.0) link->first_unanswered = now;
}

/* The TUN is readable: read up to BATCH packets, seal and send each where the target hook says, in
 * GSO runs. After a quiet spell the first packet leaves at once, before the read that finds the
 * device empty. -1 on a Python error. */
int path_tun_ready(Path *p) {
    double now = monotonic();
    int quiet = now - p->tun_wake >= QUIET_GAP;
    p->tun_wake = now;
    Run run = {.buf = p->out};
    int rc = 0;
    size_t hdr = p->vnet ? VNET_HDR_LEN : 0;
    for (int i = 0; i < BATCH; i++) {
        ssize_t n = read(p->tun_fd, p->in, MAX_PACKET + hdr);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) p->tun_read_error++;
            break;
        }
        if (n == 0) break;
        const unsigned char *pkt = p->in + hdr;
        if (hdr) {
            /* No offload was asked for (TUNSETOFFLOAD): a GSO packet or a partial checksum here
             * is the kernel's mistake, counted and dropped rather than sent unfinished. */
            struct virtio_net_hdr h;
            memcpy(&h, p->in, sizeof h);
            n -= (ssize_t)hdr;
            if (n <= 0 || h.gso_type != VIRTIO_NET_HDR_GSO_NONE || (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)) {
                p->tun_read_error++;
                continue;
            }
        }
        Target t = {0};
        int r = p->ops->target(p, pkt, n, now, &t);
        if (r == 0) {
            run_flush(&run); /* keep the order of what is sent */
            /* No socket: the client's entries name its one (0), the gateway's none. */
            r = pend(p, PENDING_TUN, pkt, n, p->connected ? 0 : ROUTE_NONE, NULL, 0, 0);
            if (r == 0) continue;
        }
        if (r < 0) {
            rc = -1;
            break;
        }
        size_t size = (size_t)(TRANSPORT_HEADER_LEN + n + (-n & (PADDING_MULTIPLE - 1)) + TAGLEN);
        if (keys_seal(t.keys, pkt, n, run_slot(&run, &t, size)) < 0) break; /* the target checked the counter */
        link_sent(t.link, n, now);
        if (p->ops->touch) p->ops->touch(p, t.link);
        run_commit(&run, size);
        if (quiet) {
            run_flush(&run);
            quiet = 0;
        }
    }
    run_flush(&run);
    return rc;
}
