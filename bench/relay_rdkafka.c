/* The ring relay producing straight into librdkafka, measured by bench/alternatives.py
 * (path ring-rd): no Python object per record, on either side of librdkafka. Linked against
 * the librdkafka that confluent-kafka's wheel bundles; the few declarations it needs are
 * librdkafka's public API (rdkafka.h), written out here because the wheel ships no headers.
 *
 *   Producer(settings: dict[str, str])
 *       A librdkafka producer of its own; delivery reports settle the body they belong to.
 *   Producer.produce_body(body, start, default_topic, id_prefix, first_id, counter) -> int
 *       For a body relay_accel.check passed: each record from ``start`` on, copied into
 *       librdkafka from the body's bytes, with its own headers and an x-relay-id header
 *       "<id_prefix>-<first_id + index as 8 hex digits>". Returns the index it stopped at:
 *       the count, or where librdkafka's queue was full.
 *   Producer.poll(timeout_ms) -> int; Producer.flush(timeout_ms) -> int (still queued)
 *   Counter(count)
 *       One body's delivery reports: ``outstanding`` counts down, ``failed`` counts errors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

/* -- librdkafka's public API, as rdkafka.h declares it -------------------------------- */
typedef struct rd_kafka_s rd_kafka_t;
typedef struct rd_kafka_conf_s rd_kafka_conf_t;
typedef struct rd_kafka_topic_s rd_kafka_topic_t;
typedef struct rd_kafka_headers_s rd_kafka_headers_t;
typedef enum { RD_KAFKA_PRODUCER = 0 } rd_kafka_type_t;
typedef enum { RD_KAFKA_CONF_OK = 0 } rd_kafka_conf_res_t;
typedef int rd_kafka_resp_err_t;
#define RD_KAFKA_RESP_ERR__QUEUE_FULL (-184)
typedef struct rd_kafka_message_s {
    rd_kafka_resp_err_t err;
    rd_kafka_topic_t *rkt;
    int32_t partition;
    void *payload;
    size_t len;
    void *key;
    size_t key_len;
    int64_t offset;
    void *_private;  /* the message's opaque */
} rd_kafka_message_t;
enum { VTYPE_END = 0, VTYPE_TOPIC = 1, VTYPE_VALUE = 4, VTYPE_KEY = 5, VTYPE_OPAQUE = 6,
       VTYPE_MSGFLAGS = 7, VTYPE_TIMESTAMP = 8, VTYPE_HEADERS = 10 };
#define RD_KAFKA_MSG_F_COPY 0x2
rd_kafka_conf_t *rd_kafka_conf_new(void);
rd_kafka_conf_res_t rd_kafka_conf_set(rd_kafka_conf_t *, const char *, const char *, char *, size_t);
void rd_kafka_conf_set_dr_msg_cb(rd_kafka_conf_t *,
    void (*)(rd_kafka_t *, const rd_kafka_message_t *, void *));
void rd_kafka_conf_destroy(rd_kafka_conf_t *);
rd_kafka_t *rd_kafka_new(rd_kafka_type_t, rd_kafka_conf_t *, char *, size_t);
void rd_kafka_destroy(rd_kafka_t *);
int rd_kafka_poll(rd_kafka_t *, int);
rd_kafka_resp_err_t rd_kafka_flush(rd_kafka_t *, int);
int rd_kafka_outq_len(rd_kafka_t *);
rd_kafka_resp_err_t rd_kafka_producev(rd_kafka_t *, ...);
const char *rd_kafka_err2str(rd_kafka_resp_err_t);
rd_kafka_headers_t *rd_kafka_headers_new(size_t);
void rd_kafka_headers_destroy(rd_kafka_headers_t *);
rd_kafka_resp_err_t rd_kafka_header_add(rd_kafka_headers_t *, const char *, ssize_t, const void *,
                                        ssize_t);

#define FLAG_KEY 1
#define FLAG_VALUE_NULL 2
#define FLAG_TIMESTAMP 4
#define FLAG_TOPIC 8
#define BODY_HEAD 8
#define RECORD_HEAD 21
#define HEADER_HEAD 6

