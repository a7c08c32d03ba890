/* gateway.c: GatewayPath, the gateway's compiled data path for its established UDP sessions.
 *
 * The Python daemon keeps two dicts it shares with this object: routes (packed tunnel address ->
 * Peer) and indices (local index -> Peer). The shared loops (send.c, receive.c) move packets with
 * the hooks here: a TUN packet goes to the Peer its destination is routed to; a datagram is opened
 * only for the Peer whose index it names and only from that Peer's socket and address (anything
 * else, e.g. a roamed client, goes to Python), its IP packet delivered only from the Peer's
 * assigned address, and, without client_to_client, never to another session's address. take()
 * hands over the Pending entries and the Peers that did something since.
 */
#include "fastpath.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    Path path;
    int client_to_client;
    PyObject *routes;  /* dict: packed tunnel address -> Peer, kept by the Python daemon */
    PyObject *indices; /* dict: local index -> Peer, kept by the Python daemon */
    PyObject *touched; /* list of Peers with activity since take() */
    unsigned long long c2c_dropped;
} GatewayPath;

#define GATEWAY_OF(p) ((GatewayPath *)((char *)(p) - offsetof(GatewayPath, path)))

static void touch(Path *p, Link *link) {
    Peer *peer = PEER_OF(link);
    if (!peer->touched && PyList_Append(GATEWAY_OF(p)->touched, (PyObject *)peer) == 0) peer->touched = 1;
    else if (!peer->touched) PyErr_Clear(); /* out of memory: the activity is reported with the next packet */
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

/* The Peer a tunnel address is routed to, or NULL (with an exception set: a Python error). */
static Peer *route_for(GatewayPath *self, const unsigned char *addr, int n) {
    PyObject *key = PyBytes_FromStringAndSize((const char *)addr, n);
    if (key == NULL) return NULL;
    PyObject *peer = PyDict_GetItemWithError(self->routes, key);
    Py_DECREF(key);
    if (peer != NULL && !PyObject_TypeCheck(peer, &PeerType)) return NULL;
    return (Peer *)peer;
}

static int gateway_target(Path *p, const unsigned char *packet, Py_ssize_t n, double now, Target *t) {
    IpAddrs ip;
    Peer *peer = ip_addresses(packet, n, &ip) ? route_for(GATEWAY_OF(p), ip.destination, ip.addrlen) : NULL;
    if (peer == NULL && PyErr_Occurred()) return -1;
    Keys *k = peer != NULL ? peer->link.keys.send : NULL;
    if (k == NULL || peer->sock < 0 || peer->sock >= p->nsocks || keys_state(k, now) == KEYS_EXPIRED) return 0;
    *t = (Target){k, &peer->link, &p->socks[peer->sock].out, (struct sockaddr *)&peer->addr, peer->addrlen,
                  (PyObject *)peer};
    return 1;
}

static Link *gateway_receiver(Path *p, uint32_t index, int sock, const struct sockaddr_storage *src) {
    PyObject *key = PyLong_FromUnsignedLong(index);
    if (key == NULL) return NULL;
    PyObject *obj = PyDict_GetItemWithError(GATEWAY_OF(p)->indices, key);
    Py_DECREF(key);
    if (obj == NULL || !PyObject_TypeCheck(obj, &PeerType)) return NULL;
    Peer *peer = (Peer *)obj;
    /* From another address (the client roamed, or a probe on another path): the Python core decides. */
    if (peer->sock != sock || !same_addr(&peer->addr, src)) return NULL;
    return &peer->link;
}

/* Only from the tunnel address the session was given. */
static int gateway_source_allowed(const Link *link, const IpAddrs *ip) {
    const Peer *peer = PEER_OF(link);
    return ip->addrlen == 4 ? peer->has4 && memcmp(ip->source, peer->v4, 4) == 0
                            : peer->has6 && memcmp(ip->source, peer->v6, 16) == 0;
}

/* Without client_to_client, nothing to another session's address. */
static int gateway_forward(Path *p, const IpAddrs *ip) {
    GatewayPath *self = GATEWAY_OF(p);
    if (self->client_to_client) return 1;
    Peer *other = route_for(self, ip->destination, ip->addrlen);
    if (other == NULL && PyErr_Occurred()) return -1;
    if (other == NULL) return 1;
    self->c2c_dropped++;
    return 0;
}

static const PathOps gateway_ops = {
    .target = gateway_target,
    .receiver = gateway_receiver,
    .touch = touch,
    .source_allowed = gateway_source_allowed,
    .forward = gateway_forward,
};

static void GatewayPath_dealloc(GatewayPath *self) {
    Py_CLEAR(self->routes);
    Py_CLEAR(self->indices);
    Py_CLEAR(self->touched);
    path_clear(&self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int GatewayPath_init(GatewayPath *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tun_fd", "routes", "indices", "client_to_client", "vnet", NULL};
    int tun_fd, c2c, vnet = 0;
    PyObject *routes, *indices;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO!O!p|p", kwlist, &tun_fd, &PyDict_Type, &routes, &PyDict_Type,
                                     &indices, &c2c, &vnet))
        return -1;
    if (path_init(&self->path, &gateway_ops, tun_fd, vnet) < 0) return -1;
    self->touched = PyList_New(0);
    if (self->touched == NULL) return -1;
    self->routes = Py_NewRef(routes);
    self->indices = Py_NewRef(indices);
    self->client_to_client = c2c;
    return 0;
}

static PyObject *GatewayPath_add_socket(GatewayPath *self, PyObject *args) {
    int fd, gso, gro;
    if (!PyArg_ParseTuple(args, "ipp", &fd, &gso, &gro)) return NULL;
    int i = path_add_socket(&self->path, fd, gso, gro);
    return i < 0 ? NULL : PyLong_FromLong(i);
}

/* take() -> (list of Pending, list of the Peers with activity since the last take()). */
static PyObject *GatewayPath_take(GatewayPath *self, PyObject *unused) {
    (void)unused;
    REQUIRE_INIT(self);
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) return NULL;
    PyObject *pending = path_take_pending(&self->path);
    if (pending == NULL) {
        Py_DECREF(fresh);
        return NULL;
    }
    PyObject *touched = self->touched;
    self->touched = fresh;
    return Py_BuildValue("(NN)", pending, touched);
}

