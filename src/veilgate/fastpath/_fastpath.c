/* veilgate.fastpath._fastpath: the optional compiled data path of an established client session.
 *
 * Why this is written by hand: on a 2-vCPU machine, a packet that arrives after an idle gap runs
 * every Python step 20-50x slower than back to back (cold caches); the interpreter's share of one
 * hop (wake-up, header parsing, keypair lookup, replay window, bookkeeping) is what kept the ping
 * time the tunnel adds above wireguard-go's (docs/performance.md, "Ping RTT"). No maintained
 * library seals veilgate's transport messages between a TUN device and a socket, so this module
 * does that one job in C, with OpenSSL's EVP ChaCha20-Poly1305 for the cryptography.
 *
 * What it does and what it leaves to Python:
 *  - Keys: one keypair's two AEAD contexts, its send counter and its replay window (RFC 6479's
 *    ring, as protocol/replay.py). protocol/keypair.py uses it when the module is built, so the
 *    Python core and this data path share one counter and one window.
 *  - ClientPath: the client's TUN -> UDP and UDP -> TUN loops for the keypairs the Python core
 *    hands it (the confirmed current one sends; current and previous receive). Anything else (a
 *    handshake message, an unknown index, an expired keypair, a control message, a packet while
 *    no keypair may send) is appended to ``pending`` for the Python core, untouched. What it did
 *    (packets, bytes, times) is handed over by ``take()`` so the core's timers stay exact.
 *  - Poller: epoll_wait plus those loops, so that a packet is sealed and sent, or opened and
 *    written, before any Python runs; the Python side (transport/loop.py) then does the
 *    bookkeeping after the packet has left.
 * Every parse is bounds-checked; a datagram it is not sure about goes to Python, which drops and
 * counts it as before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define TYPE_TRANSPORT 5
#define PROTOCOL_VERSION 1
#define HEADER_LEN 16
#define TAG_LEN 16
#define MIN_TRANSPORT (HEADER_LEN + TAG_LEN)
#define PADDING 16
#define CONTROL_MARKER 0xF0
#define MAX_PACKET 65535
#define BATCH 256
#define GSO_MAX_SEGMENTS 64
#define GSO_MAX_BYTES 65000
#define QUIET_GAP 0.001
#define MAX_SLOTS 16
#define REPOLL_ROUNDS 3
#define LINGER_IDLE_MS 1
#define LINGER_MAX 0.002

/* ------------------------------------------------------------------ helpers */

static double monotonic(void) {
    /* CLOCK_MONOTONIC is what Python's time.monotonic() reads on Linux: the two compare. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

static void put_le32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* ------------------------------------------------------------------ Keys */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *seal_ctx;
    EVP_CIPHER_CTX *open_ctx;
    uint32_t remote_index;
    uint32_t local_index;
    double created;
    unsigned long long send_counter;
    unsigned long long reject_after; /* REJECT_AFTER_MESSAGES */
    unsigned long long top;          /* highest authenticated counter, when have_top */
    int have_top;
    uint32_t window;                 /* bits, a power of two */
    unsigned char *bits;
} Keys;

static PyTypeObject KeysType;

static void Keys_dealloc(Keys *self) {
    if (self->seal_ctx) EVP_CIPHER_CTX_free(self->seal_ctx); /* OpenSSL clears the key schedule */
    if (self->open_ctx) EVP_CIPHER_CTX_free(self->open_ctx);
    PyMem_Free(self->bits);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Keys_init(Keys *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"send_key", "recv_key", "local_index", "remote_index", "created",
                             "reject_after_messages", "window", NULL};
    Py_buffer send_key, recv_key;
    PyObject *local_obj, *remote_obj, *reject_obj, *window_obj;
    double created;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*O!O!dO!O!", kwlist, &send_key, &recv_key, &PyLong_Type,
                                     &local_obj, &PyLong_Type, &remote_obj, &created, &PyLong_Type, &reject_obj,
                                     &PyLong_Type, &window_obj))
        return -1;
    int rc = -1;
    /* Converted here rather than by PyArg's k/K/I codes, which wrap silently on overflow. */
    unsigned long local_index = PyLong_AsUnsignedLong(local_obj);
    unsigned long remote_index = PyLong_AsUnsignedLong(remote_obj);
    unsigned long long reject_after = PyLong_AsUnsignedLongLong(reject_obj);
    unsigned long window_long = PyLong_AsUnsignedLong(window_obj);
    if (PyErr_Occurred()) goto out;
    if (window_long > (1ul << 24)) {
        PyErr_SetString(PyExc_ValueError, "replay window too large");
        goto out;
    }
    unsigned int window = (unsigned int)window_long;
    if (send_key.len != 32 || recv_key.len != 32) {
        PyErr_SetString(PyExc_ValueError, "keys are 32 bytes");
        goto out;
    }
    if (window < 64 || (window & (window - 1))) {
        PyErr_SetString(PyExc_ValueError, "the replay window is a power of two of at least 64 bits");
        goto out;
    }
    if (local_index > 0xFFFFFFFFUL || remote_index > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "indices are 32-bit");
        goto out;
    }
    if (self->seal_ctx != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Keys are initialised once");
        goto out;
    }
    self->bits = PyMem_Calloc(window / 8, 1);
    self->seal_ctx = EVP_CIPHER_CTX_new();
    self->open_ctx = EVP_CIPHER_CTX_new();
    if (self->bits == NULL || self->seal_ctx == NULL || self->open_ctx == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    static const unsigned char zero_nonce[12] = {0};
    if (EVP_EncryptInit_ex(self->seal_ctx, EVP_chacha20_poly1305(), NULL, send_key.buf, zero_nonce) != 1 ||
        EVP_DecryptInit_ex(self->open_ctx, EVP_chacha20_poly1305(), NULL, recv_key.buf, zero_nonce) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused ChaCha20-Poly1305");
        goto out;
    }
    self->local_index = (uint32_t)local_index;
    self->remote_index = (uint32_t)remote_index;
    self->created = created;
    self->reject_after = reject_after;
    self->window = window;
    self->have_top = 0;
    self->top = 0;
    rc = 0;
out:
    PyBuffer_Release(&send_key);
    PyBuffer_Release(&recv_key);
    return rc;
}

/* The replay window: check before decrypting, update after the tag verified. */
static int replay_check(const Keys *k, unsigned long long c) {
    if (c >= k->reject_after) return 0;
    if (!k->have_top || c > k->top) return 1;
    if (k->top - c >= k->window) return 0;
    uint32_t i = (uint32_t)(c & (k->window - 1));
    return !((k->bits[i >> 3] >> (i & 7)) & 1);
}

