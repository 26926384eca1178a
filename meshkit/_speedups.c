/* meshkit._speedups: meshkit's per-request hot paths in C. Each has a Python twin that
   runs when the extension is not built, and that its tests hold it to:

   - encode_span: the OTLP encoding of one ended span (meshkit/_otlp.py SpanEncoder._span);
   - ObservedSend: the send wrapper TelemetryMiddleware gives the app (_ObservedSend);
   - HistogramObserver: LoopHistogram.observe (meshkit/_loopmetrics.py).

   Every sampled request ends at least one span, and its OTLP protobuf bytes cost ~1.5 us
   of bytecode in meshkit/_otlp.py (struct packs, memo lookups, a join of nine parts),
   several times that on a loaded server. Here the same bytes are written into one buffer.

   encode_span(span) returns the span as a field of ``ScopeSpans`` (its tag and length,
   then the ``Span`` message), byte for byte what SpanEncoder.span writes, or None for anything it does not handle (events,
   links, a trace state, attribute values that are not str, bool, int64 or float, anything
   the span's limits dropped): the Python encoder then takes the span as before. It only
   reads the span, and never raises for a span it cannot encode. configure() hands over
   the objects it compares by identity (see _otlp.py), once. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <structmember.h>
#include <string.h>

static PyObject *unset_status;  /* meshkit._spans.UNSET_STATUS */
static PyObject *span_kinds;    /* SpanKind members, by OTLP value - 1 */
static PyObject *status_codes;  /* StatusCode members, by value */
static PyObject *bounded_list;  /* opentelemetry.sdk.util.BoundedList */
static PyObject *default_trace_state;  /* the API's DEFAULT_TRACE_STATE (empty) */
static PyTypeObject *mesh_span;       /* meshkit._spans.MeshSpan */

static PyObject *s_events, *s_links, *s_start_time, *s_end_time, *s_context, *s_parent,
    *s_name, *s_kind, *s_attributes, *s_dict, *s_status, *s_dropped_attributes,
    *s__dropped_attributes, *s_dropped,
    *s_status_code, *s_description;

/* --- an output buffer that starts on the stack ------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t length;
    Py_ssize_t capacity;
    char inline_data[768];
} Buffer;

static void buffer_init(Buffer *buffer) {
    buffer->data = buffer->inline_data;
    buffer->length = 0;
    buffer->capacity = sizeof(buffer->inline_data);
}

static void buffer_free(Buffer *buffer) {
    if (buffer->data != buffer->inline_data) {
        PyMem_Free(buffer->data);
    }
}

static int buffer_reserve(Buffer *buffer, Py_ssize_t more) {
    if (buffer->length + more <= buffer->capacity) {
        return 0;
    }
    Py_ssize_t capacity = buffer->capacity;
    while (capacity < buffer->length + more) {
        capacity *= 2;
    }
    char *data = PyMem_Malloc(capacity);
    if (data == NULL) {
        return -1;
    }
    memcpy(data, buffer->data, buffer->length);
    buffer_free(buffer);
    buffer->data = data;
    buffer->capacity = capacity;
    return 0;
}

/* The writers below assume the caller reserved enough room. */

static inline void put_byte(Buffer *buffer, uint8_t byte) {
    buffer->data[buffer->length++] = (char)byte;
}

static inline void put_bytes(Buffer *buffer, const char *bytes, Py_ssize_t size) {
    memcpy(buffer->data + buffer->length, bytes, size);
    buffer->length += size;
}

static inline void put_varint(Buffer *buffer, uint64_t value) {
    while (value > 0x7F) {
        put_byte(buffer, (uint8_t)((value & 0x7F) | 0x80));
        value >>= 7;
    }
    put_byte(buffer, (uint8_t)value);
}

static inline Py_ssize_t varint_size(uint64_t value) {
    Py_ssize_t size = 1;
    while (value > 0x7F) {
        value >>= 7;
        size++;
    }
    return size;
}

static inline void put_big_endian_64(Buffer *buffer, uint64_t value) {
    for (int shift = 56; shift >= 0; shift -= 8) {
        put_byte(buffer, (uint8_t)(value >> shift));
    }
}

