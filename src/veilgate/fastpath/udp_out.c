/* udp_out.c: UDP output. A datagram alone, or a run of sealed datagrams to one destination sent
 * with one sendmsg and UDP_SEGMENT (GSO), falling back to one send per datagram for good when the
 * kernel or the device refuses segmentation. send.c gathers the runs (run_slot, run_commit).
 */
#include "fastpath.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>

/* ``to`` NULL: the socket is connected. */
static void udp_send_one(UdpOut *u, const unsigned char *d, size_t n, const struct sockaddr *to, socklen_t tolen) {
    u->sends++;
    u->datagrams++;
    if (sendto(u->fd, d, n, 0, to, tolen) < 0) u->dropped++; /* buffer full or an ICMP error: lost as on the wire */
}

/* Send ``count`` datagrams of ``seg`` bytes (the last may be shorter) laid end to end. */
static void udp_send_run(UdpOut *u, const unsigned char *buf, size_t total, size_t seg, int count,
                         const struct sockaddr *to, socklen_t tolen) {
    if (count == 1 || !u->gso) {
        for (int i = 0; i < count; i++) {
            size_t len = i == count - 1 ? total - seg * (size_t)(count - 1) : seg;
            udp_send_one(u, buf + seg * (size_t)i, len, to, tolen);
        }
        return;
    }
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = total};
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {0};
    msg.msg_name = (void *)to;
    msg.msg_namelen = tolen;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t s = (uint16_t)seg;
    memcpy(CMSG_DATA(cm), &s, sizeof s);
    u->sends++;
    if (sendmsg(u->fd, &msg, 0) < 0) {
        if (errno == EIO || errno == EINVAL || errno == ENOPROTOOPT || errno == EOPNOTSUPP) {
            u->gso = 0; /* the kernel or the device cannot segment: one datagram per send from now on */
            u->gso_failed = 1;
            u->sends--;
            udp_send_run(u, buf, total, seg, count, to, tolen);
            return;
        }
        u->dropped += (unsigned long long)count;
    }
    u->datagrams += (unsigned long long)count;
}

void run_flush(Run *r) {
    if (r->count) udp_send_run(r->u, r->buf, r->len, r->seg, r->count, r->to, r->tolen);
    r->len = r->seg = 0;
    r->count = 0;
    Py_CLEAR(r->owner);
}

/* Where the next datagram, of ``size`` bytes to ``t``, is sealed: the run is sent first if it cannot join. */
unsigned char *run_slot(Run *r, const Target *t, size_t size) {
    if (r->count && (r->u != t->u || r->owner != t->owner || size > r->seg || r->count >= GSO_MAX_SEGMENTS ||
                     r->len + size > GSO_MAX_BYTES))
        run_flush(r);
    if (!r->count) {
        r->u = t->u;
        r->to = t->to;
        r->tolen = t->tolen;
        Py_XINCREF(t->owner);
        Py_XSETREF(r->owner, t->owner);
    }
    return r->buf + r->len;
}

void run_commit(Run *r, size_t size) {
    if (!r->count) r->seg = size;
    r->len += size;
    r->count++;
    if (size < r->seg) run_flush(r); /* a shorter datagram ends a run */
}
