/* A C accelerator for the framed handoff body (kafka_relay.protocol, "KRF" 0x01), measured by
 * bench/alternatives.py against the Python of the same steps. Not part of the layer.
 *
 *   encode(records, scan) -> bytes | None
 *       The framed body of records that are plain {"key": str|bytes|None, "value": JSON|bytes}
 *       dicts, each JSON value written by ``scan`` (the json module's C encoder, as
 *       protocol.encode_frames uses it). None when any record needs the general path
 *       (protocol.encode_frames then frames it and names what is wrong).
 *   check(body, has_default_topic) -> int
 *       Decode and validate a whole body without allocating: the rules of
 *       protocol.decode_frames and handoff.schema.validate_frames (flags, lengths, topic
 *       names, timestamps, header names). The record count, or ValueError(index, reason).
 *   produce_all(body, start, produce, default_topic, id_prefix, first_id, on_delivery) -> int
 *       For a body ``check`` passed: produce(topic, value=, key=, headers=, on_delivery=,
 *       timestamp=) per record from ``start`` on, each with an x-relay-id header
 *       "<id_prefix>-<first_id + index as 8 hex digits>" after its own headers. Returns the
 *       index it stopped at: the count, or where produce raised BufferError (queue full).
 *   Settle(count)
 *       A delivery callback for one body: ``outstanding`` counts down per report, failed
 *       reports are kept in ``failed`` as (error, message).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define FLAG_KEY 1
#define FLAG_VALUE_NULL 2
#define FLAG_TIMESTAMP 4
#define FLAG_TOPIC 8
#define FLAGS_ALL 15
#define BODY_HEAD 8
#define RECORD_HEAD 21
#define HEADER_HEAD 6
#define RESERVED_PREFIX "x-relay-"
#define RESERVED_LEN 8

static PyObject *key_name, *value_name, *id_header, *zero, *kwnames;

static inline uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get64(const unsigned char *p) {
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}
static inline void put16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); }
static inline void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* -- encode --------------------------------------------------------------------------- */

typedef struct { unsigned char *data; size_t len, cap; } Buf;

static int reserve(Buf *b, size_t more) {
    if (b->len + more <= b->cap) return 0;
    size_t cap = b->cap * 2;
    while (cap < b->len + more) cap *= 2;
    unsigned char *grown = PyMem_Realloc(b->data, cap);
    if (grown == NULL) { PyErr_NoMemory(); return -1; }
    b->data = grown;
    b->cap = cap;
    return 0;
}