static PyObject *GatewayPath_counters(GatewayPath *self, PyObject *unused) {
    (void)unused;
    PyObject *d = path_counters(&self->path);
    unsigned long long gso_off = 0;
    for (int i = 0; i < self->path.nsocks; i++) gso_off += (unsigned long long)self->path.socks[i].out.gso_failed;
    PyObject *extra = Py_BuildValue("{sKsKsK}", "drop-source", self->path.drop_source, "client-to-client-dropped",
                                    self->c2c_dropped, "udp-gso-refused", gso_off);
    if (d != NULL && (extra == NULL || PyDict_Update(d, extra) < 0)) Py_CLEAR(d);
    Py_XDECREF(extra);
    return d;
}

static PyObject *GatewayPath_udp_ready(GatewayPath *self, PyObject *arg) {
    REQUIRE_INIT(self);
    long sock = PyLong_AsLong(arg);
    if (sock == -1 && PyErr_Occurred()) return NULL;
    if (sock < 0 || sock >= self->path.nsocks) Py_RETURN_NONE;
    if (path_udp_ready(&self->path, (int)sock) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef GatewayPath_methods[] = {
    {"add_socket", (PyCFunction)GatewayPath_add_socket, METH_VARARGS, "add_socket(fd, gso, gro) -> index"},
    {"take", (PyCFunction)GatewayPath_take, METH_NOARGS, "take() -> (list of Pending, list of touched Peers)"},
    {"counters", (PyCFunction)GatewayPath_counters, METH_NOARGS, "cumulative drop and I/O counters"},
    {"tun_ready", Path_tun_ready, METH_NOARGS, "serve a readable TUN device"},
    {"protect", Path_protect, METH_O, "protect(header_key): received datagrams carry header protection"},
    {"udp_ready", (PyCFunction)GatewayPath_udp_ready, METH_O, "udp_ready(sock): serve a readable socket"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject GatewayPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "veilgate.fastpath._fastpath.GatewayPath",
    .tp_basicsize = sizeof(GatewayPath),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "GatewayPath(tun_fd, routes, indices, client_to_client, vnet=False): the gateway's TUN <-> UDP "
              "loops for established sessions; vnet: the TUN was opened with IFF_VNET_HDR.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)GatewayPath_init,
    .tp_dealloc = (destructor)GatewayPath_dealloc,
    .tp_methods = GatewayPath_methods,
};
