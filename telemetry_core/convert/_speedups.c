/*
 * The common case of telemetry_core.convert.conversion, compiled.
 *
 * convert_histograms(histograms, indexes) walks a classic payload's
 * "histograms" object once and builds the v2 array of every histogram that
 * has the shape Firefox sends, exactly as conversion.histogram_array's fast
 * path does.  Everything else -- a name whose BucketIndex is not cached yet,
 * an unknown name, a missing statistic, a bool or float count, a bucket key
 * that is not a lower bound, any non-dict -- is left to the Python code,
 * which either gives the same array or names the problem.
 *
 * Returns (converted, pending): converted holds every name of histograms in
 * input order, with the array or None; pending lists the names the Python
 * code must still do.  Returns None when histograms is a dict subclass or
 * has a key that is not an exact str (only a Python caller can build
 * those): the Python code then does the whole payload.
 *
 * Safety: once a histogram's entries are read (borrowed from the payload),
 * nothing runs Python code until they are used -- only exact dicts, strs,
 * ints and floats are touched -- so nothing can change the payload under us.
 *
 * Built as an optional extension: without a C compiler the package installs
 * and converts the same records in pure Python, only slower.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define STATISTICS_COUNT 5

static PyObject *str_packed_bounds;
static PyObject *int_zero, *int_minus_one;

/* What a key of a packed histogram object is, for the fast path. */
enum key_kind {
    KEY_OTHER, KEY_SUM, KEY_LOG_SUM, KEY_LOG_SUM_SQUARES, KEY_SUM_SQUARES_LO, KEY_SUM_SQUARES_HI,
    KEY_VALUES, KEY_KINDS
};

static int
is_ascii(PyObject *key, const char *text, Py_ssize_t length)
{
    return PyUnicode_GET_LENGTH(key) == length && memcmp(PyUnicode_DATA(key), text, length) == 0;
}

/* key is an exact str. */
static enum key_kind
classify(PyObject *key)
{
    if (!PyUnicode_IS_COMPACT_ASCII(key)) {
        return KEY_OTHER;
    }
    switch (PyUnicode_GET_LENGTH(key)) {
    case 3:
        return is_ascii(key, "sum", 3) ? KEY_SUM : KEY_OTHER;
    case 6:
        return is_ascii(key, "values", 6) ? KEY_VALUES : KEY_OTHER;
    case 7:
        return is_ascii(key, "log_sum", 7) ? KEY_LOG_SUM : KEY_OTHER;
    case 14:
        return is_ascii(key, "sum_squares_lo", 14) ? KEY_SUM_SQUARES_LO
             : is_ascii(key, "sum_squares_hi", 14) ? KEY_SUM_SQUARES_HI : KEY_OTHER;
    case 15:
        return is_ascii(key, "log_sum_squares", 15) ? KEY_LOG_SUM_SQUARES : KEY_OTHER;
    default:
        return KEY_OTHER;
    }
}

/* A statistic of the fast path is an int or a float, not a bool or anything else. */
static int
is_statistic(PyObject *value)
{
    return value != NULL && (PyLong_CheckExact(value) || PyFloat_CheckExact(value));
}

/*
 * The bucket of a values key: the last position whose bound is the key's
 * number, or -1.  A key names a bound only in its canonical decimal form
 * (str(bound): "0" or digits without a leading zero), as the Python code's
 * dict of str(bound) -> position; anything longer than 18 digits is left
 * to Python.  bounds are sorted (equal bounds only next to each other).
 */
