/* client.c: ClientPath, the client's compiled data path for its established UDP session.
 *
 * The Python core hands it the keypairs (set_keys: the confirmed current one sends; current and
 * previous receive); the shared loops (send.c, receive.c) then move the session's packets between
 * the TUN device and the one connected UDP socket. What it did (an Activity) and what it handed to
 * Python (Pending entries) are taken by take(), so the core's timers stay exact.
 */
#include "fastpath.h"

typedef struct {
    PyObject_HEAD
    Path path;
    Link link; /* the session */
} ClientPath;

/* The session's confirmed current keypair sends while the keypair rule lets the initiator send;
 * otherwise Python decides (it rekeys, queues, or drops). */
static int client_target(Path *p, const unsigned char *packet, Py_ssize_t n, double now, Target *t) {
    (void)packet, (void)n;
    ClientPath *self = (ClientPath *)((char *)p - offsetof(ClientPath, path));
    Keys *k = self->link.keys.send;
    if (k == NULL || keys_state(k, now) != KEYS_USABLE) return 0;
    *t = (Target){.keys = k, .link = &self->link, .u = &p->socks[0].out};
    return 1;
}

/* Every datagram on the connected socket is from the gateway. */
static Link *client_receiver(Path *p, uint32_t index, int sock, const struct sockaddr_storage *src) {
    (void)index, (void)sock, (void)src;
    return &((ClientPath *)((char *)p - offsetof(ClientPath, path)))->link;
}

static const PathOps client_ops = {.target = client_target, .receiver = client_receiver};

static void ClientPath_dealloc(ClientPath *self) {
    keyset_clear(&self->link.keys);
    path_clear(&self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ClientPath_init(ClientPath *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tun_fd", "udp_fd", "gso", "gro", "vnet", NULL};
    int tun_fd, udp_fd, gso, gro, vnet = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iipp|p", kwlist, &tun_fd, &udp_fd, &gso, &gro, &vnet)) return -1;
    if (path_init(&self->path, &client_ops, tun_fd, vnet) < 0) return -1;
    self->path.connected = 1;
    self->link.unanswered = 1;
    return path_add_socket(&self->path, udp_fd, gso, gro) < 0 ? -1 : 0;
}

static PyObject *ClientPath_set_keys(ClientPath *self, PyObject *args) {
    PyObject *send, *recv;
    if (!PyArg_ParseTuple(args, "OO!", &send, &PyTuple_Type, &recv)) return NULL;
    if (keyset_assign(&self->link.keys, send, recv) < 0) return NULL;
    Py_RETURN_NONE;
}

/* take() -> (pending, Activity or None): None when nothing was sent or authenticated since. */
static PyObject *ClientPath_take(ClientPath *self, PyObject *unused) {
    (void)unused;
    REQUIRE_INIT(self);
    PyObject *activity;
    if (self->link.tx_packets || self->link.authenticated)
        activity = link_take(&self->link);
    else
        activity = Py_NewRef(Py_None);
    if (activity == NULL) return NULL;
    PyObject *pending = path_take_pending(&self->path);
    if (pending == NULL) {
        Py_DECREF(activity);
        return NULL;
    }
    return Py_BuildValue("(NN)", pending, activity);
}

static PyObject *ClientPath_counters(ClientPath *self, PyObject *unused) {
    (void)unused;
    return path_counters(&self->path);
}

static PyObject *ClientPath_udp_ready(ClientPath *self, PyObject *unused) {
    (void)unused;
    REQUIRE_INIT(self);
    if (path_udp_ready(&self->path, 0) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *ClientPath_get_gso(ClientPath *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->path.nsocks && self->path.socks[0].out.gso);
}

static PyMethodDef ClientPath_methods[] = {
    {"set_keys", (PyCFunction)ClientPath_set_keys, METH_VARARGS,
     "set_keys(send, recv): the Keys that may send (or None) and a tuple of at most two that may receive"},
    {"take", (PyCFunction)ClientPath_take, METH_NOARGS, "take() -> (list of Pending, Activity or None)"},
    {"counters", (PyCFunction)ClientPath_counters, METH_NOARGS, "cumulative drop and I/O counters"},
    {"tun_ready", Path_tun_ready, METH_NOARGS, "serve a readable TUN device"},
    {"protect", Path_protect, METH_O, "protect(header_key): received datagrams carry header protection"},
    {"udp_ready", (PyCFunction)ClientPath_udp_ready, METH_NOARGS, "serve a readable UDP socket"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ClientPath_getset[] = {
    {"gso", (getter)ClientPath_get_gso, NULL, "whether sends still use UDP segmentation offload", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject ClientPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "veilgate.fastpath._fastpath.ClientPath",
    .tp_basicsize = sizeof(ClientPath),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ClientPath(tun_fd, udp_fd, gso, gro, vnet=False): the client's TUN <-> UDP loops for an established "
              "session; vnet: the TUN was opened with IFF_VNET_HDR.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ClientPath_init,
    .tp_dealloc = (destructor)ClientPath_dealloc,
    .tp_methods = ClientPath_methods,
    .tp_getset = ClientPath_getset,
};