static int replay_update(Keys *k, unsigned long long c) {
    if (c >= k->reject_after) return 0;
    uint32_t mask = k->window - 1;
    uint32_t i = (uint32_t)(c & mask);
    unsigned char bit = (unsigned char)(1u << (i & 7));
    if (!k->have_top || c > k->top) {
        unsigned long long first = k->have_top ? k->top + 1 : 0;
        unsigned long long gap = c - first;
        if (gap >= k->window) {
            memset(k->bits, 0, k->window / 8);
        } else {
            for (unsigned long long x = first; x < c; x++) {
                uint32_t j = (uint32_t)(x & mask);
                k->bits[j >> 3] &= (unsigned char)~(1u << (j & 7));
            }
        }
        k->bits[i >> 3] |= bit;
        k->top = c;
        k->have_top = 1;
        return 1;
    }
    if (k->top - c >= k->window || (k->bits[i >> 3] & bit)) return 0;
    k->bits[i >> 3] |= bit;
    return 1;
}

/* Seal ``n`` bytes at ``in`` into ``out`` (room for n + 47 bytes); returns the datagram length or -1.
 * ``in`` and ``out + HEADER_LEN`` may be the same buffer. */
static Py_ssize_t keys_seal(Keys *k, const unsigned char *in, Py_ssize_t n, unsigned char *out) {
    if (k->send_counter >= k->reject_after) return -1;
    unsigned long long counter = k->send_counter++;
    Py_ssize_t padded = n + (-n & (PADDING - 1));
    unsigned char *body = out + HEADER_LEN;
    if (body != in) memmove(body, in, (size_t)n);
    memset(body + n, 0, (size_t)(padded - n));
    out[0] = TYPE_TRANSPORT;
    out[1] = PROTOCOL_VERSION;
    out[2] = out[3] = 0;
    put_le32(out + 4, k->remote_index);
    put_le64(out + 8, counter);
    unsigned char nonce[12] = {0};
    memcpy(nonce + 4, out + 8, 8);
    int len = 0, fin = 0;
    if (EVP_EncryptInit_ex(k->seal_ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_EncryptUpdate(k->seal_ctx, body, &len, body, (int)padded) != 1 ||
        EVP_EncryptFinal_ex(k->seal_ctx, body + len, &fin) != 1 ||
        EVP_CIPHER_CTX_ctrl(k->seal_ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, body + padded) != 1)
        return -1;
    return HEADER_LEN + padded + TAG_LEN;
}

enum { OPEN_OK = 0, OPEN_REPLAY = 1, OPEN_FORGED = 2 };

/* Authenticate and decrypt a transport datagram of ``n`` >= MIN_TRANSPORT bytes into ``out``. */
static int keys_open(Keys *k, const unsigned char *d, Py_ssize_t n, unsigned char *out) {
    unsigned long long counter = le64(d + 8);
    if (!replay_check(k, counter)) return OPEN_REPLAY;
    unsigned char nonce[12] = {0};
    memcpy(nonce + 4, d + 8, 8);
    int ct = (int)(n - MIN_TRANSPORT), len = 0, fin = 0;
    if (EVP_DecryptInit_ex(k->open_ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_CIPHER_CTX_ctrl(k->open_ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, (void *)(d + n - TAG_LEN)) != 1 ||
        EVP_DecryptUpdate(k->open_ctx, out, &len, d + HEADER_LEN, ct) != 1 ||
        EVP_DecryptFinal_ex(k->open_ctx, out + len, &fin) <= 0)
        return OPEN_FORGED;
    if (!replay_update(k, counter)) return OPEN_REPLAY;
    return OPEN_OK;
}

static PyObject *Keys_seal(Keys *self, PyObject *arg) {
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) return NULL;
    if (in.len > MAX_PACKET) {
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_ValueError, "payload too long");
        return NULL;
    }
    Py_ssize_t padded = in.len + (-in.len & (PADDING - 1));
    PyObject *res = PyBytes_FromStringAndSize(NULL, HEADER_LEN + padded + TAG_LEN);
    if (res == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    Py_ssize_t n = keys_seal(self, in.buf, in.len, (unsigned char *)PyBytes_AS_STRING(res));
    PyBuffer_Release(&in);
    if (n < 0) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_OverflowError, "keypair exhausted or the cipher failed");
        return NULL;
    }
    return res;
}

/* open(data) -> bytes, or 1 (replayed or too old) or 2 (forged), as an int. */
static PyObject *Keys_open(Keys *self, PyObject *arg) {
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *res = NULL;
    if (in.len < MIN_TRANSPORT) {
        if (in.len >= HEADER_LEN && !replay_check(self, le64((unsigned char *)in.buf + 8)))
            res = PyLong_FromLong(OPEN_REPLAY);
        else
            res = PyLong_FromLong(OPEN_FORGED);
        goto out;
    }
    res = PyBytes_FromStringAndSize(NULL, in.len - MIN_TRANSPORT);
    if (res == NULL) goto out;
    int rc = keys_open(self, in.buf, in.len, (unsigned char *)PyBytes_AS_STRING(res));
    if (rc != OPEN_OK) {
        Py_DECREF(res);
        res = PyLong_FromLong(rc);
    }
out:
    PyBuffer_Release(&in);
    return res;
}

static PyObject *Keys_get_top(Keys *self, void *closure) {
    (void)closure;
    if (!self->have_top) return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLongLong(self->top);
}

static PyMethodDef Keys_methods[] = {
    {"seal", (PyCFunction)Keys_seal, METH_O, "seal(payload) -> datagram (header, ciphertext, tag)"},
    {"open", (PyCFunction)Keys_open, METH_O,
     "open(datagram) -> plaintext, or 1 for a replayed or too old counter, 2 for a forgery"},
    {NULL, NULL, 0, NULL},
};

static PyObject *Keys_get_send_counter(Keys *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->send_counter);
}

/* Only forward: a counter sent again would reuse a nonce. */
static int Keys_set_send_counter(Keys *self, PyObject *value, void *closure) {
    (void)closure;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "send_counter cannot be deleted");
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (v < self->send_counter) {
        PyErr_SetString(PyExc_ValueError, "the send counter only moves forward (a nonce must not repeat)");
        return -1;
    }
    self->send_counter = v;
    return 0;
}