static inline void put_little_endian_64(Buffer *buffer, uint64_t value) {
    for (int shift = 0; shift < 64; shift += 8) {
        put_byte(buffer, (uint8_t)(value >> shift));
    }
}

/* --- reading the span's fields --------------------------------------------------------

   Each reader returns 1 when it read a value, 0 when the span holds something left to
   the Python encoder, -1 on a Python error (also left to it, after clearing). */

static int read_u64(PyObject *number, uint64_t *out) {
    if (!PyLong_Check(number)) {
        return 0;
    }
    unsigned long long value = PyLong_AsUnsignedLongLong(number);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = value;
    return 1;
}

static int read_trace_id(PyObject *number, uint8_t out[16]) {
    if (!PyLong_Check(number)) {
        return 0;
    }
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t needed = PyLong_AsNativeBytes(
        number, out, 16,
        Py_ASNATIVEBYTES_BIG_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER |
            Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (needed < 0) {
        return -1;
    }
    return needed <= 16;
#else
    return _PyLong_AsByteArray((PyLongObject *)number, out, 16, 0, 0) < 0 ? -1 : 1;
#endif
}

/* A falsy events or links field: the dropped count it carries, or -1 for "not handled". */
static Py_ssize_t empty_list_dropped(PyObject *list) {
    if (PyTuple_CheckExact(list) && PyTuple_GET_SIZE(list) == 0) {
        return 0;
    }
    if ((PyObject *)Py_TYPE(list) != bounded_list || PyObject_Length(list) != 0) {
        PyErr_Clear();
        return -1;
    }
    PyObject *dropped = PyObject_GetAttr(list, s_dropped);
    if (dropped == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t count = PyLong_Check(dropped) ? PyLong_AsSsize_t(dropped) : -1;
    Py_DECREF(dropped);
    if (count < 0) {
        PyErr_Clear();
        return -1;
    }
    return count;
}

static Py_ssize_t index_of(PyObject *members, PyObject *member) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(members); i++) {
        if (PyTuple_GET_ITEM(members, i) == member) {
            return i;
        }
    }
    return -1;
}

/* --- attributes: field 9, a KeyValue each ------------------------------------------- */

static int put_attribute(Buffer *buffer, PyObject *key, PyObject *value) {
    if (!PyUnicode_Check(key)) {
        return 0;
    }
    Py_ssize_t key_size;
    const char *key_utf8 = PyUnicode_AsUTF8AndSize(key, &key_size);
    if (key_utf8 == NULL) {
        return -1;
    }
    /* AnyValue is a oneof: its field is written even for a default value. */
    uint8_t value_tag;
    uint64_t scalar = 0;
    const char *text = NULL;
    Py_ssize_t value_size;
    if (PyBool_Check(value)) {
        value_tag = 0x10;
        scalar = value == Py_True;
        value_size = 2;
    } else if (PyUnicode_Check(value)) {
        Py_ssize_t text_size;
        text = PyUnicode_AsUTF8AndSize(value, &text_size);
        if (text == NULL) {
            return -1;
        }
        value_tag = 0x0A;
        scalar = (uint64_t)text_size;
        value_size = 1 + varint_size(scalar) + text_size;
    } else if (PyLong_Check(value)) {
        int overflow;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow) {
            return 0;  /* outside int64: the stock encoder decides */
        }
        if (number == -1 && PyErr_Occurred()) {
            return -1;
        }
        value_tag = 0x18;
        scalar = (uint64_t)number;  /* a negative int64 goes as its two's complement */
        value_size = 1 + varint_size(scalar);
    } else if (PyFloat_Check(value)) {
        double number = PyFloat_AS_DOUBLE(value);
        value_tag = 0x21;
        memcpy(&scalar, &number, sizeof(scalar));
        value_size = 9;
    } else {
        return 0;
    }
    Py_ssize_t payload = 1 + varint_size((uint64_t)key_size) + key_size + 1 +
                         varint_size((uint64_t)value_size) + value_size;
    if (buffer_reserve(buffer, 1 + varint_size((uint64_t)payload) + payload) < 0) {
        return -1;
    }
    put_byte(buffer, 0x4A);
    put_varint(buffer, (uint64_t)payload);
    put_byte(buffer, 0x0A);
    put_varint(buffer, (uint64_t)key_size);
    put_bytes(buffer, key_utf8, key_size);
    put_byte(buffer, 0x12);
    put_varint(buffer, (uint64_t)value_size);
    put_byte(buffer, value_tag);
    if (text != NULL) {
        put_varint(buffer, scalar);
        put_bytes(buffer, text, (Py_ssize_t)scalar);
    } else if (value_tag == 0x21) {
        put_little_endian_64(buffer, scalar);
    } else {
        put_varint(buffer, scalar);
    }
    return 1;
}