static int append(Buf *b, const void *src, size_t n) {
    if (reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static int is_json_value(PyObject *v) {
    return PyDict_CheckExact(v) || PyList_CheckExact(v) || PyUnicode_CheckExact(v)
        || PyLong_CheckExact(v) || PyFloat_CheckExact(v) || PyBool_Check(v);
}

/* 1: appended; 0: the record needs the general path; -1: error set (out of memory). */
static int append_json(Buf *b, PyObject *scan, PyObject *value) {
    PyObject *args[2] = {value, zero};
    PyObject *chunks = PyObject_Vectorcall(scan, args, 2, NULL);
    if (chunks == NULL) { PyErr_Clear(); return 0; }  /* the general path names the error */
    PyObject *seq = PySequence_Fast(chunks, "chunks");
    Py_DECREF(chunks);
    if (seq == NULL) { PyErr_Clear(); return 0; }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const char *text = PyUnicode_Check(items[i]) ? PyUnicode_AsUTF8AndSize(items[i], &len) : NULL;
        if (text == NULL) { PyErr_Clear(); Py_DECREF(seq); return 0; }  /* a lone surrogate */
        if (append(b, text, (size_t)len) < 0) { Py_DECREF(seq); return -1; }
    }
    Py_DECREF(seq);
    return 1;
}

static PyObject *encode(PyObject *module, PyObject *args) {
    PyObject *records, *scan;
    if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &records, &scan)) return NULL;
    Py_ssize_t count = PyList_GET_SIZE(records);
    if ((uint64_t)count > UINT32_MAX) Py_RETURN_NONE;
    Buf b = {PyMem_Malloc(1 << 16), 0, 1 << 16};
    if (b.data == NULL) return PyErr_NoMemory();
    memcpy(b.data, "KRF\x01", 4);
    put32(b.data + 4, (uint32_t)count);
    b.len = BODY_HEAD;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(records, i), *k, *v, *key = NULL, *value = NULL;
        Py_ssize_t pos = 0;
        if (!PyDict_CheckExact(item)) goto general;
        while (PyDict_Next(item, &pos, &k, &v)) {
            if (k == key_name || (PyUnicode_Check(k) && PyUnicode_Compare(k, key_name) == 0))
                key = v;
            else if (k == value_name || (PyUnicode_Check(k) && PyUnicode_Compare(k, value_name) == 0))
                value = v;
            else
                goto general;  /* a topic, headers, a timestamp, value_b64, or unknown */
        }
        if (value == NULL || value == Py_None) goto general;
        const char *key_data = NULL;
        Py_ssize_t key_len = 0;
        unsigned char flags = 0;
        if (key != NULL && key != Py_None) {
            if (PyUnicode_CheckExact(key)) {
                key_data = PyUnicode_AsUTF8AndSize(key, &key_len);
                if (key_data == NULL) { PyErr_Clear(); goto general; }
            } else if (PyBytes_CheckExact(key)) {
                key_data = PyBytes_AS_STRING(key);
                key_len = PyBytes_GET_SIZE(key);
            } else {
                goto general;
            }
            flags = FLAG_KEY;
        }
        if ((uint64_t)key_len > UINT32_MAX || reserve(&b, RECORD_HEAD) < 0) goto fail_or_general;
        size_t head = b.len;
        b.len += RECORD_HEAD;
        if (key_len && append(&b, key_data, (size_t)key_len) < 0) goto fail;
        size_t value_at = b.len;
        if (PyBytes_CheckExact(value)) {
            if (append(&b, PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value)) < 0) goto fail;
        } else if (is_json_value(value)) {
            int done = append_json(&b, scan, value);
            if (done < 0) goto fail;
            if (done == 0) goto general;
        } else {
            goto general;
        }
        size_t value_len = b.len - value_at;
        if ((uint64_t)value_len > UINT32_MAX) goto general;
        unsigned char *h = b.data + head;
        memset(h, 0, RECORD_HEAD);
        h[0] = flags;
        put32(h + 3, (uint32_t)key_len);
        put32(h + 7, (uint32_t)value_len);
        continue;
fail_or_general:
        if (PyErr_Occurred()) goto fail;
        goto general;
    }
    PyObject *body = PyBytes_FromStringAndSize((const char *)b.data, (Py_ssize_t)b.len);
    PyMem_Free(b.data);
    return body;
general:
    PyMem_Free(b.data);
    Py_RETURN_NONE;
fail:
    PyMem_Free(b.data);
    return NULL;
}

/* -- check ---------------------------------------------------------------------------- */

static PyObject *invalid(Py_ssize_t index, const char *format, ...) {
    va_list va;
    va_start(va, format);
    PyObject *reason = PyUnicode_FromFormatV(format, va);
    va_end(va);
    if (reason != NULL) {
        PyObject *exc_args = Py_BuildValue("(nN)", index, reason);
        if (exc_args != NULL) {
            PyErr_SetObject(PyExc_ValueError, exc_args);
            Py_DECREF(exc_args);
        }
    }
    return NULL;
}

