/* ObservedCall: the request path of an observed model (``ObservedModel.run``), in C.
 *
 * Why C: on the request path every Python-level operation runs cold (the engine has just evicted
 * the interpreter's code and data from the caches), so the wrapper's two clock reads, latency
 * append and random draw cost ~0.6 us in place on a 30 us MNIST CNN call (2 %) although ``timeit``
 * puts them at ~0.15 us. Here they are one C call: a clock read, the engine call, a clock read, an
 * append and a xorshift draw. The sampled request (1 % by default) is copied here too, as the same
 * ``(name, bytes, dtype, shape)`` tuples as ``_frozen.frozen`` (numpy's own ``tobytes``/``copy``).
 *
 * The pure-Python closure in ``_observe.py`` does the same and is used where this module was not
 * built (it is an optional extension: a pip install without a compiler still works).
 * Tests run both and check that they log, count and fail alike.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *validate;      /* callable or None: inputs -> engine feed */
    PyObject *run;           /* callable: feed -> dict of outputs */
    PyObject *record;        /* callable(float seconds): the series' latency append */
    PyObject *failed;        /* callable(str exception name): the series' error count */
    PyObject *freeze;        /* callable(tensors) -> frozen list: for what is not a dict of arrays */
    PyObject *log_queue;     /* the log mailbox's deque */
    PyObject *log_append;    /* log_queue.append, bound once */
    PyObject *starved;       /* callable(): the log mailbox was full */
    PyObject *offer_shadow;  /* callable(frozen inputs, frozen outputs) */
    Py_ssize_t log_capacity;
    double log_rate;
    double shadow_rate;
    uint64_t state;          /* xorshift64* state, never 0 */
} ObservedCall;

static PyObject *str_dtype, *str_hasobject, *str_shape, *str_tobytes, *str_copy, *str_name;

static inline int64_t
perf_counter_ns(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    (void)PyTime_PerfCounterRaw(&t);
    return (int64_t)t;
#else
    return (int64_t)_PyTime_GetPerfCounter();  /* what time.perf_counter() reads */
#endif
}

/* A draw in [0, 1): xorshift64* (Vigna), 53 high bits. Under the GIL, like random.random(). */
static inline double
next_draw(ObservedCall *self)
{
    uint64_t x = self->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    self->state = x;
    return (double)((x * UINT64_C(2685821657736338717)) >> 11) * (1.0 / 9007199254740992.0);
}

/* (name, bytes, dtype, shape), or (name, copy, None, shape) for object arrays (their bytes are
 * pointers). NULL with AttributeError set when ``value`` is not an array. */
static PyObject *
frozen_array(PyObject *name, PyObject *value)
{
    PyObject *dtype = NULL, *shape = NULL, *data = NULL, *result = NULL;
    int hasobject;
    if ((dtype = PyObject_GetAttr(value, str_dtype)) == NULL)
        goto done;
    PyObject *flag = PyObject_GetAttr(dtype, str_hasobject);
    if (flag == NULL)
        goto done;
    hasobject = PyObject_IsTrue(flag);
    Py_DECREF(flag);
    if (hasobject < 0 || (shape = PyObject_GetAttr(value, str_shape)) == NULL)
        goto done;
    data = PyObject_CallMethodNoArgs(value, hasobject ? str_copy : str_tobytes);
    if (data == NULL)
        goto done;
    result = PyTuple_Pack(4, name, data, hasobject ? Py_None : dtype, shape);
done:
    Py_XDECREF(dtype);
    Py_XDECREF(shape);
    Py_XDECREF(data);
    return result;
}

/* ``_frozen.frozen`` for a dict of arrays; anything else (or a value that is not an array)
 * goes to the Python ``freeze`` callable, which validates first. */