static int put_attributes(Buffer *buffer, PyObject *attributes) {
    PyObject *dict = attributes;
    if (!PyDict_CheckExact(attributes)) {
        /* The SDK's BoundedAttributes keeps its items in a plain dict, ``_dict``. */
        dict = PyObject_GetAttr(attributes, s_dict);
        if (dict == NULL) {
            PyErr_Clear();
            return 0;
        }
    }
    int done = PyDict_CheckExact(dict) ? 1 : 0;
    Py_ssize_t position = 0;
    PyObject *key, *value;
    while (done == 1 && PyDict_Next(dict, &position, &key, &value)) {
        /* A str's UTF-8 lives in the str, which the dict keeps alive. */
        done = put_attribute(buffer, key, value);
    }
    if (dict != attributes) {
        Py_DECREF(dict);
    }
    return done;
}

/* --- status: field 15 ------------------------------------------------------------------ */

static int put_status(Buffer *buffer, PyObject *status) {
    if (status == unset_status) {
        if (buffer_reserve(buffer, 2) < 0) {
            return -1;
        }
        put_bytes(buffer, "\x7a\x00", 2);
        return 1;
    }
    int result = 0;
    PyObject *code = PyObject_GetAttr(status, s_status_code);
    PyObject *description = code ? PyObject_GetAttr(status, s_description) : NULL;
    if (description == NULL) {
        result = -1;
        goto done;
    }
    Py_ssize_t code_value = index_of(status_codes, code);
    const char *text = NULL;
    Py_ssize_t text_size = 0;
    if (code_value < 0 || (description != Py_None && !PyUnicode_Check(description))) {
        goto done;
    }
    if (description != Py_None) {
        text = PyUnicode_AsUTF8AndSize(description, &text_size);
        if (text == NULL) {
            result = -1;
            goto done;
        }
    }
    Py_ssize_t size = (text_size ? 1 + varint_size((uint64_t)text_size) + text_size : 0) +
                      (code_value ? 2 : 0);
    if (buffer_reserve(buffer, 1 + varint_size((uint64_t)size) + size) < 0) {
        result = -1;
        goto done;
    }
    put_byte(buffer, 0x7A);
    put_varint(buffer, (uint64_t)size);
    if (text_size) {
        put_byte(buffer, 0x12);
        put_varint(buffer, (uint64_t)text_size);
        put_bytes(buffer, text, text_size);
    }
    if (code_value) {
        put_byte(buffer, 0x18);
        put_byte(buffer, (uint8_t)code_value);
    }
    result = 1;
done:
    Py_XDECREF(code);
    Py_XDECREF(description);
    return result;
}

/* --- the span ------------------------------------------------------------------------- */

enum { EVENTS, LINKS, START, END, CONTEXT, PARENT, NAME, KIND, ATTRIBUTES, STATUS, FIELDS };

