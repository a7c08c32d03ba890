/* poller.c: Poller, epoll_wait that serves the compiled readers before any Python runs.
 *
 * transport/loop.py registers a ClientPath's or GatewayPath's TUN and UDP descriptors as compiled
 * readers (add); poll() then seals and sends, or opens and writes, their packets as soon as epoll
 * reports them, and reports the descriptors too, so that the Python callback registered for each
 * does the bookkeeping (take()) after the packets have left. While only compiled readers are busy
 * it lingers briefly for the answer to what it just sent or wrote.
 */
#include "fastpath.h"

#include <errno.h>
#include <sys/epoll.h>

typedef struct {
    int fd;
    int kind; /* KIND_TUN or KIND_UDP */
    int sock; /* the path's socket number, for KIND_UDP */
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
        PyErr_SetString(PyExc_ValueError, "kind is KIND_TUN or KIND_UDP");
        return NULL;
    }
    if (!PyObject_TypeCheck(path, &ClientPathType) && !PyObject_TypeCheck(path, &GatewayPathType)) {
        PyErr_SetString(PyExc_TypeError, "path is a ClientPath or a GatewayPath");
        return NULL;
    }
    if (PATH_OF(path)->in == NULL) {
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
    if (PyObject_TypeCheck(path, &ClientPathType)) sock = 0; /* the client has one socket */
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
    for (int j = 0; j < self->nslots; j++)
        if (PyList_GET_SIZE(PATH_OF(self->slots[j].path)->pending) > 0) return 1;
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
                Py_INCREF(slot.path); /* held: a collection run by the loop could remove the slot */
                Path *p = PATH_OF(slot.path);
                int rc = slot.kind == KIND_TUN ? path_tun_ready(p) : path_udp_ready(p, slot.sock);
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
     "add(fd, path, kind, sock=0): serve fd with a compiled reader (sock: the path's socket number)"},
    {"remove", (PyCFunction)Poller_remove, METH_O, "remove(fd) -> bool"},
    {"poll", (PyCFunction)Poller_poll, METH_VARARGS, "poll(epfd, timeout_ms, maxevents) -> [(fd, mask)]"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "veilgate.fastpath._fastpath.Poller",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "epoll_wait that serves compiled readers before returning.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)Poller_dealloc,
    .tp_methods = Poller_methods,
};
