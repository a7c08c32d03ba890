/* peer.c: Peer, what a gateway's compiled path knows of one session.
 *
 * The gateway's Python daemon makes one Peer per session and keeps it current with update(): the
 * keypairs (current sends; current and previous receive), the socket and address that reach the
 * client, and the tunnel addresses it was given (its allowed sources). GatewayPath finds Peers
 * through the daemon's routes and indices dicts; take() hands over the session's Activity.
 */
#include "fastpath.h"

#include <string.h>
#include <structmember.h>

static void Peer_dealloc(Peer *self) {
    keyset_clear(&self->link.keys);
    Py_CLEAR(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Peer_init(Peer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"owner", NULL};
    PyObject *owner = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O", kwlist, &owner)) return -1;
    Py_XSETREF(self->owner, Py_NewRef(owner));
    self->sock = ROUTE_NONE;
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
    if (keyset_assign(&self->link.keys, send, recv) < 0) goto out;
    memset(&self->addr, 0, sizeof self->addr);
    if (sa.buf != NULL && sock >= 0) {
        memcpy(&self->addr, sa.buf, (size_t)sa.len);
        self->addrlen = (socklen_t)sa.len;
        self->sock = sock;
    } else {
        self->addrlen = 0;
        self->sock = ROUTE_NONE;
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

/* take() -> Activity since the last take() (first_unanswered is 0.0: the gateway does not keep it). */
static PyObject *Peer_take(Peer *self, PyObject *unused) {
    (void)unused;
    PyObject *res = link_take(&self->link);
    if (res != NULL) self->touched = 0;
    return res;
}

static PyMethodDef Peer_methods[] = {
    {"update", (PyCFunction)Peer_update, METH_VARARGS,
     "update(send, recv, sock, sockaddr, v4, v6): keypairs, where the client is, its assigned addresses"},
    {"take", (PyCFunction)Peer_take, METH_NOARGS, "take() -> Activity since the last take()"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Peer_members[] = {
    {"owner", T_OBJECT, offsetof(Peer, owner), 0, "the core's session"},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject PeerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "veilgate.fastpath._fastpath.Peer",
    .tp_basicsize = sizeof(Peer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Peer(owner=None): what a gateway's compiled data path knows of one session.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Peer_init,
    .tp_dealloc = (destructor)Peer_dealloc,
    .tp_methods = Peer_methods,
    .tp_members = Peer_members,
};