static PyMemberDef Keys_members[] = {
    {"created", T_DOUBLE, offsetof(Keys, created), READONLY, "time of the handshake"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Keys_getset[] = {
    {"send_counter", (getter)Keys_get_send_counter, (setter)Keys_set_send_counter,
     "next counter to send (it may only move forward)", NULL},
    {"top", (getter)Keys_get_top, NULL, "highest authenticated counter, -1 before the first", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject KeysType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "veilgate.fastpath._fastpath.Keys",
    .tp_basicsize = sizeof(Keys),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One keypair's AEAD contexts, send counter and replay window.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Keys_init,
    .tp_dealloc = (destructor)Keys_dealloc,
    .tp_methods = Keys_methods,
    .tp_members = Keys_members,
    .tp_getset = Keys_getset,
};

/* ------------------------------------------------------------------ KeySet: what a session may use */

/* The keypair a data path may seal with (or none) and the ones it may open with. */
typedef struct {
    Keys *send;
    Keys *recv[2];
} KeySet;

static void keyset_clear(KeySet *ks) {
    Py_CLEAR(ks->send);
    Py_CLEAR(ks->recv[0]);
    Py_CLEAR(ks->recv[1]);
}

/* Replace the set with ``send`` (Keys or None) and ``recv`` (a tuple of at most two Keys); -1 and
 * the set unchanged if they are not that. */
static int keyset_assign(KeySet *ks, PyObject *send, PyObject *recv) {
    Py_ssize_t n = PyTuple_GET_SIZE(recv);
    if ((send != Py_None && !PyObject_TypeCheck(send, &KeysType)) || n > 2) {
        PyErr_SetString(PyExc_TypeError, "send is Keys or None, recv a tuple of at most two Keys");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (!PyObject_TypeCheck(PyTuple_GET_ITEM(recv, i), &KeysType)) {
            PyErr_SetString(PyExc_TypeError, "recv holds Keys");
            return -1;
        }
    keyset_clear(ks);
    if (send != Py_None) ks->send = (Keys *)Py_NewRef(send);
    for (Py_ssize_t i = 0; i < n; i++) ks->recv[i] = (Keys *)Py_NewRef(PyTuple_GET_ITEM(recv, i));
    return 0;
}

static Keys *keyset_receiver(const KeySet *ks, uint32_t index) {
    for (int i = 0; i < 2; i++)
        if (ks->recv[i] != NULL && ks->recv[i]->local_index == index) return ks->recv[i];
    return NULL;
}

/* ------------------------------------------------------------------ UDP output with GSO */

typedef struct {
    int fd;
    int gso;
    unsigned long long datagrams, sends, dropped;
    int gso_failed; /* set once when the kernel refused segmentation */
} UdpOut;

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

/* ------------------------------------------------------------------ the loops both sides share */

/* A GSO run being gathered: sealed datagrams laid end to end for one destination, every one as
 * long as the first except the last, which may be shorter. */
typedef struct {
    UdpOut *u;
    const struct sockaddr *to; /* NULL on a connected socket */
    socklen_t tolen;
    PyObject *owner; /* held while the run is open: the gateway's Peer whose address ``to`` is */
    unsigned char *buf;
    size_t len, seg;
    int count;
} Run;

/* Where a packet from the TUN goes: the keys that seal it, the socket and the address. */
typedef struct {
    Keys *keys;
    UdpOut *u;
    const struct sockaddr *to;
    socklen_t tolen;
    PyObject *owner;
} Target;

static void run_flush(Run *r) {
    if (r->count) udp_send_run(r->u, r->buf, r->len, r->seg, r->count, r->to, r->tolen);
    r->len = r->seg = 0;
    r->count = 0;
    Py_CLEAR(r->owner);
}

/* Where the next datagram, of ``size`` bytes to ``t``, is sealed: the run is sent first if it cannot join. */
static unsigned char *run_slot(Run *r, const Target *t, size_t size) {
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

static void run_commit(Run *r, size_t size) {
    if (!r->count) r->seg = size;
    r->len += size;
    r->count++;
    if (size < r->seg) run_flush(r); /* a shorter datagram ends a run */
}

/* 1: seal for ``t``; 0: handed to Python (by the function); -1: a Python error. */
typedef int (*target_fn)(void *path, const unsigned char *packet, Py_ssize_t n, double now, Target *t);
/* Account for a packet sealed and queued for ``t``. */
typedef void (*sent_fn)(void *path, const Target *t, Py_ssize_t n, double now);

/* The TUN is readable: read up to BATCH packets, seal and send each where ``target`` says, in GSO
 * runs. After a quiet spell the first packet leaves at once, before the read that finds the
 * device empty. */
static int tun_loop(void *path, int fd, double *wake, unsigned char *in, unsigned char *out,
                    unsigned long long *read_errors, target_fn target, sent_fn sent) {
    double now = monotonic();
    int quiet = now - *wake >= QUIET_GAP;
    *wake = now;
    Run run = {.buf = out};
    int rc = 0;
    for (int i = 0; i < BATCH; i++) {
        ssize_t n = read(fd, in, MAX_PACKET);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) (*read_errors)++;
            break;
        }
        if (n == 0) break;
        Target t = {0};
        int r = target(path, in, n, now, &t);
        if (r < 0) {
            rc = -1;
            break;
        }
        if (r == 0) {
            run_flush(&run); /* keep the order of what is sent */
            continue;
        }
        size_t size = (size_t)(HEADER_LEN + n + (-n & (PADDING - 1)) + TAG_LEN);
        if (keys_seal(t.keys, in, n, run_slot(&run, &t, size)) < 0) break; /* the target checked the counter */
        sent(path, &t, n, now);
        run_commit(&run, size);
        if (quiet) {
            run_flush(&run);
            quiet = 0;
        }
    }
    run_flush(&run);
    return rc;
}

/* One received datagram; -1 on a Python error. ``src`` is NULL on a connected socket. */
typedef int (*datagram_fn)(void *path, int sock, const unsigned char *d, Py_ssize_t n,
                           const struct sockaddr_storage *src, socklen_t srclen, double now);

/* A UDP socket is readable: receive up to BATCH times, splitting what GRO coalesced. After a quiet
 * spell a lone datagram is all there is: no receive is spent finding the socket empty (epoll is
 * level-triggered, so anything more wakes the loop again). */
static int udp_loop(void *path, int fd, int sock, int gro, int want_source, double *wake, unsigned char *in,
                    unsigned long long *recv_errors, datagram_fn handle) {
    double now = monotonic();
    int quiet = now - *wake >= QUIET_GAP;
    *wake = now;
    for (int i = 0; i < BATCH; i++) {
        struct sockaddr_storage src;
        struct iovec iov = {.iov_base = in, .iov_len = MAX_PACKET};
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
        if (gro) {
            msg.msg_control = control.buf;
            msg.msg_controllen = sizeof control.buf;
        }
        ssize_t n = recvmsg(fd, &msg, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            (*recv_errors)++; /* e.g. an ICMP error reported on the socket */
            continue;
        }
        int segment = 0;
        if (gro)
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm))
                if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO && cm->cmsg_len >= CMSG_LEN(sizeof(int)))
                    memcpy(&segment, CMSG_DATA(cm), sizeof(int));
        const struct sockaddr_storage *from = want_source ? &src : NULL;
        int parts = 0;
        if (segment > 0 && n > segment) {
            for (ssize_t off = 0; off < n; off += segment, parts++) {
                ssize_t len = n - off < segment ? n - off : segment;
                if (handle(path, sock, in + off, len, from, msg.msg_namelen, now) < 0) return -1;
            }
        } else {
            parts = 1;
            if (handle(path, sock, in, n, from, msg.msg_namelen, now) < 0) return -1;
        }
        if (quiet && parts == 1) break;
        quiet = 0;
    }
    return 0;
}

/* The length of the IP packet at the start of an opened payload of ``len`` bytes (the rest is
 * padding), with where its source and destination addresses are; 0 if it is not an IP packet. */
