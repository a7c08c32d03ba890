/* path.c: what the client's and the gateway's compiled paths share (struct Path): the buffers, the
 * UDP sockets, the list of Pending entries for the Python core and how it is taken, the drop and
 * I/O counters, and a session's Activity since the last take(). client.c and gateway.c add the
 * side's hooks (PathOps) and Python type.
 */
#include "fastpath.h"

#include <netdb.h>

/* Allocate the buffers and the pending list; -1 with an exception set. */
int path_init(Path *p, const PathOps *ops, int tun_fd, int vnet) {
    if (p->in != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a path is initialised once");
        return -1;
    }
    p->pending = PyList_New(0);
    p->out = PyMem_Malloc(OUT_SIZE);
    p->in = PyMem_Malloc(MAX_PACKET + VNET_HDR_LEN + 1);
    if (p->in == NULL || p->out == NULL || p->pending == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; vnet && i < GRO_SLOTS; i++)
        if ((p->gro[i].buf = PyMem_Malloc(VNET_HDR_LEN + GRO_MAX)) == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    p->ops = ops;
    p->tun_fd = tun_fd;
    p->vnet = vnet;
    p->tun_wake = -1.0;
    return 0;
}

void path_clear(Path *p) {
    Py_CLEAR(p->pending);
    PyMem_Free(p->in);
    PyMem_Free(p->out);
    p->in = p->out = NULL;
    for (int i = 0; i < GRO_SLOTS; i++) {
        PyMem_Free(p->gro[i].buf);
        p->gro[i].buf = NULL;
    }
    if (p->hp_hdr != NULL) EVP_CIPHER_CTX_free(p->hp_hdr);
    p->hp_hdr = NULL;
}

/* The path's next socket; its number, or -1 with an exception set. */
int path_add_socket(Path *p, int fd, int gso, int gro) {
    if (p->nsocks == MAX_SOCKS) {
        PyErr_SetString(PyExc_OverflowError, "too many sockets");
        return -1;
    }
    int i = p->nsocks++;
    p->socks[i] = (UdpSock){.out = {.fd = fd, .gso = gso}, .gro = gro, .wake = -1.0};
    return i;
}

static PyObject *sockaddr_object(const struct sockaddr_storage *sa, socklen_t len) {
    /* As Python's socket module reports it (getnameinfo, numeric), so the daemon compares alike. */
    char host[NI_MAXHOST];
    if (len == 0) Py_RETURN_NONE;
    if (getnameinfo((const struct sockaddr *)sa, len, host, sizeof host, NULL, 0, NI_NUMERICHOST) != 0)
        Py_RETURN_NONE;
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo), a->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* Hand ``n`` bytes at ``d`` to the Python core as a Pending entry; ``src`` NULL: no address (None).
 * -1 on a Python error. */
int pend(Path *p, int kind, const unsigned char *d, Py_ssize_t n, int sock, const struct sockaddr_storage *src,
         socklen_t srclen, uint32_t index) {
    PyObject *entry = PyStructSequence_New(&PendingType);
    if (entry == NULL) return -1;
    PyObject *fields[] = {
        PyLong_FromLong(kind),
        PyBytes_FromStringAndSize((const char *)d, n),
        PyLong_FromLong(sock),
        src != NULL ? sockaddr_object(src, srclen) : Py_NewRef(Py_None),
        PyLong_FromUnsignedLong(index),
    };
    int rc = 0;
    for (Py_ssize_t i = 0; i < (Py_ssize_t)(sizeof fields / sizeof *fields); i++) {
        if (fields[i] == NULL) rc = -1;
        PyStructSequence_SET_ITEM(entry, i, fields[i]); /* a NULL field is skipped when the entry goes */
    }
    if (rc == 0) rc = PyList_Append(p->pending, entry);
    Py_DECREF(entry);
    return rc;
}

/* The pending entries so far, replaced by an empty list. */
PyObject *path_take_pending(Path *p) {
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) return NULL;
    PyObject *pending = p->pending;
    p->pending = fresh;
    return pending;
}

/* Cumulative drop and I/O counters, the sockets' summed. */
PyObject *path_counters(const Path *p) {
    unsigned long long dropped = 0, datagrams = 0, sends = 0;
    for (int i = 0; i < p->nsocks; i++) {
        dropped += p->socks[i].out.dropped;
        datagrams += p->socks[i].out.datagrams;
        sends += p->socks[i].out.sends;
    }
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsKsKsK}", "drop-decrypt", p->drop_decrypt, "drop-replay", p->drop_replay,
                         "drop-not-ip", p->drop_not_ip, "tun-write-error", p->tun_write_error, "tun-read-error",
                         p->tun_read_error, "udp-recv-error", p->udp_recv_error, "udp-send-dropped", dropped,
                         "udp-datagrams-out", datagrams, "udp-sends", sends, "tun-writes", p->tun_writes,
                         "tun-packets-coalesced", p->tun_coalesced);
}

/* What ``link`` did since the last take(), as an Activity; its counts start again from zero. */
PyObject *link_take(Link *link) {
    PyObject *a = PyStructSequence_New(&ActivityType);
    if (a == NULL) return NULL;
    PyObject *fields[] = {
        PyLong_FromUnsignedLongLong(link->tx_packets),
        PyLong_FromUnsignedLongLong(link->tx_bytes),
        PyFloat_FromDouble(link->last_tx),
        PyFloat_FromDouble(link->first_unanswered),
        PyLong_FromUnsignedLongLong(link->authenticated),
        PyLong_FromUnsignedLongLong(link->rx_packets),
        PyLong_FromUnsignedLongLong(link->rx_bytes),
        PyFloat_FromDouble(link->last_rx),
    };
    int failed = 0;
    for (Py_ssize_t i = 0; i < (Py_ssize_t)(sizeof fields / sizeof *fields); i++) {
        failed |= fields[i] == NULL;
        PyStructSequence_SET_ITEM(a, i, fields[i]);
    }
    if (failed) {
        Py_DECREF(a);
        return NULL;
    }
    link->tx_packets = link->tx_bytes = link->authenticated = link->rx_packets = link->rx_bytes = 0;
    link->first_unanswered = 0.0;
    return a;
}

PyObject *path_uninitialised(void) {
    PyErr_SetString(PyExc_ValueError, "the object was not initialised");
    return NULL;
}

/* tun_ready(), a method of both ClientPath and GatewayPath: serve a readable TUN device. */
PyObject *Path_tun_ready(PyObject *self, PyObject *unused) {
    (void)unused;
    REQUIRE_INIT(self);
    if (path_tun_ready(PATH_OF(self)) < 0) return NULL;
    Py_RETURN_NONE;
}

/* protect(header_key): from now on received transport datagrams carry header protection under this
 * gateway-wide key (docs/protocol.md 14); the sessions' Keys carry their own counter keys. */
PyObject *Path_protect(PyObject *self, PyObject *arg) {
    REQUIRE_INIT(self);
    Path *p = PATH_OF(self);
    Py_buffer key;
    if (PyObject_GetBuffer(arg, &key, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *res = NULL;
    if (key.len != HP_KEY_LEN) {
        PyErr_SetString(PyExc_ValueError, "the header-protection key is 16 bytes");
    } else if (p->hp_hdr != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "header protection is turned on once");
    } else if ((p->hp_hdr = hp_new(key.buf)) == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused AES-128-ECB");
    } else {
        res = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&key);
    return res;
}
