/* veilgate.fastpath._fastpath: the one private header of the optional compiled data path.
 *
 * Why the data path is written by hand: on a 2-vCPU machine, a packet that arrives after an idle
 * gap runs every Python step 20-50x slower than back to back (cold caches); the interpreter's
 * share of one hop (wake-up, header parsing, keypair lookup, replay window, bookkeeping) is what
 * kept the ping time the tunnel adds above wireguard-go's (docs/performance.md, "Ping RTT"). No
 * maintained library seals veilgate's transport messages between a TUN device and a socket, so
 * this module does that one job in C, with OpenSSL's EVP ChaCha20-Poly1305 for the cryptography.
 *
 * The files, split as Linux's WireGuard driver splits its own:
 *   keys.c     Keys (one keypair: AEAD contexts, send counter, replay window), the keypair rule
 *              (keys_state) and KeySet (the keypairs one session may use)
 *   udp_out.c  UDP output: single sends and GSO runs
 *   send.c     the TUN -> UDP loop, shared by both sides
 *   receive.c  the UDP -> TUN loop, the one transport datagram handler and the one IP header parser
 *   tun_out.c  TUN output: one packet per write, or, with the TUN's virtio-net header (IFF_VNET_HDR),
 *              the TCP segments of one flow coalesced into one packet the kernel takes as GRO's
 *   path.c     what ClientPath and GatewayPath share: buffers, pending entries, counters, take()
 *   client.c   ClientPath: the client's established UDP session
 *   peer.c     Peer: what the gateway's compiled path knows of one session
 *   gateway.c  GatewayPath: the gateway's sessions, routes and sockets
 *   poller.c   Poller: epoll_wait that serves the compiled readers before any Python runs
 *   module.c   module init, the named structures Activity and Pending, the exported constants
 * Anything the compiled path is not sure about (a handshake, an unknown index, an expired keypair,
 * a control message, a roamed client) goes to the Python core untouched, as a Pending entry.
 */
#ifndef VEILGATE_FASTPATH_H
#define VEILGATE_FASTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <netinet/in.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

/* ------------------------------------------------------------------ the wire
 * Twins of protocol/messages.py, protocol/crypto.py, protocol/constants.py and protocol/control.py,
 * exported by module.c; tests/unit/test_fastpath_constants.py holds each equal to its twin. */

#define TYPE_TRANSPORT 5
#define PROTOCOL_VERSION 1
#define TRANSPORT_HEADER_LEN 16 /* type, version, two reserved bytes, receiver index (4), counter (8) */
#define TAGLEN 16
#define TRANSPORT_MIN_LEN (TRANSPORT_HEADER_LEN + TAGLEN) /* a keepalive */
#define PADDING_MULTIPLE 16
#define HP_KEY_LEN 16    /* header protection: AES-128-ECB over a sample (docs/protocol.md 14) */
#define HP_SAMPLE_OFFSET 16 /* the sample: the first 16 bytes of the AEAD output */
#define HP_MASKED_HEAD 8 /* bytes 0..7 masked with the gateway-wide key, 8..15 with the session's */
#define CONTROL_MARKER 0xF0 /* first byte of an opened control message (an IP packet starts 0x4_ or 0x6_) */

/* ------------------------------------------------------------------ keypair limits (WireGuard's) */

#define REJECT_AFTER_TIME 180.0
#define REKEY_AFTER_MESSAGES (1ULL << 60)
#define REJECT_AFTER_MESSAGES (~0ULL - (1ULL << 13)) /* 2**64 - 2**13 - 1 */
#define REPLAY_WINDOW 8192                           /* bits, a power of two */

/* ------------------------------------------------------------------ I/O limits */

#define MAX_PACKET 65535
#define BATCH 256            /* packets or receives per readiness, at most */
#define GSO_MAX_SEGMENTS 64
#define GSO_MAX_BYTES 65000
#define OUT_SIZE (2 * 65536 + 256) /* a GSO run, or one opened packet */
#define QUIET_GAP 0.001      /* seconds without a wake-up after which a lone packet is all there is */
#define MAX_SOCKS 4          /* UDP sockets of one path */
#define MAX_SLOTS 16         /* compiled readers of one Poller */
#define REPOLL_ROUNDS 3
#define LINGER_IDLE_MS 1
#define LINGER_MAX 0.002

/* ------------------------------------------------------------------ the TUN's virtio-net header
 * With IFF_VNET_HDR every packet read from or written to the TUN follows a struct virtio_net_hdr
 * (include/uapi/linux/virtio_net.h, in the host's byte order). The daemons do not ask the kernel
 * for offloads on reads (TUNSETOFFLOAD), so what is read carries no GSO type and no partial
 * checksum; what is written may be a coalesced TCP packet (tun_out.c). */