static Py_ssize_t ip_packet(const unsigned char *pt, Py_ssize_t len, const unsigned char **source,
                            const unsigned char **dst, int *addrlen) {
    Py_ssize_t ip;
    if (pt[0] >> 4 == 4 && len >= 20) {
        ip = (Py_ssize_t)(pt[2] << 8 | pt[3]);
        if (ip < 20) return 0;
        *source = pt + 12;
        *dst = pt + 16;
        *addrlen = 4;
    } else if (pt[0] >> 4 == 6 && len >= 40) {
        ip = 40 + (Py_ssize_t)(pt[4] << 8 | pt[5]);
        *source = pt + 8;
        *dst = pt + 24;
        *addrlen = 16;
    } else {
        return 0;
    }
    return ip <= len ? ip : 0;
}

/* ------------------------------------------------------------------ ClientPath */

#define OUT_SIZE (2 * 65536 + 256)

typedef struct {
    PyObject_HEAD
    int tun_fd;
    int gro;
    UdpOut udp;
    double reject_after_time;
    unsigned long long rekey_after_messages;
    KeySet keys; /* sends with the confirmed current keypair; receives on it and the previous one */
    PyObject *pending; /* list of (kind, bytes) for the Python core: 0 from the TUN, 1 a datagram */
    double tun_wake, udp_wake;
    /* What happened since the last take(). */
    unsigned long long tx_packets, tx_bytes, rx_packets, rx_bytes;
    double last_tx, last_rx, first_unanswered;
    /* Counters, cumulative. */
    unsigned long long drop_decrypt, drop_replay, drop_not_ip, tun_write_error, tun_read_error, udp_recv_error;
    unsigned char *in;  /* a received datagram or a TUN packet */
    unsigned char *out; /* sealed datagrams laid end to end (a GSO run) or one opened packet */
} ClientPath;

static void ClientPath_dealloc(ClientPath *self) {
    keyset_clear(&self->keys);
    Py_CLEAR(self->pending);
    PyMem_Free(self->in);
    PyMem_Free(self->out);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ClientPath_init(ClientPath *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tun_fd", "udp_fd", "gso", "gro", "reject_after_time", "rekey_after_messages",
                             NULL};
    int tun_fd, udp_fd, gso, gro;
    double reject_after_time;
    unsigned long long rekey_after;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iippdK", kwlist, &tun_fd, &udp_fd, &gso, &gro,
                                     &reject_after_time, &rekey_after))
        return -1;
    if (self->in != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ClientPath is initialised once");
        return -1;
    }
    self->in = PyMem_Malloc(MAX_PACKET + 1);
    self->out = PyMem_Malloc(OUT_SIZE);
    self->pending = PyList_New(0);
    if (self->in == NULL || self->out == NULL || self->pending == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->tun_fd = tun_fd;
    self->gro = gro;
    self->udp.fd = udp_fd;
    self->udp.gso = gso;
    self->reject_after_time = reject_after_time;
    self->rekey_after_messages = rekey_after;
    self->tun_wake = self->udp_wake = -1.0;
    return 0;
}

static PyObject *uninitialised(void) {
    PyErr_SetString(PyExc_ValueError, "the object was not initialised");
    return NULL;
}

#define REQUIRE_INIT(self)                          \
    do {                                            \
        if ((self)->in == NULL) return uninitialised(); \
    } while (0)

static int pend(ClientPath *self, int kind, const unsigned char *d, Py_ssize_t n) {
    PyObject *item = Py_BuildValue("(iy#)", kind, (const char *)d, n);
    if (item == NULL) return -1;
    int rc = PyList_Append(self->pending, item);
    Py_DECREF(item);
    return rc;
}

static Keys *usable_sender(ClientPath *self, double now) {
    Keys *k = self->keys.send;
    if (k == NULL || now - k->created >= self->reject_after_time ||
        k->send_counter >= self->rekey_after_messages || k->send_counter >= k->reject_after)
        return NULL;
    return k;
}

static int client_target(void *path, const unsigned char *packet, Py_ssize_t n, double now, Target *t) {
    ClientPath *self = path;
    t->keys = usable_sender(self, now);
    if (t->keys == NULL) return pend(self, 0, packet, n) < 0 ? -1 : 0;
    t->u = &self->udp;
    return 1;
}

static void client_sent(void *path, const Target *t, Py_ssize_t n, double now) {
    (void)t;
    ClientPath *self = path;
    self->tx_packets++;
    self->tx_bytes += (unsigned long long)n;
    self->last_tx = now;
    if (self->first_unanswered == 0.0) self->first_unanswered = now;
}

/* TUN readable: seal and send what the keypair may send; hand the rest to Python. -1 on a Python error. */
static int client_tun_ready(ClientPath *self) {
    return tun_loop(self, self->tun_fd, &self->tun_wake, self->in, self->out, &self->tun_read_error, client_target,
                    client_sent);
}

/* One datagram from the gateway. -1 on a Python error. */
static int client_datagram(void *path, int sock, const unsigned char *d, Py_ssize_t n,
                           const struct sockaddr_storage *src, socklen_t srclen, double now) {
    (void)sock, (void)src, (void)srclen;
    ClientPath *self = path;
    if (n < MIN_TRANSPORT || d[0] != TYPE_TRANSPORT || d[1] != PROTOCOL_VERSION || d[2] || d[3])
        return pend(self, 1, d, n);
    Keys *k = keyset_receiver(&self->keys, le32(d + 4));
    if (k == NULL || now - k->created >= self->reject_after_time || k->send_counter >= k->reject_after)
        return pend(self, 1, d, n); /* expired as the core counts it: the core drops it */
    unsigned char *pt = self->out;
    int rc = keys_open(k, d, n, pt);
    if (rc == OPEN_REPLAY) {
        self->drop_replay++;
        return 0;
    }
    if (rc == OPEN_FORGED) {
        self->drop_decrypt++;
        return 0;
    }
    self->rx_packets++;
    self->last_rx = now;
    self->first_unanswered = 0.0;
    Py_ssize_t len = n - MIN_TRANSPORT;
    if (len == 0) return 0; /* keepalive */
    if (pt[0] == CONTROL_MARKER) return pend(self, 2, pt, len); /* opened: the core reads it */
    const unsigned char *source, *dst;
    int addrlen;
    Py_ssize_t ip = ip_packet(pt, len, &source, &dst, &addrlen);
    if (ip == 0) {
        self->drop_not_ip++;
        return 0;
    }
    self->rx_bytes += (unsigned long long)ip;
    if (write(self->tun_fd, pt, (size_t)ip) < 0) self->tun_write_error++;
    return 0;
}

static int client_udp_ready(ClientPath *self) {
    return udp_loop(self, self->udp.fd, 0, self->gro, 0, &self->udp_wake, self->in, &self->udp_recv_error,
                    client_datagram);
}

static PyObject *ClientPath_set_keys(ClientPath *self, PyObject *args) {
    PyObject *send, *recv;
    if (!PyArg_ParseTuple(args, "OO!", &send, &PyTuple_Type, &recv)) return NULL;
    if (keyset_assign(&self->keys, send, recv) < 0) return NULL;
    Py_RETURN_NONE;
}

