/* The canonical hash's text of a chunk of staged rows, from its columns' texts, without a Python
 * object per row or per value.
 *
 * ppmlops.data.ingest._canonical_columns turns each staged column into its canonical text (floats
 * as repr writes them, text as csv.writer writes it), column by column; a row's line is then
 * those texts joined by "," and ended by "\n". pyarrow's binary_join_element_wise does that in
 * two passes (the newline, then the commas); this does it in one.
 *
 * join_rows(columns, rows) -> bytes: `columns` a sequence of (offsets, data) pairs, the
 * offsets `rows + 1` native int32s (an Arrow string array's, its own offset applied) into the
 * bytes `data`. tests/unit/test_ingest_columns.py holds the result to the row-by-row writer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *join_rows(PyObject *self, PyObject *args) {
    PyObject *columns;
    Py_ssize_t rows;
    (void)self;
    if (!PyArg_ParseTuple(args, "On", &columns, &rows)) return NULL;
    PyObject *seq = PySequence_Fast(columns, "join_rows: columns must be a sequence of (offsets, data)");
    if (seq == NULL) return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = NULL;
    Py_buffer *views = NULL;
    Py_ssize_t held = 0;
    if (k < 1 || rows < 0) {
        PyErr_SetString(PyExc_ValueError, "join_rows: at least one column and a row count >= 0");
        goto done;
    }
    views = PyMem_Calloc((size_t)(2 * k), sizeof(Py_buffer));
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t size = rows * k; /* the separators and the newlines */
    for (Py_ssize_t c = 0; c < k; c++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, c);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "join_rows: each column is an (offsets, data) pair");
            goto done;
        }
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(pair, 0), &views[2 * c], PyBUF_SIMPLE) < 0) goto done;
        held++;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(pair, 1), &views[2 * c + 1], PyBUF_SIMPLE) < 0) goto done;
        held++;
        const int32_t *off = views[2 * c].buf;
        if (views[2 * c].len != (rows + 1) * (Py_ssize_t)sizeof(int32_t) || off[0] < 0 || off[rows] < off[0]
            || off[rows] > views[2 * c + 1].len) {
            PyErr_SetString(PyExc_ValueError, "join_rows: a column's offsets do not fit its rows and data");
            goto done;
        }
        for (Py_ssize_t r = 0; r < rows; r++) {
            if (off[r + 1] < off[r]) {
                PyErr_SetString(PyExc_ValueError, "join_rows: a column's offsets go backwards");
                goto done;
            }
        }
        size += off[rows] - off[0];
    }
    out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) goto done;
    char *w = PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows; r++) {
        for (Py_ssize_t c = 0; c < k; c++) {
            const int32_t *off = views[2 * c].buf;
            const char *data = views[2 * c + 1].buf;
            size_t len = (size_t)(off[r + 1] - off[r]);
            memcpy(w, data + off[r], len);
            w += len;
            *w++ = c + 1 < k ? ',' : '\n';
        }
    }
    Py_END_ALLOW_THREADS
done:
    for (Py_ssize_t i = 0; i < held; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"join_rows", join_rows, METH_VARARGS,
     "join_rows(columns, rows) -> bytes: each row's column texts joined by ',' and ended by '\\n'; "
     "columns are (int32 offsets, data) pairs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rowtext",
                                    "The canonical hash's text of staged rows (ppmlops.data.ingest).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rowtext(void) { return PyModule_Create(&module); }