#define VNET_HDR_LEN 10
#define GRO_SLOTS 8      /* TCP flows coalesced at once */
#define GRO_MAX 65535    /* an IP packet's largest size */

/* ------------------------------------------------------------------ kinds (exported by module.c) */

/* A Pending entry's kind: what the compiled path hands to the Python core. */
enum {
    PENDING_TUN = 0,      /* an IP packet read from the TUN that no keypair could send */
    PENDING_DATAGRAM = 1, /* a datagram the compiled path did not handle, untouched */
    PENDING_OPENED = 2,   /* an authenticated control message, opened (counted as received) */
};

/* What a Poller slot serves. */
enum { KIND_TUN = 0, KIND_UDP = 1 };

/* Peer.update's socket number for a session not reached over UDP; a gateway's TUN entries carry it. */
#define ROUTE_NONE (-1)

/* Keys.open's answers (besides the plaintext). */
enum { OPEN_OK = 0, OPEN_REPLAY = 1, OPEN_FORGED = 2 };

/* The keypair rule (keys_state): what a keypair may still do. */
enum {
    KEYS_USABLE = 0,    /* seal and open */
    KEYS_REKEY_DUE = 1, /* the initiator rekeys before sending more: open, and the responder seals */
    KEYS_EXPIRED = 2,   /* too old or out of counters: the Python core drops what it gets */
};

#pragma GCC visibility push(hidden) /* the module exports one symbol: PyInit__fastpath */

/* ------------------------------------------------------------------ small helpers */

static inline double monotonic(void) {
    /* CLOCK_MONOTONIC is what Python's time.monotonic() reads on Linux: the two compare. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t le64(const unsigned char *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

/* ------------------------------------------------------------------ keys.c */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *seal_ctx;
    EVP_CIPHER_CTX *open_ctx;
    EVP_CIPHER_CTX *hp_hdr, *hp_seal, *hp_open; /* header protection, when on: AES-128-ECB */
    uint32_t remote_index;
    uint32_t local_index;
    double created;
    unsigned long long send_counter;
    unsigned long long top; /* highest authenticated counter, when have_top */
    int have_top;
    unsigned char bits[REPLAY_WINDOW / 8]; /* RFC 6479's ring, as protocol/replay.py */
} Keys;

/* The keypair a session may seal with (or none) and the ones it may open with. */
typedef struct {
    Keys *send;
    Keys *recv[2];
} KeySet;

extern PyTypeObject KeysType;

int keys_state(const Keys *k, double now);
Py_ssize_t keys_seal(Keys *k, const unsigned char *in, Py_ssize_t n, unsigned char *out);
int keys_open(Keys *k, const unsigned char *d, Py_ssize_t n, unsigned char *out, unsigned long long counter);
EVP_CIPHER_CTX *hp_new(const unsigned char *key);
int hp_mask(EVP_CIPHER_CTX *ctx, const unsigned char *sample, unsigned char *mask);
void keyset_clear(KeySet *ks);
int keyset_assign(KeySet *ks, PyObject *send, PyObject *recv);
Keys *keyset_receiver(const KeySet *ks, uint32_t index);

/* ------------------------------------------------------------------ udp_out.c */

typedef struct {
    int fd;
    int gso;
    unsigned long long datagrams, sends, dropped;
    int gso_failed; /* set once when the kernel refused segmentation */
} UdpOut;

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

/* One session as either side's data path sees it: its keys and what it did since the last take(). */
typedef struct {
    KeySet keys; /* sends with the confirmed current keypair; receives on it and the previous one */
    int unanswered; /* keeps first_unanswered (the client); a gateway's peers report 0.0 */
    unsigned long long tx_packets, tx_bytes, authenticated, rx_packets, rx_bytes;
    double last_tx, first_unanswered, last_rx;
} Link;

/* Where a packet from the TUN goes: the keys that seal it, the session, the socket and the address. */
typedef struct {
    Keys *keys;
    Link *link;
    UdpOut *u;
    const struct sockaddr *to; /* NULL on a connected socket */
    socklen_t tolen;
    PyObject *owner; /* the gateway's Peer (runs to one peer share an address), NULL at the client */
} Target;

void run_flush(Run *r);
unsigned char *run_slot(Run *r, const Target *t, size_t size);
void run_commit(Run *r, size_t size);

/* ------------------------------------------------------------------ receive.c: IP headers */

/* Where an IP header's addresses are. */
typedef struct {
    const unsigned char *source, *destination;
    int addrlen; /* 4 or 16 */
} IpAddrs;

Py_ssize_t ip_packet_length(const unsigned char *pt, Py_ssize_t len);
int ip_addresses(const unsigned char *pt, Py_ssize_t len, IpAddrs *out);