/* take() -> (pending, activity or None); activity is (tx_packets, tx_bytes, last_tx, first_unanswered,
 * rx_packets, rx_bytes, last_rx), with first_unanswered the time of the first packet sent after the
 * last one received (0.0 if every send was answered). */
static PyObject *ClientPath_take(ClientPath *self, PyObject *unused) {
    (void)unused;
    REQUIRE_INIT(self);
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) return NULL;
    PyObject *pending = self->pending;
    self->pending = fresh;
    PyObject *activity;
    if (self->tx_packets || self->rx_packets) {
        activity = Py_BuildValue("(KKddKKd)", self->tx_packets, self->tx_bytes, self->last_tx,
                                 self->first_unanswered, self->rx_packets, self->rx_bytes, self->last_rx);
        if (activity == NULL) {
            Py_DECREF(pending);
            return NULL;
        }
        self->tx_packets = self->tx_bytes = self->rx_packets = self->rx_bytes = 0;
        self->first_unanswered = 0.0;
    } else {
        activity = Py_NewRef(Py_None);
    }
    PyObject *res = PyTuple_Pack(2, pending, activity);
    Py_DECREF(pending);
    Py_DECREF(activity);
    return res;
}

static PyObject *ClientPath_counters(ClientPath *self, PyObject *unused) {
    (void)unused;
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsK}", "drop-decrypt", self->drop_decrypt, "drop-replay",
                         self->drop_replay, "drop-not-ip", self->drop_not_ip, "tun-write-error",
                         self->tun_write_error, "tun-read-error", self->tun_read_error, "udp-recv-error",
                         self->udp_recv_error, "udp-send-dropped", self->udp.dropped, "udp-datagrams-out",
                         self->udp.datagrams, "udp-sends", self->udp.sends);
}