static int valid_topic(const unsigned char *t, size_t n) {
    if (n < 1 || n > 249 || (n == 1 && t[0] == '.') || (n == 2 && t[0] == '.' && t[1] == '.'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = t[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
              || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Why a header name cannot be produced (NULL: it can). */
static const char *bad_header_name(const unsigned char *name, size_t n) {
    PyObject *text = PyUnicode_DecodeUTF8((const char *)name, (Py_ssize_t)n, "strict");
    if (text == NULL) { PyErr_Clear(); return "a 'headers' name is not UTF-8"; }
    Py_DECREF(text);
    if (memchr(name, 0, n) != NULL)
        return "a 'headers' name holds a NUL character, which the producer cannot carry";
    if (n >= RESERVED_LEN) {
        int same = 1;
        for (int i = 0; i < RESERVED_LEN; i++) {
            unsigned char c = name[i];
            if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
            if (c != (unsigned char)RESERVED_PREFIX[i]) { same = 0; break; }
        }
        if (same) return "a 'headers' name uses the reserved prefix 'x-relay-'";
    }
    return NULL;
}

/* The record at *pos: its fields' offsets; advances *pos. 0, or -1 with ValueError set. */
typedef struct {
    unsigned flags;
    size_t topic_at, topic_len, key_at, key_len, value_at, value_len, headers_at;
    unsigned header_count;
    uint64_t timestamp;
} Fields;

static int read_record(const unsigned char *p, size_t size, size_t *pos, Py_ssize_t index,
                       int has_default, int validate, Fields *f) {
    if (*pos + RECORD_HEAD > size) {
        invalid(index, "truncated: its %d-byte header passes the end of the body", RECORD_HEAD);
        return -1;
    }
    const unsigned char *h = p + *pos;
    f->flags = h[0];
    f->topic_len = get16(h + 1);
    f->key_len = get32(h + 3);
    f->value_len = get32(h + 7);
    f->header_count = get16(h + 11);
    f->timestamp = get64(h + 13);
    if (validate) {
        if (f->flags & ~FLAGS_ALL) {
            invalid(index, "unknown flags 0x%02x (this extension reads frames v1)", f->flags & ~FLAGS_ALL);
            return -1;
        }
        if ((f->topic_len && !(f->flags & FLAG_TOPIC)) || (f->key_len && !(f->flags & FLAG_KEY))
            || (f->value_len && (f->flags & FLAG_VALUE_NULL))
            || (f->timestamp && !(f->flags & FLAG_TIMESTAMP))) {
            invalid(index, "a length or timestamp without its flag");
            return -1;
        }
        if ((f->flags & FLAG_TIMESTAMP) && (f->timestamp == 0 || f->timestamp >= ((uint64_t)1 << 63))) {
            invalid(index, "'timestamp_ms' must be an integer from 1 to 2**63-1 (epoch milliseconds)");
            return -1;
        }
    }
    f->topic_at = *pos + RECORD_HEAD;
    f->key_at = f->topic_at + f->topic_len;
    f->value_at = f->key_at + f->key_len;
    size_t end = f->value_at + f->value_len;
    if (end > size) {
        invalid(index, "truncated: topic, key and value pass the end of the body");
        return -1;
    }
    if (validate) {
        if (f->flags & FLAG_TOPIC) {
            if (!valid_topic(p + f->topic_at, f->topic_len)) {
                invalid(index, "'topic' is not a valid Kafka topic name (1-249 of letters, "
                               "digits, '.', '_', '-'; not '.' or '..')");
                return -1;
            }
        } else if (!has_default) {
            invalid(index, "no 'topic' and no default topic: add 'topic' or set KAFKA_TOPIC");
            return -1;
        }
    }
    f->headers_at = end;
    for (unsigned n = 0; n < f->header_count; n++) {
        if (end + HEADER_HEAD > size) {
            invalid(index, "truncated: header %u of %u passes the end of the body", n, f->header_count);
            return -1;
        }
        size_t name_len = get16(p + end), value_len = get32(p + end + 2);
        size_t name_at = end + HEADER_HEAD;
        end = name_at + name_len + value_len;
        if (end > size) {
            invalid(index, "truncated: header %u of %u passes the end of the body", n, f->header_count);
            return -1;
        }
        const char *problem = validate ? bad_header_name(p + name_at, name_len) : NULL;
        if (problem != NULL) { invalid(index, "%s", problem); return -1; }
    }
    *pos = end;
    return 0;
}

static int body_count(const unsigned char *p, size_t size, uint32_t *count) {
    if (size < BODY_HEAD) {
        invalid(-1, "a framed body starts with an %d-byte header; this one has %zu bytes", BODY_HEAD, size);
        return -1;
    }
    if (memcmp(p, "KRF\x01", 4) != 0) { invalid(-1, "not a framed body (magic)"); return -1; }
    *count = get32(p + 4);
    if (*count > (size - BODY_HEAD) / RECORD_HEAD) {
        invalid(-1, "the body announces %u records but its %zu bytes hold fewer", *count, size);
        return -1;
    }
    return 0;
}

static PyObject *check(PyObject *module, PyObject *args) {
    Py_buffer view;
    int has_default;
    if (!PyArg_ParseTuple(args, "y*p", &view, &has_default)) return NULL;
    const unsigned char *p = view.buf;
    size_t size = (size_t)view.len, pos = BODY_HEAD;
    uint32_t count;
    PyObject *result = NULL;
    if (body_count(p, size, &count) < 0) goto done;
    if (count == 0) { invalid(-1, "no records in the request"); goto done; }
    Fields f;
    for (uint32_t i = 0; i < count; i++)
        if (read_record(p, size, &pos, i, has_default, 1, &f) < 0) goto done;
    if (pos != size) { invalid(-1, "%zu bytes after the last of the %u records", size - pos, count); goto done; }
    result = PyLong_FromUnsignedLong(count);
done:
    PyBuffer_Release(&view);
    return result;
}

/* -- produce_all ---------------------------------------------------------------------- */

static PyObject *bytes_or_none(const unsigned char *p, size_t at, size_t len, int present) {
    if (!present) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)p + at, (Py_ssize_t)len);
}

static PyObject *headers_of(const unsigned char *p, const Fields *f, PyObject *id) {
    PyObject *list = PyList_New(f->header_count + 1);
    if (list == NULL) return NULL;
    size_t at = f->headers_at;
    for (unsigned n = 0; n < f->header_count; n++) {
        size_t name_len = get16(p + at), value_len = get32(p + at + 2);
        size_t name_at = at + HEADER_HEAD;
        PyObject *pair = Py_BuildValue("(Ny#)",
            PyUnicode_DecodeUTF8((const char *)p + name_at, (Py_ssize_t)name_len, "strict"),
            (const char *)p + name_at + name_len, (Py_ssize_t)value_len);
        if (pair == NULL) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, n, pair);
        at = name_at + name_len + value_len;
    }
    PyObject *pair = PyTuple_Pack(2, id_header, id);
    if (pair == NULL) { Py_DECREF(list); return NULL; }
    PyList_SET_ITEM(list, f->header_count, pair);
    return list;
}

static PyObject *produce_all(PyObject *module, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start;
    PyObject *produce, *default_topic, *on_delivery;
    const char *prefix;
    unsigned long long first_id;
    if (!PyArg_ParseTuple(args, "y*nOOsKO", &view, &start, &produce, &default_topic, &prefix,
                          &first_id, &on_delivery))
        return NULL;
    const unsigned char *p = view.buf;
    size_t size = (size_t)view.len, pos = BODY_HEAD;
    uint32_t count;
    PyObject *result = NULL, *topic = NULL;
    size_t topic_at = 0, topic_len = 0;  /* the bytes ``topic`` was decoded from */
    if (body_count(p, size, &count) < 0) goto done;
    Py_ssize_t i;
    for (i = 0; i < (Py_ssize_t)count; i++) {
        Fields f;
        if (read_record(p, size, &pos, i, 1, 0, &f) < 0) goto done;
        if (i < start) continue;
        if (!(f.flags & FLAG_TOPIC)) {
            Py_XSETREF(topic, Py_NewRef(default_topic));
            topic_len = 0;
        } else if (topic == NULL || topic_len != f.topic_len
                   || memcmp(p + topic_at, p + f.topic_at, f.topic_len) != 0) {
            Py_XSETREF(topic, PyUnicode_DecodeUTF8((const char *)p + f.topic_at, (Py_ssize_t)f.topic_len, "strict"));
            if (topic == NULL) goto done;
            topic_at = f.topic_at;
            topic_len = f.topic_len;
        }
        char id[96];
        int id_len = snprintf(id, sizeof id, "%.64s-%08llx", prefix, first_id + (unsigned long long)i);
        PyObject *id_bytes = PyBytes_FromStringAndSize(id, id_len);
        PyObject *value = bytes_or_none(p, f.value_at, f.value_len, !(f.flags & FLAG_VALUE_NULL));
        PyObject *key = bytes_or_none(p, f.key_at, f.key_len, f.flags & FLAG_KEY);
        PyObject *headers = id_bytes ? headers_of(p, &f, id_bytes) : NULL;
        PyObject *timestamp = PyLong_FromUnsignedLongLong(f.flags & FLAG_TIMESTAMP ? f.timestamp : 0);
        PyObject *call = NULL;
        if (value && key && headers && timestamp) {
            PyObject *argv[6] = {topic, value, key, headers, on_delivery, timestamp};
            call = PyObject_Vectorcall(produce, argv, 1, kwnames);
        }
        Py_XDECREF(id_bytes);
        Py_XDECREF(value);
        Py_XDECREF(key);
        Py_XDECREF(headers);
        Py_XDECREF(timestamp);
        if (call == NULL) {
            if (PyErr_ExceptionMatches(PyExc_BufferError)) { PyErr_Clear(); break; }
            goto done;
        }
        Py_DECREF(call);
    }
    result = PyLong_FromSsize_t(i);
done:
    Py_XDECREF(topic);
    PyBuffer_Release(&view);
    return result;
}

/* -- Settle --------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t outstanding;
    PyObject *failed;
    vectorcallfunc vectorcall;
} Settle;

static PyObject *settle_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kw) {
    Settle *s = (Settle *)self;
    if (PyVectorcall_NARGS(nargsf) != 2 || kw != NULL) {
        PyErr_SetString(PyExc_TypeError, "Settle takes (error, message)");
        return NULL;
    }
    s->outstanding--;
    if (args[0] != Py_None) {
        PyObject *pair = PyTuple_Pack(2, args[0], args[1]);
        if (pair == NULL || PyList_Append(s->failed, pair) < 0) { Py_XDECREF(pair); return NULL; }
        Py_DECREF(pair);
    }
    Py_RETURN_NONE;
}

static PyObject *settle_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "n", &count)) return NULL;
    Settle *s = (Settle *)type->tp_alloc(type, 0);
    if (s == NULL) return NULL;
    s->outstanding = count;
    s->failed = PyList_New(0);
    s->vectorcall = settle_call;
    if (s->failed == NULL) { Py_DECREF(s); return NULL; }
    return (PyObject *)s;
}

static void settle_dealloc(PyObject *self) {
    Py_XDECREF(((Settle *)self)->failed);
    Py_TYPE(self)->tp_free(self);
}

static PyMemberDef settle_members[] = {
    {"outstanding", T_PYSSIZET, offsetof(Settle, outstanding), READONLY, "reports still to come"},
    {"failed", T_OBJECT, offsetof(Settle, failed), READONLY, "failed reports: (error, message)"},
    {NULL},
};

static PyTypeObject SettleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay_accel.Settle",
    .tp_basicsize = sizeof(Settle),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Settle, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = settle_new,
    .tp_dealloc = settle_dealloc,
    .tp_members = settle_members,
};

/* -- module --------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS, "the framed body of plain records, or None"},
    {"check", check, METH_VARARGS, "validate a framed body: its record count"},
    {"produce_all", produce_all, METH_VARARGS, "produce a checked body's records"},
    {NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "relay_accel", NULL, -1, methods};

PyMODINIT_FUNC PyInit_relay_accel(void) {
    if (PyType_Ready(&SettleType) < 0) return NULL;
    key_name = PyUnicode_InternFromString("key");
    value_name = PyUnicode_InternFromString("value");
    id_header = PyUnicode_InternFromString("x-relay-id");
    zero = PyLong_FromLong(0);
    kwnames = Py_BuildValue("(sssss)", "value", "key", "headers", "on_delivery", "timestamp");
    if (!key_name || !value_name || !id_header || !zero || !kwnames) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    Py_INCREF(&SettleType);
    if (PyModule_AddObject(m, "Settle", (PyObject *)&SettleType) < 0) return NULL;
    return m;
}