static int encode(Buffer *buffer, PyObject *span, PyObject **fields) {
    PyObject **names[FIELDS] = {&s_events, &s_links, &s_start_time, &s_end_time, &s_context,
                                &s_parent, &s_name, &s_kind, &s_attributes, &s_status};
    for (int i = 0; i < FIELDS; i++) {
        fields[i] = PyObject_GetAttr(span, *names[i]);
        if (fields[i] == NULL) {
            return -1;
        }
    }
    Py_ssize_t dropped_events = empty_list_dropped(fields[EVENTS]);
    Py_ssize_t dropped_links = empty_list_dropped(fields[LINKS]);
    if (dropped_events < 0 || dropped_links < 0) {
        return 0;
    }
    uint64_t start, end, span_id, parent_id = 0;
    int read;
    if ((read = read_u64(fields[START], &start)) != 1 || (read = read_u64(fields[END], &end)) != 1) {
        return read;
    }
    if (!start || !end) {
        return 0;
    }
    PyObject *context = fields[CONTEXT], *parent = fields[PARENT];
    if (!PyTuple_Check(context) || PyTuple_GET_SIZE(context) < 5) {
        return 0;
    }
    uint8_t trace_id[16];
    if ((read = read_trace_id(PyTuple_GET_ITEM(context, 0), trace_id)) != 1 ||
        (read = read_u64(PyTuple_GET_ITEM(context, 1), &span_id)) != 1) {
        return read;
    }
    PyObject *state = PyTuple_GET_ITEM(context, 4);
    int has_state = state == default_trace_state ? 0 : PyObject_IsTrue(state);
    if (has_state != 0) {
        return has_state < 0 ? -1 : 0;  /* a trace state: the Python encoder writes it */
    }
    int remote_parent = 0;
    if (parent != Py_None) {
        if (!PyTuple_Check(parent) || PyTuple_GET_SIZE(parent) < 3) {
            return 0;
        }
        if ((read = read_u64(PyTuple_GET_ITEM(parent, 1), &parent_id)) != 1) {
            return read;
        }
        remote_parent = PyTuple_GET_ITEM(parent, 2) == Py_True;
    }
    if (!PyUnicode_Check(fields[NAME])) {
        return 0;
    }
    Py_ssize_t name_size;
    const char *name = PyUnicode_AsUTF8AndSize(fields[NAME], &name_size);
    Py_ssize_t kind = index_of(span_kinds, fields[KIND]);
    if (name == NULL) {
        return -1;
    }
    if (kind < 0) {
        return 0;
    }
    /* A MeshSpan counts in a field what its property returns: no Python call for it. */
    PyObject *dropped = PyObject_GetAttr(
        span, PyObject_TypeCheck(span, mesh_span) ? s__dropped_attributes : s_dropped_attributes);
    if (dropped == NULL) {
        return -1;
    }
    int none_dropped = PyLong_Check(dropped) && PyObject_Not(dropped);
    Py_DECREF(dropped);
    if (!none_dropped || dropped_events || dropped_links) {
        return 0;  /* what the span's limits refused: rare, left to the Python encoder */
    }

    if (buffer_reserve(buffer, 36 + 10 + 1 + varint_size((uint64_t)name_size) + name_size +
                                   2 + 18) < 0) {
        return -1;
    }
    put_bytes(buffer, "\x0a\x10", 2);
    put_bytes(buffer, (const char *)trace_id, 16);
    put_bytes(buffer, "\x12\x08", 2);
    put_big_endian_64(buffer, span_id);
    if (parent != Py_None) {
        put_bytes(buffer, "\x22\x08", 2);
        put_big_endian_64(buffer, parent_id);
    }
    if (name_size) {
        put_byte(buffer, 0x2A);
        put_varint(buffer, (uint64_t)name_size);
        put_bytes(buffer, name, name_size);
    }
    put_byte(buffer, 0x30);
    put_byte(buffer, (uint8_t)(kind + 1));
    put_byte(buffer, 0x39);
    put_little_endian_64(buffer, start);
    put_byte(buffer, 0x41);
    put_little_endian_64(buffer, end);

    if ((read = put_attributes(buffer, fields[ATTRIBUTES])) != 1) {
        return read;
    }
    if ((read = put_status(buffer, fields[STATUS])) != 1) {
        return read;
    }
    /* Field 16, flags: the parent's is_remote is known (0x100), and whether it is (0x200). */
    if (buffer_reserve(buffer, 6) < 0) {
        return -1;
    }
    put_bytes(buffer, remote_parent ? "\x85\x01\x00\x03\x00\x00" : "\x85\x01\x00\x01\x00\x00", 6);
    return 1;
}

