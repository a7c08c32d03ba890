/* keys.c: one keypair in C (Keys), the keypair rule, and the keypairs one session may use (KeySet).
 *
 * Keys holds one keypair's two AEAD contexts (OpenSSL's ChaCha20-Poly1305), its send counter and
 * its replay window (RFC 6479's ring, as protocol/replay.py). The Python core's CompiledKeypair
 * seals and opens with the same object, so the core and the compiled loops share one counter and
 * one window. keys_state is the one place C decides whether a keypair may still be used.
 */
#include "fastpath.h"

#include <string.h>
#include <structmember.h>

static void put_le32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

_Static_assert(REPLAY_WINDOW >= 64 && (REPLAY_WINDOW & (REPLAY_WINDOW - 1)) == 0,
               "the replay window is a power of two of at least 64 bits");

/* The keypair rule, as the Python core applies it (protocol/keypair.py ``expired``, and the
 * client's rekey by counter in protocol/client.py). */
int keys_state(const Keys *k, double now) {
    if (now - k->created >= REJECT_AFTER_TIME || k->send_counter >= REJECT_AFTER_MESSAGES) return KEYS_EXPIRED;
    if (k->send_counter >= REKEY_AFTER_MESSAGES) return KEYS_REKEY_DUE;
    return KEYS_USABLE;
}

