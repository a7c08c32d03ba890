/* module.c: the module veilgate.fastpath._fastpath: its types, the named structures it hands to
 * Python (Activity, Pending), the constants of fastpath.h that Python code and tests read, and two
 * test-only views of the IP header parser (receive.c).
 */
#include "fastpath.h"

/* ------------------------------------------------------------------ named structures */

PyTypeObject ActivityType, PendingType;

static PyStructSequence_Field activity_fields[] = {
    {"tx_packets", "IP packets sealed and sent"},
    {"tx_bytes", "their bytes"},
    {"last_tx", "time of the last send"},
    {"first_unanswered", "time of the first send after the last authenticated receive (0.0 if none; "
                         "always 0.0 for a gateway's peer)"},
    {"authenticated", "datagrams that authenticated (keepalives, control messages and IP packets)"},
    {"rx_packets", "IP packets delivered to the TUN"},
    {"rx_bytes", "their bytes"},
    {"last_rx", "time of the last authenticated receive"},
    {NULL, NULL},
};

static PyStructSequence_Desc activity_desc = {
    "veilgate.fastpath._fastpath.Activity",
    "What the compiled data path did for one session since the last take().",
    activity_fields,
    8,
};

static PyStructSequence_Field pending_fields[] = {
    {"kind", "PENDING_TUN, PENDING_DATAGRAM or PENDING_OPENED"},
    {"data", "the packet or datagram untouched, or the opened control message"},
    {"sock", "the path's socket it came on (a gateway's TUN entries: ROUTE_NONE; the client's: 0)"},
    {"addr", "the sender's address as the socket module gives it, or None (TUN; the client's socket)"},
    {"index", "for PENDING_OPENED, the receiver index it was opened with; else 0"},
    {NULL, NULL},
};

static PyStructSequence_Desc pending_desc = {
    "veilgate.fastpath._fastpath.Pending",
    "What the compiled data path hands to the Python core.",
    pending_fields,
    5,
};

/* ------------------------------------------------------------------ test-only views of the IP parser */

static PyObject *ip_packet_length_py(PyObject *module, PyObject *arg) {
    (void)module;
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t n = ip_packet_length(b.buf, b.len);
    PyBuffer_Release(&b);
    return PyLong_FromSsize_t(n);
}

static PyObject *ip_addresses_py(PyObject *module, PyObject *arg) {
    (void)module;
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    IpAddrs ip;
    PyObject *res = ip_addresses(b.buf, b.len, &ip)
                        ? Py_BuildValue("(y#y#)", (const char *)ip.source, (Py_ssize_t)ip.addrlen,
                                        (const char *)ip.destination, (Py_ssize_t)ip.addrlen)
                        : Py_NewRef(Py_None);
    PyBuffer_Release(&b);
    return res;
}

static PyMethodDef module_methods[] = {
    {"_ip_packet_length", ip_packet_length_py, METH_O,
     "_ip_packet_length(data) -> int: the C twin of protocol.ip.packet_length (for tests)"},
    {"_ip_addresses", ip_addresses_py, METH_O,
     "_ip_addresses(data) -> (source, destination) or None: where the C parser finds them (for tests)"},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------ module */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "veilgate's optional compiled data path", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

static int add_types(PyObject *m) {
    struct {
        const char *name;
        PyTypeObject *type;
    } types[] = {
        {"Keys", &KeysType},         {"ClientPath", &ClientPathType}, {"Peer", &PeerType},
        {"GatewayPath", &GatewayPathType}, {"Poller", &PollerType},   {"Activity", &ActivityType},
        {"Pending", &PendingType},
    };
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (PyModule_AddObjectRef(m, types[i].name, (PyObject *)types[i].type) < 0) return -1;
    return 0;
}

static int add_constants(PyObject *m) {
    struct {
        const char *name;
        long value;
    } ints[] = {
        {"TYPE_TRANSPORT", TYPE_TRANSPORT},
        {"PROTOCOL_VERSION", PROTOCOL_VERSION},
        {"TRANSPORT_HEADER_LEN", TRANSPORT_HEADER_LEN},
        {"TAGLEN", TAGLEN},
        {"TRANSPORT_MIN_LEN", TRANSPORT_MIN_LEN},
        {"PADDING_MULTIPLE", PADDING_MULTIPLE},
        {"HP_KEY_LEN", HP_KEY_LEN},
        {"HP_SAMPLE_OFFSET", HP_SAMPLE_OFFSET},
        {"HP_MASKED_HEAD", HP_MASKED_HEAD},
        {"CONTROL_MARKER", CONTROL_MARKER},
        {"REPLAY_WINDOW", REPLAY_WINDOW},
        {"PENDING_TUN", PENDING_TUN},
        {"PENDING_DATAGRAM", PENDING_DATAGRAM},
        {"PENDING_OPENED", PENDING_OPENED},
        {"KIND_TUN", KIND_TUN},
        {"KIND_UDP", KIND_UDP},
        {"ROUTE_NONE", ROUTE_NONE},
    };
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
        if (PyModule_AddIntConstant(m, ints[i].name, ints[i].value) < 0) return -1;
    PyObject *big[] = {
        PyFloat_FromDouble(REJECT_AFTER_TIME),
        PyLong_FromUnsignedLongLong(REKEY_AFTER_MESSAGES),
        PyLong_FromUnsignedLongLong(REJECT_AFTER_MESSAGES),
    };
    const char *names[] = {"REJECT_AFTER_TIME", "REKEY_AFTER_MESSAGES", "REJECT_AFTER_MESSAGES"};
    int rc = 0;
    for (size_t i = 0; i < sizeof big / sizeof *big; i++) {
        if (rc == 0 && (big[i] == NULL || PyModule_AddObjectRef(m, names[i], big[i]) < 0)) rc = -1;
        Py_XDECREF(big[i]);
    }
    return rc;
}

PyMODINIT_FUNC PyInit__fastpath(void) {
    PyTypeObject *ready[] = {&KeysType, &ClientPathType, &PeerType, &GatewayPathType, &PollerType};
    for (size_t i = 0; i < sizeof ready / sizeof *ready; i++)
        if (PyType_Ready(ready[i]) < 0) return NULL;
    if ((ActivityType.tp_name == NULL && PyStructSequence_InitType2(&ActivityType, &activity_desc) < 0) ||
        (PendingType.tp_name == NULL && PyStructSequence_InitType2(&PendingType, &pending_desc) < 0))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (add_types(m) < 0 || add_constants(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