static PyObject *encode_span(PyObject *module, PyObject *span) {
    if (unset_status == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "meshkit._speedups.configure() was not called");
        return NULL;
    }
    PyObject *fields[FIELDS] = {NULL};
    Buffer buffer;
    buffer_init(&buffer);
    int done = encode(&buffer, span, fields);
    PyObject *result = NULL;
    if (done == 1) {
        /* As a field of ScopeSpans (spans = 2): its tag and length, then the message. */
        uint64_t length = (uint64_t)buffer.length;
        result = PyBytes_FromStringAndSize(NULL, 1 + varint_size(length) + buffer.length);
        if (result != NULL) {
            char *out = PyBytes_AS_STRING(result);
            *out++ = 0x12;
            while (length > 0x7F) {
                *out++ = (char)((length & 0x7F) | 0x80);
                length >>= 7;
            }
            *out++ = (char)length;
            memcpy(out, buffer.data, buffer.length);
        }
    }
    for (int i = 0; i < FIELDS; i++) {
        Py_XDECREF(fields[i]);
    }
    buffer_free(&buffer);
    if (result == NULL) {
        PyErr_Clear();  /* whatever went wrong here, the Python encoder meets it too */
        Py_RETURN_NONE;
    }
    return result;
}

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *status, *kinds, *codes, *list_type, *state, *span_type;
    if (!PyArg_ParseTuple(args, "OO!O!OOO!:configure", &status, &PyTuple_Type, &kinds,
                          &PyTuple_Type, &codes, &list_type, &state, &PyType_Type, &span_type)) {
        return NULL;
    }
    Py_XSETREF(mesh_span, (PyTypeObject *)Py_NewRef(span_type));
    Py_XSETREF(default_trace_state, Py_NewRef(state));
    Py_XSETREF(unset_status, Py_NewRef(status));
    Py_XSETREF(span_kinds, Py_NewRef(kinds));
    Py_XSETREF(status_codes, Py_NewRef(codes));
    Py_XSETREF(bounded_list, Py_NewRef(list_type));
    Py_RETURN_NONE;
}


/* --- ObservedSend: an ASGI ``send`` that notes the response's status and body size ---

   TelemetryMiddleware hands the app this in place of ``send``: a call is one C call where
   a Python closure costs a frame, and making one is one allocation. Same as
   meshkit.middleware.telemetry._ObservedSend, its fallback. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *send;
    long status;
    Py_ssize_t sent;
} ObservedSend;

static PyObject *s_type, *s_status_key, *s_body, *s_response_start;
static PyObject *one;  /* the int 1 */

static int note_message(ObservedSend *self, PyObject *message) {
    if (!PyDict_Check(message)) {
        return 0;  /* not an ASGI message: the server's send decides what to say */
    }
    PyObject *type = PyDict_GetItemWithError(message, s_type);
    if (type == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    int is_start = type == s_response_start ||
                   (PyUnicode_Check(type) && PyUnicode_Compare(type, s_response_start) == 0);
    if (is_start) {
        PyObject *status = PyDict_GetItemWithError(message, s_status_key);
        if (status != NULL && PyLong_Check(status)) {
            long value = PyLong_AsLong(status);
            if (value == -1 && PyErr_Occurred()) {
                return -1;
            }
            self->status = value;
        }
        return PyErr_Occurred() ? -1 : 0;
    }
    PyObject *body = PyDict_GetItemWithError(message, s_body);
    if (body == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_ssize_t size = PyBytes_CheckExact(body) ? PyBytes_GET_SIZE(body) : PyObject_Length(body);
    if (size < 0) {
        return -1;
    }
    self->sent += size;
    return 0;
}

static PyObject *observed_send_vectorcall(PyObject *callable, PyObject *const *args,
                                          size_t nargsf, PyObject *kwnames) {
    ObservedSend *self = (ObservedSend *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "send() takes one message");
        return NULL;
    }
    if (note_message(self, args[0]) < 0) {
        return NULL;
    }
    return PyObject_Vectorcall(self->send, args, 1, NULL);
}

static PyObject *observed_send_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *send;
    if (!PyArg_ParseTuple(args, "O:ObservedSend", &send)) {
        return NULL;
    }
    ObservedSend *self = (ObservedSend *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = observed_send_vectorcall;
    self->send = Py_NewRef(send);
    return (PyObject *)self;
}

static int observed_send_traverse(ObservedSend *self, visitproc visit, void *arg) {
    Py_VISIT(self->send);
    return 0;
}

static int observed_send_clear(ObservedSend *self) {
    Py_CLEAR(self->send);
    return 0;
}

static void observed_send_dealloc(ObservedSend *self) {
    PyObject_GC_UnTrack(self);
    observed_send_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef observed_send_members[] = {
    {"status", T_LONG, offsetof(ObservedSend, status), READONLY,
     "The response's status, 0 until it started."},
    {"sent", T_PYSSIZET, offsetof(ObservedSend, sent), READONLY,
     "Bytes of response body sent so far."},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(ObservedSend, vectorcall), READONLY},
    {NULL},
};

static PyTypeObject ObservedSendType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshkit._speedups.ObservedSend",
    .tp_doc = "ObservedSend(send): an ASGI send noting the response's status and body bytes.",
    .tp_basicsize = sizeof(ObservedSend),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = observed_send_new,
    .tp_dealloc = (destructor)observed_send_dealloc,
    .tp_traverse = (traverseproc)observed_send_traverse,
    .tp_clear = (inquiry)observed_send_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(ObservedSend, vectorcall),
    .tp_members = observed_send_members,
};