static PyObject *
frozen(ObservedCall *self, PyObject *tensors)
{
    if (PyDict_CheckExact(tensors)) {
        PyObject *list = PyList_New(0), *name, *value;
        Py_ssize_t pos = 0;
        if (list == NULL)
            return NULL;
        while (PyDict_Next(tensors, &pos, &name, &value)) {
            /* PyDict_Next lends its references: hold them while numpy's methods run (another thread
             * may change the caller's dict meanwhile; the copy then has what was there when read). */
            Py_INCREF(name);
            Py_INCREF(value);
            PyObject *item = frozen_array(name, value);
            Py_DECREF(name);
            Py_DECREF(value);
            if (item == NULL || PyList_Append(list, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(list);
                if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                    return NULL;
                PyErr_Clear();
                goto fallback;
            }
            Py_DECREF(item);
        }
        return list;
    }
fallback:
    return PyObject_CallOneArg(self->freeze, tensors);
}

/* The sampled request: copied before the caller can reuse its buffers, then queued for the log
 * (or counted as shed) and offered to the shadow. Returns 0, or -1 with an exception set. */
static int
sample(ObservedCall *self, PyObject *inputs, PyObject *outputs, int64_t start, double elapsed, double draw)
{
    int status = -1;
    PyObject *inputs_copy = NULL, *outputs_copy = NULL, *r;
    if ((inputs_copy = frozen(self, inputs)) == NULL || (outputs_copy = frozen(self, outputs)) == NULL)
        goto done;
    if (draw < self->log_rate) {
        Py_ssize_t queued = PyObject_Size(self->log_queue);
        if (queued < 0)
            goto done;
        if (queued < self->log_capacity) {
            PyObject *item = Py_BuildValue("(OOdd)", inputs_copy, outputs_copy, (double)start / 1e9, elapsed);
            if (item == NULL)
                goto done;
            r = PyObject_CallOneArg(self->log_append, item);
            Py_DECREF(item);
        } else {
            r = PyObject_CallNoArgs(self->starved);
        }
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    if (draw < self->shadow_rate) {
        PyObject *args[2] = {inputs_copy, outputs_copy};
        if ((r = PyObject_Vectorcall(self->offer_shadow, args, 2, NULL)) == NULL)
            goto done;
        Py_DECREF(r);
    }
    status = 0;
done:
    Py_XDECREF(inputs_copy);
    Py_XDECREF(outputs_copy);
    return status;
}

/* A failed request: count it under its exception's class name, then let the exception go on. */
static void
count_failure(ObservedCall *self)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyObject *name = type ? PyObject_GetAttr(type, str_name) : NULL;
    PyObject *r = name ? PyObject_CallOneArg(self->failed, name) : NULL;
    Py_XDECREF(name);
    Py_XDECREF(r);
    if (r == NULL)
        PyErr_Clear();  /* the request's own error is the one to report */
    PyErr_Restore(type, value, traceback);
}

static PyObject *
observed_call(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    ObservedCall *self = (ObservedCall *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "run() takes one argument: the inputs");
        return NULL;
    }
    PyObject *inputs = args[0], *outputs;
    int64_t start = perf_counter_ns();
    if (self->validate != Py_None) {
        PyObject *feed = PyObject_CallOneArg(self->validate, inputs);
        if (feed == NULL) {
            count_failure(self);
            return NULL;
        }
        outputs = PyObject_CallOneArg(self->run, feed);
        Py_DECREF(feed);
    } else {
        outputs = PyObject_CallOneArg(self->run, inputs);
    }
    if (outputs == NULL) {
        count_failure(self);
        return NULL;
    }
    double elapsed = (double)(perf_counter_ns() - start) / 1e9;
    PyObject *seconds = PyFloat_FromDouble(elapsed), *r = NULL;
    if (seconds != NULL) {
        r = PyObject_CallOneArg(self->record, seconds);
        Py_DECREF(seconds);
    }
    if (r == NULL) {
        Py_DECREF(outputs);
        return NULL;
    }
    Py_DECREF(r);
    double draw = next_draw(self);
    if ((draw < self->log_rate || draw < self->shadow_rate)
            && sample(self, inputs, outputs, start, elapsed, draw) < 0) {
        Py_DECREF(outputs);
        return NULL;
    }
    return outputs;
}