static PyObject *ClientPath_tun_ready(ClientPath *self, PyObject *unused) {
    (void)unused;
    REQUIRE_INIT(self);
    if (client_tun_ready(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *ClientPath_udp_ready(ClientPath *self, PyObject *unused) {
    (void)unused;
    REQUIRE_INIT(self);
    if (client_udp_ready(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *ClientPath_get_gso(ClientPath *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->udp.gso);
}

static PyMethodDef ClientPath_methods[] = {
    {"set_keys", (PyCFunction)ClientPath_set_keys, METH_VARARGS,
     "set_keys(send, recv): the Keys that may send (or None) and a tuple of at most two that may receive"},
    {"take", (PyCFunction)ClientPath_take, METH_NOARGS, "take() -> (pending, activity or None)"},
    {"counters", (PyCFunction)ClientPath_counters, METH_NOARGS, "cumulative drop and I/O counters"},
    {"tun_ready", (PyCFunction)ClientPath_tun_ready, METH_NOARGS, "serve a readable TUN device"},
    {"udp_ready", (PyCFunction)ClientPath_udp_ready, METH_NOARGS, "serve a readable UDP socket"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ClientPath_getset[] = {
    {"gso", (getter)ClientPath_get_gso, NULL, "whether sends still use UDP segmentation offload", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ClientPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "veilgate.fastpath._fastpath.ClientPath",
    .tp_basicsize = sizeof(ClientPath),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The client's TUN <-> UDP loops for an established session.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ClientPath_init,
    .tp_dealloc = (destructor)ClientPath_dealloc,
    .tp_methods = ClientPath_methods,
    .tp_getset = ClientPath_getset,
};

/* ------------------------------------------------------------------ Peer (a gateway's session) */

typedef struct {
    PyObject_HEAD
    KeySet keys; /* sends with the session's current keypair; receives on it and the previous one */
    int sock; /* index of the GatewayPath socket that reaches the client, -1 when not over UDP */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    unsigned char v4[4], v6[16];
    int has4, has6;
    PyObject *owner; /* the core's Session */
    int touched;
    unsigned long long tx_packets, tx_bytes, authenticated, rx_packets, rx_bytes;
    double last_tx, last_rx;
} Peer;

static PyTypeObject PeerType;

static void Peer_dealloc(Peer *self) {
    keyset_clear(&self->keys);
    Py_CLEAR(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Peer_init(Peer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"owner", NULL};
    PyObject *owner = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O", kwlist, &owner)) return -1;
    Py_XSETREF(self->owner, Py_NewRef(owner));
    self->sock = -1;
    return 0;
}

/* update(send, recv, sock, sockaddr, v4, v6): what the Python core decided for this session. */
static PyObject *Peer_update(Peer *self, PyObject *args) {
    PyObject *send, *recv, *v4, *v6;
    int sock;
    Py_buffer sa = {0};
    if (!PyArg_ParseTuple(args, "OO!iz*OO", &send, &PyTuple_Type, &recv, &sock, &sa, &v4, &v6)) return NULL;
    PyObject *res = NULL;
    if (sa.buf != NULL && (sa.len < (Py_ssize_t)sizeof(sa_family_t) || sa.len > (Py_ssize_t)sizeof(self->addr))) {
        PyErr_SetString(PyExc_ValueError, "bad socket address");
        goto out;
    }
    if ((v4 != Py_None && (!PyBytes_Check(v4) || PyBytes_GET_SIZE(v4) != 4)) ||
        (v6 != Py_None && (!PyBytes_Check(v6) || PyBytes_GET_SIZE(v6) != 16))) {
        PyErr_SetString(PyExc_ValueError, "v4 is 4 bytes, v6 16 bytes, or None");
        goto out;
    }
    if (keyset_assign(&self->keys, send, recv) < 0) goto out;
    memset(&self->addr, 0, sizeof self->addr);
    if (sa.buf != NULL && sock >= 0) {
        memcpy(&self->addr, sa.buf, (size_t)sa.len);
        self->addrlen = (socklen_t)sa.len;
        self->sock = sock;
    } else {
        self->addrlen = 0;
        self->sock = -1;
    }
    self->has4 = v4 != Py_None;
    if (self->has4) memcpy(self->v4, PyBytes_AS_STRING(v4), 4);
    self->has6 = v6 != Py_None;
    if (self->has6) memcpy(self->v6, PyBytes_AS_STRING(v6), 16);
    res = Py_NewRef(Py_None);
out:
    if (sa.buf != NULL) PyBuffer_Release(&sa);
    return res;
}

/* take() -> (tx_packets, tx_bytes, last_tx, authenticated, rx_packets, rx_bytes, last_rx) since the last. */
static PyObject *Peer_take(Peer *self, PyObject *unused) {
    (void)unused;
    PyObject *res = Py_BuildValue("(KKdKKKd)", self->tx_packets, self->tx_bytes, self->last_tx,
                                  self->authenticated, self->rx_packets, self->rx_bytes, self->last_rx);
    self->tx_packets = self->tx_bytes = self->authenticated = self->rx_packets = self->rx_bytes = 0;
    self->touched = 0;
    return res;
}

static PyMethodDef Peer_methods[] = {
    {"update", (PyCFunction)Peer_update, METH_VARARGS,
     "update(send, recv, sock, sockaddr, v4, v6): keypairs, where the client is, its assigned addresses"},
    {"take", (PyCFunction)Peer_take, METH_NOARGS, "activity since the last take()"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Peer_members[] = {
    {"owner", T_OBJECT, offsetof(Peer, owner), 0, "the core's session"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject PeerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "veilgate.fastpath._fastpath.Peer",
    .tp_basicsize = sizeof(Peer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "What a gateway's compiled data path knows of one session.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Peer_init,
    .tp_dealloc = (destructor)Peer_dealloc,
    .tp_methods = Peer_methods,
    .tp_members = Peer_members,
};

/* ------------------------------------------------------------------ GatewayPath */

#define MAX_SOCKS 4

typedef struct {
    PyObject_HEAD
    int tun_fd;
    int client_to_client;
    double reject_after_time;
    int nsocks;
    UdpOut socks[MAX_SOCKS];
    int gro[MAX_SOCKS];
    double udp_wake[MAX_SOCKS];
    double tun_wake;
    PyObject *routes;  /* dict: packed tunnel address -> Peer, kept by the Python daemon */
    PyObject *indices; /* dict: local index -> Peer, kept by the Python daemon */
    PyObject *pending; /* list of (kind, bytes, sock, address or None, index) for the Python core */
    PyObject *touched; /* list of Peers with activity since take() */
    unsigned long long drop_decrypt, drop_replay, drop_not_ip, drop_source, c2c_dropped;
    unsigned long long tun_write_error, tun_read_error, udp_recv_error;
    unsigned char *in, *out;
} GatewayPath;

static PyTypeObject GatewayPathType;

static void GatewayPath_dealloc(GatewayPath *self) {
    Py_CLEAR(self->routes);
    Py_CLEAR(self->indices);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->touched);
    PyMem_Free(self->in);
    PyMem_Free(self->out);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int GatewayPath_init(GatewayPath *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tun_fd", "routes", "indices", "client_to_client", "reject_after_time", NULL};
    int tun_fd, c2c;
    PyObject *routes, *indices;
    double reject_after_time;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO!O!pd", kwlist, &tun_fd, &PyDict_Type, &routes,
                                     &PyDict_Type, &indices, &c2c, &reject_after_time))
        return -1;
    if (self->in != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "GatewayPath is initialised once");
        return -1;
    }
    self->in = PyMem_Malloc(MAX_PACKET + 1);
    self->out = PyMem_Malloc(OUT_SIZE);
    self->pending = PyList_New(0);
    self->touched = PyList_New(0);
    if (self->in == NULL || self->out == NULL || self->pending == NULL || self->touched == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->routes = Py_NewRef(routes);
    self->indices = Py_NewRef(indices);
    self->tun_fd = tun_fd;
    self->client_to_client = c2c;
    self->reject_after_time = reject_after_time;
    self->tun_wake = -1.0;
    return 0;
}

static PyObject *GatewayPath_add_socket(GatewayPath *self, PyObject *args) {
    int fd, gso, gro;
    if (!PyArg_ParseTuple(args, "ipp", &fd, &gso, &gro)) return NULL;
    if (self->nsocks == MAX_SOCKS) {
        PyErr_SetString(PyExc_OverflowError, "too many sockets");
        return NULL;
    }
    int i = self->nsocks++;
    self->socks[i] = (UdpOut){.fd = fd, .gso = gso};
    self->gro[i] = gro;
    self->udp_wake[i] = -1.0;
    return PyLong_FromLong(i);
}

static void touch(GatewayPath *self, Peer *peer) {
    if (!peer->touched && PyList_Append(self->touched, (PyObject *)peer) == 0) peer->touched = 1;
    else if (!peer->touched) PyErr_Clear(); /* out of memory: the activity is reported with the next packet */
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

static int gw_pend(GatewayPath *self, int kind, const unsigned char *d, Py_ssize_t n, int sock,
                   const struct sockaddr_storage *sa, socklen_t salen, uint32_t index) {
    PyObject *addr = sa != NULL ? sockaddr_object(sa, salen) : Py_NewRef(Py_None);
    if (addr == NULL) return -1;
    PyObject *item = Py_BuildValue("(iy#iNk)", kind, (const char *)d, n, sock, addr, (unsigned long)index);
    if (item == NULL) return -1;
    int rc = PyList_Append(self->pending, item);
    Py_DECREF(item);
    return rc;
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
    }
    return 0;
}

static Peer *route_for(GatewayPath *self, const unsigned char *addr, Py_ssize_t n) {
    PyObject *key = PyBytes_FromStringAndSize((const char *)addr, n);
    if (key == NULL) return NULL;
    PyObject *peer = PyDict_GetItemWithError(self->routes, key);
    Py_DECREF(key);
    if (peer != NULL && !PyObject_TypeCheck(peer, &PeerType)) return NULL;
    return (Peer *)peer;
}

static int gateway_target(void *path, const unsigned char *packet, Py_ssize_t n, double now, Target *t) {
    GatewayPath *self = path;
    int version = packet[0] >> 4;
    Peer *peer = NULL;
    if (version == 4 && n >= 20)
        peer = route_for(self, packet + 16, 4);
    else if (version == 6 && n >= 40)
        peer = route_for(self, packet + 24, 16);
    if (peer == NULL && PyErr_Occurred()) return -1;
    Keys *k = peer != NULL ? peer->keys.send : NULL;
    if (k == NULL || peer->sock < 0 || peer->sock >= self->nsocks || now - k->created >= self->reject_after_time ||
        k->send_counter >= k->reject_after)
        return gw_pend(self, 0, packet, n, -1, NULL, 0, 0) < 0 ? -1 : 0;
    *t = (Target){k, &self->socks[peer->sock], (struct sockaddr *)&peer->addr, peer->addrlen, (PyObject *)peer};
    return 1;
}

static void gateway_sent(void *path, const Target *t, Py_ssize_t n, double now) {
    Peer *peer = (Peer *)t->owner;
    peer->tx_packets++;
    peer->tx_bytes += (unsigned long long)n;
    peer->last_tx = now;
    touch(path, peer);
}

static int gateway_tun_ready(GatewayPath *self) {
    return tun_loop(self, self->tun_fd, &self->tun_wake, self->in, self->out, &self->tun_read_error,
                    gateway_target, gateway_sent);
}

static int gateway_datagram(void *path, int sock, const unsigned char *d, Py_ssize_t n,
                            const struct sockaddr_storage *src, socklen_t srclen, double now) {
    GatewayPath *self = path;
    if (n < MIN_TRANSPORT || d[0] != TYPE_TRANSPORT || d[1] != PROTOCOL_VERSION || d[2] || d[3])
        return gw_pend(self, 1, d, n, sock, src, srclen, 0);
    uint32_t index = le32(d + 4);
    PyObject *key = PyLong_FromUnsignedLong(index);
    if (key == NULL) return -1;
    PyObject *obj = PyDict_GetItemWithError(self->indices, key);
    Py_DECREF(key);
    if (obj == NULL && PyErr_Occurred()) return -1;
    Peer *peer = obj != NULL && PyObject_TypeCheck(obj, &PeerType) ? (Peer *)obj : NULL;
    Keys *k = peer != NULL ? keyset_receiver(&peer->keys, index) : NULL;
    /* Unknown, expired, or from another address (the client roamed, or a probe on another path):
     * the Python core decides. */
    if (k == NULL || now - k->created >= self->reject_after_time || k->send_counter >= k->reject_after ||
        peer->sock != sock || !same_addr(&peer->addr, src))
        return gw_pend(self, 1, d, n, sock, src, srclen, 0);
    unsigned char *pt = self->out;
    int rc = keys_open(k, d, n, pt);
    if (rc == OPEN_REPLAY) {
        self->drop_replay++;
        return 0;
    }
    if (rc == OPEN_FORGED) {
        self->drop_decrypt++;
        return 0;
    }
    peer->authenticated++;
    peer->last_rx = now;
    touch(self, peer);
    Py_ssize_t len = n - MIN_TRANSPORT;
    if (len == 0) return 0; /* keepalive */
    if (pt[0] == CONTROL_MARKER) return gw_pend(self, 2, pt, len, sock, src, srclen, index);
    const unsigned char *source, *dst;
    int addrlen;
    Py_ssize_t ip = ip_packet(pt, len, &source, &dst, &addrlen);
    if (ip == 0) {
        self->drop_not_ip++;
        return 0;
    }
    if (addrlen == 4 ? !(peer->has4 && memcmp(source, peer->v4, 4) == 0)
                     : !(peer->has6 && memcmp(source, peer->v6, 16) == 0)) {
        self->drop_source++;
        return 0;
    }
    peer->rx_packets++;
    peer->rx_bytes += (unsigned long long)ip;
    if (!self->client_to_client) {
        Peer *other = route_for(self, dst, addrlen);
        if (other == NULL && PyErr_Occurred()) return -1;
        if (other != NULL) {
            self->c2c_dropped++;
            return 0;
        }
    }
    if (write(self->tun_fd, pt, (size_t)ip) < 0) self->tun_write_error++;
    return 0;
}

static int gateway_udp_ready(GatewayPath *self, int sock) {
    if (sock < 0 || sock >= self->nsocks) return 0;
    return udp_loop(self, self->socks[sock].fd, sock, self->gro[sock], 1, &self->udp_wake[sock], self->in,
                    &self->udp_recv_error, gateway_datagram);
}

static PyObject *GatewayPath_take(GatewayPath *self, PyObject *unused) {
    (void)unused;
    REQUIRE_INIT(self);
    PyObject *pending = PyList_New(0), *touched = PyList_New(0);
    if (pending == NULL || touched == NULL) {
        Py_XDECREF(pending);
        Py_XDECREF(touched);
        return NULL;
    }
    PyObject *res = PyTuple_Pack(2, self->pending, self->touched);
    if (res == NULL) {
        Py_DECREF(pending);
        Py_DECREF(touched);
        return NULL;
    }
    Py_SETREF(self->pending, pending);
    Py_SETREF(self->touched, touched);
    return res;
}

static PyObject *GatewayPath_counters(GatewayPath *self, PyObject *unused) {
    (void)unused;
    unsigned long long dropped = 0, datagrams = 0, sends = 0, gso_off = 0;
    for (int i = 0; i < self->nsocks; i++) {
        dropped += self->socks[i].dropped;
        datagrams += self->socks[i].datagrams;
        sends += self->socks[i].sends;
        gso_off += (unsigned long long)self->socks[i].gso_failed;
    }
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsKsKsKsK}", "drop-decrypt", self->drop_decrypt, "drop-replay",
                         self->drop_replay, "drop-not-ip", self->drop_not_ip, "drop-source", self->drop_source,
                         "client-to-client-dropped", self->c2c_dropped, "tun-write-error", self->tun_write_error,
                         "tun-read-error", self->tun_read_error, "udp-recv-error", self->udp_recv_error,
                         "udp-send-dropped", dropped, "udp-datagrams-out", datagrams, "udp-sends", sends,
                         "udp-gso-refused", gso_off);
}

static PyObject *GatewayPath_tun_ready(GatewayPath *self, PyObject *unused) {
    (void)unused;
    REQUIRE_INIT(self);
    if (gateway_tun_ready(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *GatewayPath_udp_ready(GatewayPath *self, PyObject *arg) {
    REQUIRE_INIT(self);
    long sock = PyLong_AsLong(arg);
    if (sock == -1 && PyErr_Occurred()) return NULL;
    if (gateway_udp_ready(self, (int)sock) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef GatewayPath_methods[] = {
    {"add_socket", (PyCFunction)GatewayPath_add_socket, METH_VARARGS, "add_socket(fd, gso, gro) -> index"},
    {"take", (PyCFunction)GatewayPath_take, METH_NOARGS, "take() -> (pending, touched peers)"},
    {"counters", (PyCFunction)GatewayPath_counters, METH_NOARGS, "cumulative drop and I/O counters"},
    {"tun_ready", (PyCFunction)GatewayPath_tun_ready, METH_NOARGS, "serve a readable TUN device"},
    {"udp_ready", (PyCFunction)GatewayPath_udp_ready, METH_O, "udp_ready(sock): serve a readable socket"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject GatewayPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "veilgate.fastpath._fastpath.GatewayPath",
    .tp_basicsize = sizeof(GatewayPath),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The gateway's TUN <-> UDP loops for established sessions.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)GatewayPath_init,
    .tp_dealloc = (destructor)GatewayPath_dealloc,
    .tp_methods = GatewayPath_methods,
};

/* ------------------------------------------------------------------ Poller */

enum { KIND_TUN = 0, KIND_UDP = 1 };

typedef struct {
    int fd;
    int kind;
    int sock;
    PyObject *path; /* a ClientPath or a GatewayPath */
} Slot;

typedef struct {
    PyObject_HEAD
    Slot slots[MAX_SLOTS];
    int nslots;
    struct epoll_event *events;
    int capacity;
} Poller;

static void Poller_dealloc(Poller *self) {
    for (int i = 0; i < self->nslots; i++) Py_CLEAR(self->slots[i].path);
    PyMem_Free(self->events);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Poller_add(Poller *self, PyObject *args) {
    int fd, kind, sock = 0;
    PyObject *path;
    if (!PyArg_ParseTuple(args, "iOi|i", &fd, &path, &kind, &sock)) return NULL;
    if (kind != KIND_TUN && kind != KIND_UDP) {
        PyErr_SetString(PyExc_ValueError, "kind is 0 (TUN) or 1 (UDP)");
        return NULL;
    }
    if (!PyObject_TypeCheck(path, &ClientPathType) && !PyObject_TypeCheck(path, &GatewayPathType)) {
        PyErr_SetString(PyExc_TypeError, "path is a ClientPath or a GatewayPath");
        return NULL;
    }
    if (PyObject_TypeCheck(path, &ClientPathType) ? ((ClientPath *)path)->in == NULL
                                                  : ((GatewayPath *)path)->in == NULL) {
        PyErr_SetString(PyExc_ValueError, "path was not initialised");
        return NULL;
    }
    for (int i = 0; i < self->nslots; i++)
        if (self->slots[i].fd == fd) {
            PyErr_Format(PyExc_KeyError, "fd %d already has a compiled reader", fd);
            return NULL;
        }
    if (self->nslots == MAX_SLOTS) {
        PyErr_SetString(PyExc_OverflowError, "too many compiled readers");
        return NULL;
    }
    self->slots[self->nslots++] = (Slot){fd, kind, sock, Py_NewRef(path)};
    Py_RETURN_NONE;
}

static PyObject *Poller_remove(Poller *self, PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    for (int i = 0; i < self->nslots; i++)
        if (self->slots[i].fd == fd) {
            Py_CLEAR(self->slots[i].path);
            self->slots[i] = self->slots[--self->nslots];
            self->slots[self->nslots].path = NULL;
            Py_RETURN_TRUE;
        }
    Py_RETURN_FALSE;
}

/* Whether a compiled reader handed something to Python that is still waiting for it. */
static int pending_waiting(const Poller *self) {
    for (int j = 0; j < self->nslots; j++) {
        PyObject *path = self->slots[j].path;
        PyObject *pending =
            Py_IS_TYPE(path, &ClientPathType) ? ((ClientPath *)path)->pending : ((GatewayPath *)path)->pending;
        if (PyList_GET_SIZE(pending) > 0) return 1;
    }
    return 0;
}

/* poll(epfd, timeout_ms, maxevents) -> [(fd, mask), ...]: epoll_wait, serving compiled readers at once.
 * Their descriptors are reported too, so that the Python reader registered for them does the
 * bookkeeping, after the packets have left. */
static PyObject *Poller_poll(Poller *self, PyObject *args) {
    int epfd, timeout, maxevents;
    if (!PyArg_ParseTuple(args, "iii", &epfd, &timeout, &maxevents)) return NULL;
    if (maxevents < 1) maxevents = 1;
    if (maxevents > self->capacity) {
        struct epoll_event *ev = PyMem_Realloc(self->events, sizeof(struct epoll_event) * (size_t)maxevents);
        if (ev == NULL) return PyErr_NoMemory();
        self->events = ev;
        self->capacity = maxevents;
    }
    int n;
    double called = monotonic(), first = 0.0;
    Py_BEGIN_ALLOW_THREADS
    n = epoll_wait(epfd, self->events, maxevents, timeout);
    Py_END_ALLOW_THREADS
    if (n < 0) {
        if (errno == EINTR) {
            if (PyErr_CheckSignals() < 0) return NULL;
            return PyList_New(0);
        }
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *res = PyList_New(0);
    if (res == NULL) return NULL;
    unsigned int reported = 0; /* compiled readers already in res (a bit per slot) */
    for (int quick = 0;;) {
        int served = 0, others = 0;
        for (int i = 0; i < n; i++) {
            int fd = self->events[i].data.fd;
            int j = 0;
            while (j < self->nslots && self->slots[j].fd != fd) j++;
            if (j < self->nslots) {
                Slot slot = self->slots[j];
                int rc;
                Py_INCREF(slot.path); /* held: a collection run by the loop could remove the slot */
                if (Py_IS_TYPE(slot.path, &ClientPathType))
                    rc = slot.kind == KIND_TUN ? client_tun_ready((ClientPath *)slot.path)
                                               : client_udp_ready((ClientPath *)slot.path);
                else
                    rc = slot.kind == KIND_TUN ? gateway_tun_ready((GatewayPath *)slot.path)
                                               : gateway_udp_ready((GatewayPath *)slot.path, slot.sock);
                Py_DECREF(slot.path);
                if (rc < 0) goto fail;
                served = 1;
                if (reported & (1u << j)) continue;
                reported |= 1u << j;
            } else {
                others = 1;
            }
            PyObject *item = Py_BuildValue("(iI)", fd, self->events[i].events);
            if (item == NULL || PyList_Append(res, item) < 0) {
                Py_XDECREF(item);
                goto fail;
            }
            Py_DECREF(item);
        }
        /* What was just written or sent is often answered soon (a packet written to the TUN comes
         * back from the host's stack; the reply to a packet sent comes back through the peer):
         * while only compiled readers are busy and nothing waits for Python, keep serving them
         * here, waiting up to LINGER_IDLE_MS for more, for LINGER_MAX at most, and never past the
         * caller's timeout. The Python callbacks then do the bookkeeping of all of it at once.
         * A caller that asked not to block (timeout 0) gets a few immediate looks only. */
        if (!served || others || pending_waiting(self)) break;
        double now = monotonic();
        if (first == 0.0) first = now;
        int wait = 0;
        if (timeout != 0 && now - first < LINGER_MAX) {
            wait = LINGER_IDLE_MS;
            if (timeout > 0 && (called + timeout * 1e-3 - now) * 1e3 < wait) wait = 0;
        } else if (++quick > REPOLL_ROUNDS) {
            break;
        }
        if (wait) {
            Py_BEGIN_ALLOW_THREADS
            n = epoll_wait(epfd, self->events, maxevents, wait);
            Py_END_ALLOW_THREADS
        } else {
            n = epoll_wait(epfd, self->events, maxevents, 0);
        }
        if (n < 0 && errno == EINTR && PyErr_CheckSignals() < 0) goto fail;
        if (n <= 0) break;
    }
    return res;
fail:
    Py_DECREF(res);
    return NULL;
}

static PyMethodDef Poller_methods[] = {
    {"add", (PyCFunction)Poller_add, METH_VARARGS,
     "add(fd, path, kind, sock=0): serve fd with a compiled reader (sock: a GatewayPath socket index)"},
    {"remove", (PyCFunction)Poller_remove, METH_O, "remove(fd) -> bool"},
    {"poll", (PyCFunction)Poller_poll, METH_VARARGS, "poll(epfd, timeout_ms, maxevents) -> [(fd, mask)]"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "veilgate.fastpath._fastpath.Poller",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "epoll_wait that serves compiled readers before returning.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)Poller_dealloc,
    .tp_methods = Poller_methods,
};

/* ------------------------------------------------------------------ module */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "veilgate's optional compiled data path", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&KeysType) < 0 || PyType_Ready(&ClientPathType) < 0 || PyType_Ready(&PeerType) < 0 ||
        PyType_Ready(&GatewayPathType) < 0 || PyType_Ready(&PollerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Keys", (PyObject *)&KeysType) < 0 ||
        PyModule_AddObjectRef(m, "ClientPath", (PyObject *)&ClientPathType) < 0 ||
        PyModule_AddObjectRef(m, "Peer", (PyObject *)&PeerType) < 0 ||
        PyModule_AddObjectRef(m, "GatewayPath", (PyObject *)&GatewayPathType) < 0 ||
        PyModule_AddObjectRef(m, "Poller", (PyObject *)&PollerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