/* --- HistogramObserver: LoopHistogram.observe in C --------------------------------------

   observe(key, value) on the series ``by_key[key]`` (``[sum, count of bucket 0, ...,
   count past the last bound]``, made by ``add_series(key)`` when new): the count of the
   first bucket whose bound is >= value (bisect_left) goes up by one, the sum by value.
   What meshkit._loopmetrics.LoopHistogram.observe does, as one C call. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *by_key;
    PyObject *add_series;
    Py_ssize_t bound_count;
    double *bounds;
} HistogramObserver;

/* series[index] += amount, as Python adds (a float sum, int counts: the usual case). */
static int bump(PyObject *series, Py_ssize_t index, PyObject *amount) {
    PyObject *old = PyList_GET_ITEM(series, index);
    PyObject *new;
    if (PyFloat_CheckExact(old) && PyFloat_CheckExact(amount)) {
        new = PyFloat_FromDouble(PyFloat_AS_DOUBLE(old) + PyFloat_AS_DOUBLE(amount));
    } else {
        new = PyNumber_Add(old, amount);
    }
    if (new == NULL) {
        return -1;
    }
    PyList_SET_ITEM(series, index, new);
    Py_DECREF(old);
    return 0;
}

static PyObject *histogram_observe(PyObject *callable, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames) {
    HistogramObserver *self = (HistogramObserver *)callable;
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "observe() takes a key and a value");
        return NULL;
    }
    double value = PyFloat_AsDouble(args[1]);
    if (value == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *series = PyDict_GetItemWithError(self->by_key, args[0]);
    PyObject *added = NULL;
    if (series == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        series = added = PyObject_CallOneArg(self->add_series, args[0]);
        if (series == NULL) {
            return NULL;
        }
    }
    PyObject *result = NULL;
    if (!PyList_CheckExact(series) || PyList_GET_SIZE(series) != self->bound_count + 2) {
        PyErr_SetString(PyExc_TypeError, "not a series of this histogram");
        goto done;
    }
    Py_ssize_t low = 0, high = self->bound_count;
    while (low < high) {
        Py_ssize_t middle = (low + high) / 2;
        if (self->bounds[middle] < value) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    /* The count first, then the sum, as the Python version: a scrape copies the list. */
    if (bump(series, low + 1, one) == 0 && bump(series, 0, args[1]) == 0) {
        result = Py_NewRef(Py_None);
    }
done:
    Py_XDECREF(added);
    return result;
}

static PyObject *histogram_observer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *by_key, *bounds, *add_series;
    if (!PyArg_ParseTuple(args, "O!O!O:HistogramObserver", &PyDict_Type, &by_key,
                          &PyTuple_Type, &bounds, &add_series)) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(bounds);
    double *values = PyMem_Malloc(sizeof(double) * (count ? count : 1));
    if (values == NULL) {
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        values[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, i));
        if (values[i] == -1.0 && PyErr_Occurred()) {
            PyMem_Free(values);
            return NULL;
        }
    }
    HistogramObserver *self = (HistogramObserver *)type->tp_alloc(type, 0);
    if (self == NULL) {
        PyMem_Free(values);
        return NULL;
    }
    self->vectorcall = histogram_observe;
    self->by_key = Py_NewRef(by_key);
    self->add_series = Py_NewRef(add_series);
    self->bound_count = count;
    self->bounds = values;
    return (PyObject *)self;
}