static int
observed_call_init(ObservedCall *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"validate", "run", "record", "failed", "freeze", "log_queue", "log_capacity",
                               "starved", "offer_shadow", "log_rate", "shadow_rate", "seed", NULL};
    PyObject *validate, *run, *record, *failed, *freeze, *log_queue, *starved, *offer_shadow, *log_append;
    Py_ssize_t log_capacity;
    double log_rate, shadow_rate;
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOOOOOnOOddK", keywords, &validate, &run, &record, &failed,
                                     &freeze, &log_queue, &log_capacity, &starved, &offer_shadow, &log_rate,
                                     &shadow_rate, &seed))
        return -1;
    if ((log_append = PyObject_GetAttrString(log_queue, "append")) == NULL)
        return -1;
    Py_XSETREF(self->validate, Py_NewRef(validate));
    Py_XSETREF(self->run, Py_NewRef(run));
    Py_XSETREF(self->record, Py_NewRef(record));
    Py_XSETREF(self->failed, Py_NewRef(failed));
    Py_XSETREF(self->freeze, Py_NewRef(freeze));
    Py_XSETREF(self->log_queue, Py_NewRef(log_queue));
    Py_XSETREF(self->log_append, log_append);
    Py_XSETREF(self->starved, Py_NewRef(starved));
    Py_XSETREF(self->offer_shadow, Py_NewRef(offer_shadow));
    self->log_capacity = log_capacity;
    self->log_rate = log_rate;
    self->shadow_rate = shadow_rate;
    self->state = seed ? (uint64_t)seed : UINT64_C(0x9E3779B97F4A7C15);
    self->vectorcall = observed_call;
    return 0;
}

static int
observed_call_traverse(ObservedCall *self, visitproc visit, void *arg)
{
    Py_VISIT(self->validate);
    Py_VISIT(self->run);
    Py_VISIT(self->record);
    Py_VISIT(self->failed);
    Py_VISIT(self->freeze);
    Py_VISIT(self->log_queue);
    Py_VISIT(self->log_append);
    Py_VISIT(self->starved);
    Py_VISIT(self->offer_shadow);
    return 0;
}

static int
observed_call_clear(ObservedCall *self)
{
    Py_CLEAR(self->validate);
    Py_CLEAR(self->run);
    Py_CLEAR(self->record);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->freeze);
    Py_CLEAR(self->log_queue);
    Py_CLEAR(self->log_append);
    Py_CLEAR(self->starved);
    Py_CLEAR(self->offer_shadow);
    return 0;
}

static void
observed_call_dealloc(ObservedCall *self)
{
    PyObject_GC_UnTrack(self);
    observed_call_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
observed_call_get_run(ObservedCall *self, void *closure)
{
    return Py_NewRef(self->run ? self->run : Py_None);
}

static PyMemberDef observed_call_members[] = {
    {"log_rate", T_DOUBLE, offsetof(ObservedCall, log_rate), READONLY,
     "fraction of requests copied to the prediction log"},
    {"shadow_rate", T_DOUBLE, offsetof(ObservedCall, shadow_rate), 0,
     "fraction of requests offered to the shadow (0 without one)"},
    {NULL}
};

static PyGetSetDef observed_call_getset[] = {
    {"engine_run", (getter)observed_call_get_run, NULL, "the engine's run this wraps", NULL},
    {NULL}
};

static PyTypeObject ObservedCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "edgewise.device_runtime._observed_call.ObservedCall",
    .tp_doc = "run(inputs) of an observed model: times, counts and samples the wrapped engine call.",
    .tp_basicsize = sizeof(ObservedCall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)observed_call_init,
    .tp_dealloc = (destructor)observed_call_dealloc,
    .tp_traverse = (traverseproc)observed_call_traverse,
    .tp_clear = (inquiry)observed_call_clear,
    .tp_vectorcall_offset = offsetof(ObservedCall, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_members = observed_call_members,
    .tp_getset = observed_call_getset,
};

static struct PyModuleDef observed_call_module = {
    PyModuleDef_HEAD_INIT, "_observed_call", "The request path of an observed model, in C.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__observed_call(void)
{
    if ((str_dtype = PyUnicode_InternFromString("dtype")) == NULL
            || (str_hasobject = PyUnicode_InternFromString("hasobject")) == NULL
            || (str_shape = PyUnicode_InternFromString("shape")) == NULL
            || (str_tobytes = PyUnicode_InternFromString("tobytes")) == NULL
            || (str_copy = PyUnicode_InternFromString("copy")) == NULL
            || (str_name = PyUnicode_InternFromString("__name__")) == NULL)
        return NULL;
    if (PyType_Ready(&ObservedCallType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&observed_call_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "ObservedCall", (PyObject *)&ObservedCallType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