/* A header-protection context: AES-128-ECB under ``key`` (HP_KEY_LEN bytes), no padding; NULL on failure. */
EVP_CIPHER_CTX *hp_new(const unsigned char *key) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return NULL;
    if (EVP_EncryptInit_ex(ctx, EVP_aes_128_ecb(), NULL, key, NULL) != 1 || EVP_CIPHER_CTX_set_padding(ctx, 0) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* mask = AES-128-ECB(key, sample), 16 bytes each; -1 if the cipher failed. */
int hp_mask(EVP_CIPHER_CTX *ctx, const unsigned char *sample, unsigned char *mask) {
    int len = 0;
    return EVP_EncryptUpdate(ctx, mask, &len, sample, 16) == 1 && len == 16 ? 0 : -1;
}

static void Keys_dealloc(Keys *self) {
    if (self->seal_ctx) EVP_CIPHER_CTX_free(self->seal_ctx); /* OpenSSL clears the key schedule */
    if (self->open_ctx) EVP_CIPHER_CTX_free(self->open_ctx);
    if (self->hp_hdr) EVP_CIPHER_CTX_free(self->hp_hdr);
    if (self->hp_seal) EVP_CIPHER_CTX_free(self->hp_seal);
    if (self->hp_open) EVP_CIPHER_CTX_free(self->hp_open);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Keys_init(Keys *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"send_key", "recv_key", "local_index", "remote_index", "created", NULL};
    Py_buffer send_key, recv_key;
    PyObject *local_obj, *remote_obj;
    double created;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*O!O!d", kwlist, &send_key, &recv_key, &PyLong_Type,
                                     &local_obj, &PyLong_Type, &remote_obj, &created))
        return -1;
    int rc = -1;
    /* Converted here rather than by PyArg's k/I codes, which wrap silently on overflow. */
    unsigned long local_index = PyLong_AsUnsignedLong(local_obj);
    unsigned long remote_index = PyLong_AsUnsignedLong(remote_obj);
    if (PyErr_Occurred()) goto out;
    if (send_key.len != 32 || recv_key.len != 32) {
        PyErr_SetString(PyExc_ValueError, "keys are 32 bytes");
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
    self->seal_ctx = EVP_CIPHER_CTX_new();
    self->open_ctx = EVP_CIPHER_CTX_new();
    if (self->seal_ctx == NULL || self->open_ctx == NULL) {
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
    self->have_top = 0;
    self->top = 0;
    memset(self->bits, 0, sizeof self->bits);
    rc = 0;
out:
    PyBuffer_Release(&send_key);
    PyBuffer_Release(&recv_key);
    return rc;
}

/* The replay window: check before decrypting, update after the tag verified. */
static int replay_check(const Keys *k, unsigned long long c) {
    if (c >= REJECT_AFTER_MESSAGES) return 0;
    if (!k->have_top || c > k->top) return 1;
    if (k->top - c >= REPLAY_WINDOW) return 0;
    uint32_t i = (uint32_t)(c & (REPLAY_WINDOW - 1));
    return !((k->bits[i >> 3] >> (i & 7)) & 1);
}

static int replay_update(Keys *k, unsigned long long c) {
    if (c >= REJECT_AFTER_MESSAGES) return 0;
    uint32_t mask = REPLAY_WINDOW - 1;
    uint32_t i = (uint32_t)(c & mask);
    unsigned char bit = (unsigned char)(1u << (i & 7));
    if (!k->have_top || c > k->top) {
        unsigned long long first = k->have_top ? k->top + 1 : 0;
        unsigned long long gap = c - first;
        if (gap >= REPLAY_WINDOW) {
            memset(k->bits, 0, sizeof k->bits);
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
    if (k->top - c >= REPLAY_WINDOW || (k->bits[i >> 3] & bit)) return 0;
    k->bits[i >> 3] |= bit;
    return 1;
}

/* Seal ``n`` bytes at ``in`` into ``out`` (room for n + 47 bytes); returns the datagram length or -1.
 * ``in`` and ``out + TRANSPORT_HEADER_LEN`` may be the same buffer. The counter check here is the
 * nonce's guard, whatever the caller decided with keys_state. */
Py_ssize_t keys_seal(Keys *k, const unsigned char *in, Py_ssize_t n, unsigned char *out) {
    if (k->send_counter >= REJECT_AFTER_MESSAGES) return -1;
    unsigned long long counter = k->send_counter++;
    Py_ssize_t padded = n + (-n & (PADDING_MULTIPLE - 1));
    unsigned char *body = out + TRANSPORT_HEADER_LEN;
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
        EVP_CIPHER_CTX_ctrl(k->seal_ctx, EVP_CTRL_AEAD_GET_TAG, TAGLEN, body + padded) != 1)
        return -1;
    if (k->hp_hdr != NULL) { /* header protection: the sample is the first 16 bytes of the AEAD output */
        unsigned char m1[16], m2[16];
        if (hp_mask(k->hp_hdr, body, m1) < 0 || hp_mask(k->hp_seal, body, m2) < 0) return -1;
        for (int i = 0; i < HP_MASKED_HEAD; i++) {
            out[i] ^= m1[i];
            out[HP_MASKED_HEAD + i] ^= m2[i];
        }
    }
    return TRANSPORT_HEADER_LEN + padded + TAGLEN;
}

/* Authenticate and decrypt a transport datagram of ``n`` >= TRANSPORT_MIN_LEN bytes into ``out``;
 * ``counter`` is its counter (bytes 8..15, unmasked when header protection is on). */
int keys_open(Keys *k, const unsigned char *d, Py_ssize_t n, unsigned char *out, unsigned long long counter) {
    if (!replay_check(k, counter)) return OPEN_REPLAY;
    unsigned char nonce[12] = {0};
    put_le64(nonce + 4, counter);
    int ct = (int)(n - TRANSPORT_MIN_LEN), len = 0, fin = 0;
    if (EVP_DecryptInit_ex(k->open_ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_CIPHER_CTX_ctrl(k->open_ctx, EVP_CTRL_AEAD_SET_TAG, TAGLEN, (void *)(d + n - TAGLEN)) != 1 ||
        EVP_DecryptUpdate(k->open_ctx, out, &len, d + TRANSPORT_HEADER_LEN, ct) != 1 ||
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
    Py_ssize_t padded = in.len + (-in.len & (PADDING_MULTIPLE - 1));
    PyObject *res = PyBytes_FromStringAndSize(NULL, TRANSPORT_HEADER_LEN + padded + TAGLEN);
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

/* open(data) -> bytes, or OPEN_REPLAY (replayed or too old) or OPEN_FORGED, as an int. */
static PyObject *Keys_open(Keys *self, PyObject *arg) {
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *res = NULL;
    if (in.len < TRANSPORT_MIN_LEN) {
        if (in.len >= TRANSPORT_HEADER_LEN && !replay_check(self, le64((unsigned char *)in.buf + 8)))
            res = PyLong_FromLong(OPEN_REPLAY);
        else
            res = PyLong_FromLong(OPEN_FORGED);
        goto out;
    }
    res = PyBytes_FromStringAndSize(NULL, in.len - TRANSPORT_MIN_LEN);
    if (res == NULL) goto out;
    int rc = keys_open(self, in.buf, in.len, (unsigned char *)PyBytes_AS_STRING(res), le64((unsigned char *)in.buf + 8));
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

/* protect(header_key, send_counter_key, recv_counter_key): header protection on, once. */
static PyObject *Keys_protect(Keys *self, PyObject *args) {
    Py_buffer keys[3];
    if (!PyArg_ParseTuple(args, "y*y*y*", &keys[0], &keys[1], &keys[2])) return NULL;
    PyObject *res = NULL;
    if (keys[0].len != HP_KEY_LEN || keys[1].len != HP_KEY_LEN || keys[2].len != HP_KEY_LEN) {
        PyErr_SetString(PyExc_ValueError, "header-protection keys are 16 bytes");
    } else if (self->hp_hdr != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "header protection is turned on once");
    } else {
        self->hp_hdr = hp_new(keys[0].buf);
        self->hp_seal = hp_new(keys[1].buf);
        self->hp_open = hp_new(keys[2].buf);
        if (self->hp_hdr == NULL || self->hp_seal == NULL || self->hp_open == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused AES-128-ECB");
        } else {
            res = Py_NewRef(Py_None);
        }
    }
    for (int i = 0; i < 3; i++) PyBuffer_Release(&keys[i]);
    return res;
}

/* unmask_counter(datagram) -> the counter of a protected datagram, or None (protection off or too short). */
static PyObject *Keys_unmask_counter(Keys *self, PyObject *arg) {
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *res;
    unsigned char m[16];
    const unsigned char *d = in.buf;
    if (self->hp_open == NULL || in.len < TRANSPORT_MIN_LEN || hp_mask(self->hp_open, d + HP_SAMPLE_OFFSET, m) < 0)
        res = Py_NewRef(Py_None);
    else
        res = PyLong_FromUnsignedLongLong(le64(d + 8) ^ le64(m));
    PyBuffer_Release(&in);
    return res;
}

static PyMethodDef Keys_methods[] = {
    {"protect", (PyCFunction)Keys_protect, METH_VARARGS,
     "protect(header_key, send_counter_key, recv_counter_key): turn header protection on"},
    {"unmask_counter", (PyCFunction)Keys_unmask_counter, METH_O,
     "unmask_counter(datagram) -> counter of a protected datagram, or None"},
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

PyTypeObject KeysType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "veilgate.fastpath._fastpath.Keys",
    .tp_basicsize = sizeof(Keys),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Keys(send_key, recv_key, local_index, remote_index, created): one keypair's AEAD contexts, "
              "send counter and replay window.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Keys_init,
    .tp_dealloc = (destructor)Keys_dealloc,
    .tp_methods = Keys_methods,
    .tp_members = Keys_members,
    .tp_getset = Keys_getset,
};

/* ------------------------------------------------------------------ KeySet */

void keyset_clear(KeySet *ks) {
    Py_CLEAR(ks->send);
    Py_CLEAR(ks->recv[0]);
    Py_CLEAR(ks->recv[1]);
}

/* Replace the set with ``send`` (Keys or None) and ``recv`` (a tuple of at most two Keys); -1 and
 * the set unchanged if they are not that. */
int keyset_assign(KeySet *ks, PyObject *send, PyObject *recv) {
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

Keys *keyset_receiver(const KeySet *ks, uint32_t index) {
    for (int i = 0; i < 2; i++)
        if (ks->recv[i] != NULL && ks->recv[i]->local_index == index) return ks->recv[i];
    return NULL;
}