/* ------------------------------------------------------------------ path.c: what both sides share */

typedef struct Path Path;

/* What a side adds to the shared loops. Hooks left NULL do nothing (the client's). */
typedef struct {
    /* Where a packet from the TUN goes: 1 seal for ``t``, 0 hand it to Python, -1 a Python error. */
    int (*target)(Path *p, const unsigned char *packet, Py_ssize_t n, double now, Target *t);
    /* The session whose keys may open a transport datagram to ``index`` from ``src`` on ``sock``;
     * NULL for Python to decide (with an exception set: a Python error). */
    Link *(*receiver)(Path *p, uint32_t index, int sock, const struct sockaddr_storage *src);
    /* ``link`` did something since the last take(). */
    void (*touch)(Path *p, Link *link);
    /* Whether ``link`` may send IP packets from this source address. */
    int (*source_allowed)(const Link *link, const IpAddrs *ip);
    /* Whether a packet from a session may go to the TUN: 1 yes, 0 dropped (and counted), -1 error. */
    int (*forward)(Path *p, const IpAddrs *ip);
} PathOps;

typedef struct {
    UdpOut out;
    int gro;
    double wake;
} UdpSock;

/* A coalesced TCP packet being gathered for the TUN (tun_out.c). */
typedef struct {
    unsigned char *buf; /* the virtio-net header, then the IP packet */
    size_t len;         /* of the IP packet */
    size_t gso;         /* payload of the first segment: the size the kernel segments at */
    int iphl, tcphl, v6, count, closed;
    uint32_t next_seq;
} GroSlot;

struct Path {
    const PathOps *ops;
    int tun_fd;
    int vnet; /* the TUN was opened with IFF_VNET_HDR: every packet follows a virtio-net header */
    GroSlot gro[GRO_SLOTS];
    int ngro;
    int connected; /* the client's one connected socket: no source address is read */
    int nsocks;
    UdpSock socks[MAX_SOCKS];
    double tun_wake;
    PyObject *pending;  /* list of Pending for the Python core */
    unsigned char *in;  /* a received datagram or a TUN packet; NULL until initialised */
    unsigned char *out; /* sealed datagrams laid end to end (a GSO run) or one opened packet */
    EVP_CIPHER_CTX *hp_hdr; /* the gateway-wide header-protection key, when obfuscation is on */
    /* Counters, cumulative. */
    unsigned long long drop_decrypt, drop_replay, drop_not_ip, drop_source;
    unsigned long long tun_write_error, tun_read_error, udp_recv_error;
    unsigned long long tun_writes, tun_coalesced; /* writes to the TUN; packets merged into another */
};

/* ClientPath and GatewayPath begin alike: the poller and the shared methods reach their Path. */
typedef struct {
    PyObject_HEAD
    Path path;
} PathObject;

#define PATH_OF(obj) (&((PathObject *)(obj))->path)

int path_init(Path *p, const PathOps *ops, int tun_fd, int vnet);
void path_clear(Path *p);
int path_add_socket(Path *p, int fd, int gso, int gro);
int pend(Path *p, int kind, const unsigned char *d, Py_ssize_t n, int sock, const struct sockaddr_storage *src,
         socklen_t srclen, uint32_t index);
PyObject *path_take_pending(Path *p);
PyObject *path_counters(const Path *p);
PyObject *link_take(Link *link);
PyObject *path_uninitialised(void);
PyObject *Path_tun_ready(PyObject *self, PyObject *unused);
PyObject *Path_protect(PyObject *self, PyObject *arg);

#define REQUIRE_INIT(self)                                                      \
    do {                                                                        \
        if (PATH_OF(self)->in == NULL) return path_uninitialised();             \
    } while (0)

/* tun_out.c */
void tun_out(Path *p, const unsigned char *pt, size_t n);
void tun_flush(Path *p);

/* send.c, receive.c */
int path_tun_ready(Path *p);
int path_udp_ready(Path *p, int sock);

/* ------------------------------------------------------------------ the types */

typedef struct {
    PyObject_HEAD
    Link link;
    int sock; /* index of the GatewayPath socket that reaches the client, ROUTE_NONE when not over UDP */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    unsigned char v4[4], v6[16]; /* the tunnel addresses the session was given */
    int has4, has6;
    PyObject *owner; /* the core's Session */
    int touched;     /* in its GatewayPath's list for take() */
} Peer;

#define PEER_OF(l) ((Peer *)((char *)(l) - offsetof(Peer, link)))

extern PyTypeObject PeerType, ClientPathType, GatewayPathType, PollerType;
extern PyTypeObject ActivityType, PendingType;

#pragma GCC visibility pop

#endif