static inline uint32_t get16(const unsigned char *p) { return (uint32_t)(p[0] | p[1] << 8); }
static inline uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get64(const unsigned char *p) {
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* -- Counter -------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t outstanding;
    Py_ssize_t failed;
} Counter;

static PyObject *counter_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "n", &count)) return NULL;
    Counter *c = (Counter *)type->tp_alloc(type, 0);
    if (c != NULL) c->outstanding = count;
    return (PyObject *)c;
}

static PyMemberDef counter_members[] = {
    {"outstanding", T_PYSSIZET, offsetof(Counter, outstanding), READONLY, "reports still to come"},
    {"failed", T_PYSSIZET, offsetof(Counter, failed), READONLY, "failed reports"},
    {NULL},
};

static PyTypeObject CounterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay_rdkafka.Counter",
    .tp_basicsize = sizeof(Counter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = counter_new,
    .tp_members = counter_members,
};

/* Runs inside rd_kafka_poll/flush, which this module calls with the GIL held; the counter
 * is kept alive by the relay until its outstanding count reaches 0. */
static void on_report(rd_kafka_t *rk, const rd_kafka_message_t *message, void *opaque) {
    Counter *counter = (Counter *)message->_private;
    if (counter == NULL) return;
    counter->outstanding--;
    if (message->err) counter->failed++;
}

/* -- Producer ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    rd_kafka_t *rk;
} Producer;

static int producer_init(PyObject *self, PyObject *args, PyObject *kwargs) {
    PyObject *settings, *name, *value;
    if (!PyArg_ParseTuple(args, "O!", &PyDict_Type, &settings)) return -1;
    char error[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    Py_ssize_t pos = 0;
    while (PyDict_Next(settings, &pos, &name, &value)) {
        const char *n = PyUnicode_AsUTF8(name), *v = PyUnicode_AsUTF8(value);
        if (n == NULL || v == NULL) { rd_kafka_conf_destroy(conf); return -1; }
        if (rd_kafka_conf_set(conf, n, v, error, sizeof error) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            PyErr_Format(PyExc_ValueError, "%s", error);
            return -1;
        }
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_report);
    ((Producer *)self)->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, error, sizeof error);
    if (((Producer *)self)->rk == NULL) {
        rd_kafka_conf_destroy(conf);
        PyErr_Format(PyExc_RuntimeError, "%s", error);
        return -1;
    }
    return 0;
}

static void producer_dealloc(PyObject *self) {
    Producer *p = (Producer *)self;
    if (p->rk != NULL) {
        rd_kafka_flush(p->rk, 10000);
        rd_kafka_destroy(p->rk);
    }
    Py_TYPE(self)->tp_free(self);
}

static PyObject *produce_body(PyObject *self, PyObject *args) {
    Producer *p = (Producer *)self;
    Py_buffer view;
    Py_ssize_t start;
    const char *default_topic, *prefix;
    unsigned long long first_id;
    PyObject *counter;
    if (!PyArg_ParseTuple(args, "y*nssKO!", &view, &start, &default_topic, &prefix, &first_id,
                          &CounterType, &counter))
        return NULL;
    const unsigned char *b = view.buf;
    size_t size = (size_t)view.len, pos = BODY_HEAD;
    uint32_t count = size >= BODY_HEAD ? get32(b + 4) : 0;
    Py_ssize_t i;
    for (i = 0; i < (Py_ssize_t)count; i++) {
        if (pos + RECORD_HEAD > size) break;  /* relay_accel.check refused such a body */
        const unsigned char *h = b + pos;
        unsigned flags = h[0];
        size_t topic_len = get16(h + 1), key_len = get32(h + 3), value_len = get32(h + 7);
        unsigned header_count = get16(h + 11);
        uint64_t timestamp = get64(h + 13);
        size_t topic_at = pos + RECORD_HEAD, key_at = topic_at + topic_len;
        size_t value_at = key_at + key_len, end = value_at + value_len;
        size_t headers_at = end;
        for (unsigned n = 0; n < header_count; n++)
            end += HEADER_HEAD + get16(b + end) + get32(b + end + 2);
        pos = end;
        if (i < start) continue;
        char topic[256], id[96];
        if (flags & FLAG_TOPIC) {
            memcpy(topic, b + topic_at, topic_len);
            topic[topic_len] = 0;
        } else {
            snprintf(topic, sizeof topic, "%s", default_topic);
        }
        int id_len = snprintf(id, sizeof id, "%.64s-%08llx", prefix, first_id + (unsigned long long)i);
        /* The record's own headers, then x-relay-id, as confluent-kafka's produce() builds them;
         * librdkafka owns them once the message is queued. */
        rd_kafka_headers_t *headers = rd_kafka_headers_new(header_count + 1);
        size_t at = headers_at;
        for (unsigned n = 0; n < header_count; n++) {
            size_t name_len = get16(b + at), len = get32(b + at + 2);
            size_t name_at = at + HEADER_HEAD;
            rd_kafka_header_add(headers, (const char *)b + name_at, (ssize_t)name_len,
                                b + name_at + name_len, (ssize_t)len);
            at = name_at + name_len + len;
        }
        rd_kafka_header_add(headers, "x-relay-id", -1, id, id_len);
        rd_kafka_resp_err_t err = rd_kafka_producev(
            p->rk, VTYPE_TOPIC, topic, VTYPE_MSGFLAGS, RD_KAFKA_MSG_F_COPY,
            VTYPE_VALUE, (flags & FLAG_VALUE_NULL) ? NULL : (void *)(b + value_at), value_len,
            VTYPE_KEY, (flags & FLAG_KEY) ? (void *)(b + key_at) : NULL, key_len,
            VTYPE_TIMESTAMP, (int64_t)((flags & FLAG_TIMESTAMP) ? timestamp : 0),
            VTYPE_HEADERS, headers, VTYPE_OPAQUE, (void *)counter, VTYPE_END);
        if (err) rd_kafka_headers_destroy(headers);
        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
        if (err) {
            PyBuffer_Release(&view);
            return PyErr_Format(PyExc_RuntimeError, "produce: %s", rd_kafka_err2str(err));
        }
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(i);
}