static int histogram_observer_traverse(HistogramObserver *self, visitproc visit, void *arg) {
    Py_VISIT(self->by_key);
    Py_VISIT(self->add_series);
    return 0;
}

static int histogram_observer_clear(HistogramObserver *self) {
    Py_CLEAR(self->by_key);
    Py_CLEAR(self->add_series);
    return 0;
}

static void histogram_observer_dealloc(HistogramObserver *self) {
    PyObject_GC_UnTrack(self);
    histogram_observer_clear(self);
    PyMem_Free(self->bounds);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef histogram_observer_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(HistogramObserver, vectorcall), READONLY},
    {NULL},
};

static PyTypeObject HistogramObserverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshkit._speedups.HistogramObserver",
    .tp_doc = "HistogramObserver(by_key, bounds, add_series): observe(key, value) in C.",
    .tp_basicsize = sizeof(HistogramObserver),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = histogram_observer_new,
    .tp_dealloc = (destructor)histogram_observer_dealloc,
    .tp_traverse = (traverseproc)histogram_observer_traverse,
    .tp_clear = (inquiry)histogram_observer_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(HistogramObserver, vectorcall),
    .tp_members = histogram_observer_members,
};


/* --- enter_span: a span made current in a context of its own ---------------------------

   enter_span(var, context_type, key, span): ``var.set(context_type({key: span}))`` where
   ``context_type`` is the OpenTelemetry API's Context (a dict subclass that refuses
   item assignment): the instance is made empty and filled at the C level, without the
   dict display and the copy its constructor makes. Returns the ContextVar's token. */

static PyObject *empty_tuple;

static PyObject *enter_span(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyType_Check(args[1]) ||
        !PyType_IsSubtype((PyTypeObject *)args[1], &PyDict_Type)) {
        PyErr_SetString(PyExc_TypeError, "enter_span(var, context_type, key, span)");
        return NULL;
    }
    PyObject *context = PyDict_Type.tp_new((PyTypeObject *)args[1], empty_tuple, NULL);
    if (context == NULL) {
        return NULL;
    }
    PyObject *token = NULL;
    if (PyDict_SetItem(context, args[2], args[3]) == 0) {
        token = PyContextVar_Set(args[0], context);
    }
    Py_DECREF(context);
    return token;
}

static PyMethodDef methods[] = {
    {"encode_span", encode_span, METH_O,
     "An ended span as a ScopeSpans.spans field, or None when the Python encoder must."},
    {"enter_span", (PyCFunction)(void (*)(void))enter_span, METH_FASTCALL,
     "enter_span(var, context_type, key, span): var.set(context_type({key: span}))."},
    {"configure", configure, METH_VARARGS,
     "configure(unset_status, span_kinds, status_codes, bounded_list_type, default_trace_state, mesh_span_type)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "meshkit._speedups", "meshkit's hot paths in C.", -1, methods,
};

static int intern(PyObject **slot, const char *text) {
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__speedups(void) {
    if (intern(&s_events, "_events") || intern(&s_links, "_links") ||
        intern(&s_start_time, "_start_time") || intern(&s_end_time, "_end_time") ||
        intern(&s_context, "_context") || intern(&s_parent, "_parent") ||
        intern(&s_name, "_name") || intern(&s_kind, "_kind") ||
        intern(&s_attributes, "_attributes") || intern(&s_dict, "_dict") ||
        intern(&s_status, "_status") || intern(&s_dropped_attributes, "dropped_attributes") ||
        intern(&s__dropped_attributes, "_dropped_attributes") ||
        intern(&s_dropped, "dropped") || intern(&s_status_code, "_status_code") ||
        intern(&s_description, "_description") || intern(&s_type, "type") ||
        intern(&s_status_key, "status") || intern(&s_body, "body") ||
        intern(&s_response_start, "http.response.start")) {
        return NULL;
    }
    one = PyLong_FromLong(1);
    empty_tuple = PyTuple_New(0);
    if (one == NULL || empty_tuple == NULL || PyType_Ready(&ObservedSendType) < 0 || PyType_Ready(&HistogramObserverType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_definition);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "ObservedSend", (PyObject *)&ObservedSendType) < 0 ||
        PyModule_AddObjectRef(module, "HistogramObserver", (PyObject *)&HistogramObserverType) <
            0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