static Py_ssize_t
bucket_of(PyObject *key, const long long *bounds, Py_ssize_t n)
{
    if (!PyUnicode_IS_COMPACT_ASCII(key)) {
        return -1;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(key);
    const unsigned char *digit = PyUnicode_1BYTE_DATA(key);
    if (length < 1 || length > 18 || (length > 1 && digit[0] == '0')) {
        return -1;
    }
    long long number = 0;
    for (Py_ssize_t i = 0; i < length; i++) {
        if (digit[i] < '0' || digit[i] > '9') {
            return -1;
        }
        number = number * 10 + (digit[i] - '0');
    }
    /* The last position whose bound is <= number (bounds[0] is 0 <= number),
     * found without branches that the processor would mispredict. */
    const long long *base = bounds;
    Py_ssize_t length_left = n;
    while (length_left > 1) {
        Py_ssize_t half = length_left / 2;
        base = base[half] <= number ? base + half : base;
        length_left -= half;
    }
    return *base == number ? base - bounds : -1;
}

/* Fill row[0..n) from values; 1 when every entry had the fast shape, 0 otherwise. */
static int
fill_counts(PyObject *row, Py_ssize_t n, PyObject *values, const long long *bounds)
{
    Py_ssize_t cursor = 0;
    PyObject *key, *count;
    while (PyDict_Next(values, &cursor, &key, &count)) {
        if (!PyUnicode_CheckExact(key) || !PyLong_CheckExact(count)) {
            return 0;
        }
        int overflow = 0;
        long long number = PyLong_AsLongLongAndOverflow(count, &overflow);
        if (number == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        if (overflow != 0 || number < 0) {  /* MAX_COUNT is LLONG_MAX */
            return 0;
        }
        Py_ssize_t at = bucket_of(key, bounds, n);
        if (at < 0) {
            return 0;
        }
        PyObject *previous = PyList_GET_ITEM(row, at);
        PyList_SET_ITEM(row, at, Py_NewRef(count));
        Py_DECREF(previous);
    }
    return 1;
}

/*
 * The v2 array of one histogram: a new list, NULL with no error set when the
 * histogram is not in the fast shape, NULL with an error set on failure.
 * The fast shape is the one conversion.histogram_array's fast path takes:
 * sum plus either log_sum and log_sum_squares (and neither sum_squares_lo
 * nor sum_squares_hi) or sum_squares_lo and sum_squares_hi (and no
 * log_sum_squares), each an int or a float; values an object of exact-int
 * counts in 0..2**63-1 under keys that are lower bounds of the layout.
 */
static PyObject *
histogram_row(PyObject *histogram, PyObject *index)
{
    if (!PyDict_CheckExact(histogram)) {
        return NULL;
    }
    /* First, as reading an attribute of index could run Python code. */
    PyObject *row = NULL, *held[4] = {NULL};
    PyObject *packed = PyObject_GetAttr(index, str_packed_bounds);
    if (packed == NULL) {
        return NULL;
    }
    if (!PyBytes_CheckExact(packed)) {
        PyErr_SetString(PyExc_TypeError, "BucketIndex.packed_bounds must be bytes");
        goto done;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(packed) / (Py_ssize_t)sizeof(long long);
    if (n == 0) {
        goto done;  /* bounds too large to pack: not the fast shape */
    }
    /* Borrowed from histogram until held below. */
    PyObject *found[KEY_KINDS] = {NULL};
    Py_ssize_t cursor = 0;
    PyObject *key, *value;
    while (PyDict_Next(histogram, &cursor, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) {
            goto done;
        }
        found[classify(key)] = value;
    }
    PyObject *total = found[KEY_SUM], *first, *second, *values = found[KEY_VALUES];
    int log_shape = found[KEY_LOG_SUM] != NULL;
    if (log_shape) {
        first = found[KEY_LOG_SUM];
        second = found[KEY_LOG_SUM_SQUARES];
        if (found[KEY_SUM_SQUARES_LO] != NULL || found[KEY_SUM_SQUARES_HI] != NULL) {
            goto done;
        }
    }
    else {
        first = found[KEY_SUM_SQUARES_LO];
        second = found[KEY_SUM_SQUARES_HI];
        if (found[KEY_LOG_SUM_SQUARES] != NULL) {
            goto done;
        }
    }
    if (!is_statistic(total) || !is_statistic(first) || !is_statistic(second)
            || values == NULL || !PyDict_CheckExact(values)) {
        goto done;
    }
    /* Allocating can start the cyclic GC, whose finalizers are Python code. */
    held[0] = Py_NewRef(total);
    held[1] = Py_NewRef(first);
    held[2] = Py_NewRef(second);
    held[3] = Py_NewRef(values);
    row = PyList_New(n + STATISTICS_COUNT);
    if (row == NULL) {
        goto done;
    }
    /* Every slot holds a reference of its own, taken through the API. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyList_SET_ITEM(row, i, Py_NewRef(int_zero));
    }
    PyList_SET_ITEM(row, n, Py_NewRef(total));
    PyList_SET_ITEM(row, n + 1, Py_NewRef(log_shape ? first : int_minus_one));
    PyList_SET_ITEM(row, n + 2, Py_NewRef(log_shape ? second : int_minus_one));
    PyList_SET_ITEM(row, n + 3, Py_NewRef(log_shape ? int_minus_one : first));
    PyList_SET_ITEM(row, n + 4, Py_NewRef(log_shape ? int_minus_one : second));
    /* The row stays tracked by the cyclic GC: it is a list handed to plugins
     * and jobs, which may put containers into it and so make a cycle. */
    if (!fill_counts(row, n, values, (const long long *)PyBytes_AS_STRING(packed))) {
        Py_CLEAR(row);
    }
done:
    for (int i = 0; i < 4; i++) {
        Py_XDECREF(held[i]);
    }
    Py_DECREF(packed);
    return row;
}

static PyObject *
convert_histograms(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "convert_histograms(histograms: dict, indexes: dict)");
        return NULL;
    }
    PyObject *histograms = args[0], *indexes = args[1];
    if (!PyDict_CheckExact(histograms)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t cursor = 0;
    PyObject *name, *histogram;
    while (PyDict_Next(histograms, &cursor, &name, &histogram)) {
        if (!PyUnicode_CheckExact(name)) {
            Py_RETURN_NONE;
        }
    }
    PyObject *converted = PyDict_New();
    PyObject *pending = PyList_New(0);
    if (converted == NULL || pending == NULL) {
        goto error;
    }
    cursor = 0;
    while (PyDict_Next(histograms, &cursor, &name, &histogram)) {
        /* Held: looking name up in indexes, or reading index's attribute,
         * could run Python code if a caller passed strange objects. */
        Py_INCREF(name);
        Py_INCREF(histogram);
        PyObject *row = NULL;
        PyObject *index = PyDict_GetItemWithError(indexes, name);
        if (index != NULL) {
            Py_INCREF(index);
            row = histogram_row(histogram, index);
            Py_DECREF(index);
        }
        int failed = PyErr_Occurred() != NULL;
        if (!failed) {
            failed = row != NULL ? PyDict_SetItem(converted, name, row) < 0
                                 : PyDict_SetItem(converted, name, Py_None) < 0
                                   || PyList_Append(pending, name) < 0;
        }
        Py_XDECREF(row);
        Py_DECREF(histogram);
        Py_DECREF(name);
        if (failed) {
            goto error;
        }
    }
    return Py_BuildValue("(NN)", converted, pending);

error:
    Py_XDECREF(converted);
    Py_XDECREF(pending);
    return NULL;
}

/* payload_shape(obj, max_depth, max_key_length) -> None or (problem, value)
 *
 * Walks the exact dicts and lists of a decoded payload: ("too_deep", depth)
 * when containers nest deeper than max_depth (the payload itself is depth
 * 1), ("key_too_long", length) when an object key has more than
 * max_key_length characters; None when neither limit is reached.  Only
 * exact dict/list/str objects are looked at (what orjson.loads builds), so
 * no Python code runs during the walk.  The recursion stops at
 * max_depth + 1 levels. */
static int
shape_walk(PyObject *obj, Py_ssize_t depth, Py_ssize_t max_depth, Py_ssize_t max_key,
           const char **problem, Py_ssize_t *value)
{
    if (depth > max_depth) {
        *problem = "too_deep";
        *value = depth;
        return 1;
    }
    if (PyDict_CheckExact(obj)) {
        Py_ssize_t cursor = 0;
        PyObject *key, *item;
        while (PyDict_Next(obj, &cursor, &key, &item)) {
            if (PyUnicode_CheckExact(key) && PyUnicode_GET_LENGTH(key) > max_key) {
                *problem = "key_too_long";
                *value = PyUnicode_GET_LENGTH(key);
                return 1;
            }
            if ((PyDict_CheckExact(item) || PyList_CheckExact(item))
                && shape_walk(item, depth + 1, max_depth, max_key, problem, value)) {
                return 1;
            }
        }
    }
    else if (PyList_CheckExact(obj)) {
        Py_ssize_t size = PyList_GET_SIZE(obj);
        for (Py_ssize_t i = 0; i < size; i++) {
            PyObject *item = PyList_GET_ITEM(obj, i);
            if ((PyDict_CheckExact(item) || PyList_CheckExact(item))
                && shape_walk(item, depth + 1, max_depth, max_key, problem, value)) {
                return 1;
            }
        }
    }
    return 0;
}

static PyObject *
payload_shape(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyLong_Check(args[1]) || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "payload_shape(obj, max_depth: int, max_key_length: int)");
        return NULL;
    }
    Py_ssize_t max_depth = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_key = PyLong_AsSsize_t(args[2]);
    if ((max_depth == -1 || max_key == -1) && PyErr_Occurred()) {
        return NULL;
    }
    if (max_depth < 1 || max_depth > 100000 || max_key < 0) {
        PyErr_SetString(PyExc_ValueError, "payload_shape: max_depth must be 1..100000, max_key_length >= 0");
        return NULL;
    }
    const char *problem = NULL;
    Py_ssize_t value = 0;
    if ((PyDict_CheckExact(args[0]) || PyList_CheckExact(args[0]))
        && shape_walk(args[0], 1, max_depth, max_key, &problem, &value)) {
        return Py_BuildValue("(sn)", problem, value);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"convert_histograms", (PyCFunction)(void (*)(void))convert_histograms, METH_FASTCALL,
     "convert_histograms(histograms, indexes) -> (converted, pending) or None\n\n"
     "The v2 arrays of the histograms that have the shape Firefox sends; see\n"
     "telemetry_core.convert.conversion.convert_payload for the contract."},
    {"payload_shape", (PyCFunction)(void (*)(void))payload_shape, METH_FASTCALL,
     "payload_shape(obj, max_depth, max_key_length) -> None or (problem, value)\n\n"
     "The first nesting-depth or key-length limit a decoded payload breaks; see\n"
     "telemetry_core.store.process.limits for the contract."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "telemetry_core.convert._speedups",
    "Compiled fast path of telemetry_core.convert.conversion.", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    str_packed_bounds = PyUnicode_InternFromString("packed_bounds");
    int_zero = PyLong_FromLong(0);
    int_minus_one = PyLong_FromLong(-1);
    if (!str_packed_bounds || !int_zero || !int_minus_one) {
        return NULL;
    }
    return PyModule_Create(&module_definition);
}