static PyObject *producer_poll(PyObject *self, PyObject *args) {
    int timeout_ms;
    if (!PyArg_ParseTuple(args, "i", &timeout_ms)) return NULL;
    return PyLong_FromLong(rd_kafka_poll(((Producer *)self)->rk, timeout_ms));
}

static PyObject *producer_flush(PyObject *self, PyObject *args) {
    int timeout_ms;
    if (!PyArg_ParseTuple(args, "i", &timeout_ms)) return NULL;
    rd_kafka_flush(((Producer *)self)->rk, timeout_ms);
    return PyLong_FromLong(rd_kafka_outq_len(((Producer *)self)->rk));
}

static PyMethodDef producer_methods[] = {
    {"produce_body", produce_body, METH_VARARGS, "produce a checked body's records"},
    {"poll", producer_poll, METH_VARARGS, "serve delivery reports"},
    {"flush", producer_flush, METH_VARARGS, "deliver everything queued; what is left"},
    {NULL},
};

static PyTypeObject ProducerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay_rdkafka.Producer",
    .tp_basicsize = sizeof(Producer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = producer_init,
    .tp_dealloc = producer_dealloc,
    .tp_methods = producer_methods,
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "relay_rdkafka", NULL, -1, NULL};

PyMODINIT_FUNC PyInit_relay_rdkafka(void) {
    if (PyType_Ready(&CounterType) < 0 || PyType_Ready(&ProducerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    Py_INCREF(&CounterType);
    Py_INCREF(&ProducerType);
    if (PyModule_AddObject(m, "Counter", (PyObject *)&CounterType) < 0
        || PyModule_AddObject(m, "Producer", (PyObject *)&ProducerType) < 0)
        return NULL;
    return m;
}
