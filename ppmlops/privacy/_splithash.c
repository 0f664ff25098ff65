/* The split rule's hash of each line of a parsed CSV block, without a Python object per line.
 *
 * ppmlops.privacy.split hashes a record as pandas.util.hash_array does an object array of
 * bytes: SipHash-2-4 (keyed with the 16 bytes given) of the record's fields joined by \x1f, then
 * pandas' 64-bit finaliser. For a block whose lines are its records (no quoting: see
 * ppmlops.data.reading._BlockParser), a record's fields joined by \x1f are its line with each
 * delimiter byte read as \x1f. The Python path builds that bytes object per line (the block
 * translated, then split); this reads the block in place. Both give the same numbers:
 * tests/unit/test_split_accelerator.py holds this to pandas on random and edge-case lines.
 *
 * siphash_lines(data, eol, delimiter, key) -> (hashes, ends): for each part of data.split(eol)
 * (the empty part after a final eol dropped, as the reader drops it) its hash, a uint64, and
 * where it ends, an int64: the offset of its eol's last byte (one past the data for a last part
 * without an eol), which the reader keeps to find a line again. Native byte order.
 *
 * Where the CPU has AVX2 (and PPMLOPS_SPLITHASH_SCALAR is unset when the module is imported: the
 * tests run both paths) four lines are hashed at once; the module's `avx2` says which path runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

typedef struct {
    uint64_t v0, v1, v2, v3;
} sip_state;

static inline void sip_round(sip_state *s) {
    s->v0 += s->v1; s->v1 = ROTL(s->v1, 13); s->v1 ^= s->v0; s->v0 = ROTL(s->v0, 32);
    s->v2 += s->v3; s->v3 = ROTL(s->v3, 16); s->v3 ^= s->v2;
    s->v0 += s->v3; s->v3 = ROTL(s->v3, 21); s->v3 ^= s->v0;
    s->v2 += s->v1; s->v1 = ROTL(s->v1, 17); s->v1 ^= s->v2; s->v2 = ROTL(s->v2, 32);
}

static inline uint64_t load_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i]; /* compiled to one load on little-endian machines */
    return v;
}

/* Eight bytes of the line as a little-endian word, each delimiter byte read as 0x1f: the bytes
 * equal to the delimiter are found all at once (an exact zero-byte test on x ^ delimiters, which
 * carries nothing between bytes) and replaced through a mask. */
static inline uint64_t unit_word(uint64_t x, uint64_t delimiters) {
    const uint64_t low7 = 0x7F7F7F7F7F7F7F7FULL;
    uint64_t t = x ^ delimiters;
    uint64_t zero = ~(((t & low7) + low7) | t | low7); /* 0x80 in each byte of t that is 0 */
    uint64_t mask = (zero >> 7) * 0xFF;
    return (x & ~mask) | (0x1F1F1F1F1F1F1F1FULL & mask);
}

static inline sip_state sip_start(uint64_t k0, uint64_t k1) {
    sip_state s = {0x736f6d6570736575ULL ^ k0, 0x646f72616e646f6dULL ^ k1,
                   0x6c7967656e657261ULL ^ k0, 0x7465646279746573ULL ^ k1};
    return s;
}

static inline void sip_word(sip_state *s, uint64_t m) {
    s->v3 ^= m;
    sip_round(s);
    sip_round(s);
    s->v0 ^= m;
}

/* The last, partial word and the finalisation, then pandas' redistribution of the hash over the
 * 64-bit space (pandas.core.util.hashing). `in` is the line's start, `len` its length. */
static inline uint64_t sip_finish(sip_state *s, const uint8_t *in, size_t len, uint64_t delimiters) {
    uint8_t tail[8] = {0};
    memcpy(tail, in + (len - (len & 7)), len & 7);
    /* the zero bytes past the line's end stay zero: only a delimiter byte becomes 0x1f */
    uint64_t tail_mask = (len & 7) ? (~0ULL >> (64 - 8 * (len & 7))) : 0;
    uint64_t b = ((uint64_t)len) << 56 | (unit_word(load_le64(tail), delimiters) & tail_mask);
    s->v3 ^= b;
    sip_round(s);
    sip_round(s);
    s->v0 ^= b;
    s->v2 ^= 0xff;
    sip_round(s);
    sip_round(s);
    sip_round(s);
    sip_round(s);
    b = s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
    b ^= b >> 30;
    b *= 0xBF58476D1CE4E5B9ULL;
    b ^= b >> 27;
    b *= 0x94D049BB133111EBULL;
    b ^= b >> 31;
    return b;
}

static uint64_t siphash_line(const uint8_t *in, size_t len, uint64_t delimiters, uint64_t k0, uint64_t k1) {
    sip_state s = sip_start(k0, k1);
    for (size_t j = 0; j < len / 8; j++) sip_word(&s, unit_word(load_le64(in + 8 * j), delimiters));
    return sip_finish(&s, in, len, delimiters);
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define SPLITHASH_AVX2 1

/* Four lines at once in AVX2's four 64-bit lanes, for their words in common; each lane then
 * finishes alone. The same arithmetic as siphash_line, lane by lane (a rotation by 32 is a swap
 * of 32-bit halves; the delimiter bytes found by a byte compare and blended to 0x1f). Used only
 * where the CPU has AVX2 (checked at import): more of the CPU's units busy than one line's chain of
 * dependent operations keeps. */
#define ROTL4(x, b) _mm256_or_si256(_mm256_slli_epi64((x), (b)), _mm256_srli_epi64((x), 64 - (b)))
#define SWAP32(x) _mm256_shuffle_epi32((x), 0xB1)
#define ROUND4                                                                                        \
    do {                                                                                              \
        v0 = _mm256_add_epi64(v0, v1); v1 = ROTL4(v1, 13); v1 = _mm256_xor_si256(v1, v0); v0 = SWAP32(v0); \
        v2 = _mm256_add_epi64(v2, v3); v3 = ROTL4(v3, 16); v3 = _mm256_xor_si256(v3, v2);                \
        v0 = _mm256_add_epi64(v0, v3); v3 = ROTL4(v3, 21); v3 = _mm256_xor_si256(v3, v0);                \
        v2 = _mm256_add_epi64(v2, v1); v1 = ROTL4(v1, 17); v1 = _mm256_xor_si256(v1, v2); v2 = SWAP32(v2); \
    } while (0)

__attribute__((target("avx2"))) static void siphash_four(const uint8_t *const in[4], const size_t len[4],
                                                         uint64_t delimiters, uint64_t k0, uint64_t k1, uint64_t out[4]) {
    __m256i v0 = _mm256_set1_epi64x((long long)(0x736f6d6570736575ULL ^ k0));
    __m256i v1 = _mm256_set1_epi64x((long long)(0x646f72616e646f6dULL ^ k1));
    __m256i v2 = _mm256_set1_epi64x((long long)(0x6c7967656e657261ULL ^ k0));
    __m256i v3 = _mm256_set1_epi64x((long long)(0x7465646279746573ULL ^ k1));
    const __m256i delim = _mm256_set1_epi8((char)(delimiters & 0xFF)), unit = _mm256_set1_epi8(0x1F);
    size_t words = len[0] / 8;
    for (int lane = 1; lane < 4; lane++)
        if (len[lane] / 8 < words) words = len[lane] / 8;
    for (size_t j = 0; j < words; j++) {
        __m256i m = _mm256_set_epi64x((long long)load_le64(in[3] + 8 * j), (long long)load_le64(in[2] + 8 * j),
                                      (long long)load_le64(in[1] + 8 * j), (long long)load_le64(in[0] + 8 * j));
        m = _mm256_blendv_epi8(m, unit, _mm256_cmpeq_epi8(m, delim));
        v3 = _mm256_xor_si256(v3, m);
        ROUND4;
        ROUND4;
        v0 = _mm256_xor_si256(v0, m);
    }
    uint64_t a0[4], a1[4], a2[4], a3[4];
    _mm256_storeu_si256((__m256i *)a0, v0);
    _mm256_storeu_si256((__m256i *)a1, v1);
    _mm256_storeu_si256((__m256i *)a2, v2);
    _mm256_storeu_si256((__m256i *)a3, v3);
    for (int lane = 0; lane < 4; lane++) {
        sip_state s = {a0[lane], a1[lane], a2[lane], a3[lane]};
        for (size_t j = words; j < len[lane] / 8; j++) sip_word(&s, unit_word(load_le64(in[lane] + 8 * j), delimiters));
        out[lane] = sip_finish(&s, in[lane], len[lane], delimiters);
    }
}
#endif

static int use_avx2 = 0;

/* Where the next occurrence of eol starts at or after `from`, or `size` when there is none. */
static Py_ssize_t find_eol(const uint8_t *data, Py_ssize_t from, Py_ssize_t size, const uint8_t *eol, Py_ssize_t n) {
    Py_ssize_t at = from;
    while (at + n <= size) {
        const uint8_t *hit = memchr(data + at, eol[0], (size_t)(size - at - n + 1));
        if (hit == NULL) return size;
        at = hit - data;
        if (memcmp(hit, eol, (size_t)n) == 0) return at;
        at += 1;
    }
    return size;
}

static PyObject *siphash_lines(PyObject *self, PyObject *args) {
    Py_buffer data, eol, key;
    int delimiter;
    if (!PyArg_ParseTuple(args, "y*y*iy*", &data, &eol, &delimiter, &key)) return NULL;
    PyObject *out = NULL, *hashes_out = NULL, *ends_out = NULL;
    if (key.len != 16 || eol.len < 1 || delimiter < 0 || delimiter > 255) {
        PyErr_SetString(PyExc_ValueError, "siphash_lines: a 16-byte key, a non-empty eol and a byte delimiter");
        goto done;
    }
    const uint8_t *p = data.buf, *e = eol.buf, *k = key.buf;
    Py_ssize_t size = data.len, n = eol.len;
    /* Parts of data.split(eol): one more than the eols; the last one dropped when data ends in eol. */
    Py_ssize_t parts = 1;
    for (Py_ssize_t at = find_eol(p, 0, size, e, n); at < size; at = find_eol(p, at + n, size, e, n)) parts++;
    if (size >= n && memcmp(p + size - n, e, (size_t)n) == 0) parts--;
    hashes_out = PyBytes_FromStringAndSize(NULL, parts * 8);
    ends_out = PyBytes_FromStringAndSize(NULL, parts * 8);
    if (hashes_out == NULL || ends_out == NULL) goto done;
    uint64_t *hashes = (uint64_t *)PyBytes_AS_STRING(hashes_out);
    int64_t *ends = (int64_t *)PyBytes_AS_STRING(ends_out);
    uint64_t k0 = load_le64(k), k1 = load_le64(k + 8);
    uint64_t delimiters = 0x0101010101010101ULL * (uint64_t)delimiter;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t start = 0, i = 0;
#ifdef SPLITHASH_AVX2
    for (; use_avx2 && i + 4 <= parts; i += 4) {
        const uint8_t *in[4];
        size_t len[4];
        for (int lane = 0; lane < 4; lane++) {
            Py_ssize_t stop = find_eol(p, start, size, e, n);
            in[lane] = p + start;
            len[lane] = (size_t)(stop - start);
            ends[i + lane] = (int64_t)(stop + n - 1);
            start = stop + n;
        }
        siphash_four(in, len, delimiters, k0, k1, hashes + i);
    }
#endif
    for (; i < parts; i++) {
        Py_ssize_t stop = find_eol(p, start, size, e, n);
        uint64_t h = siphash_line(p + start, (size_t)(stop - start), delimiters, k0, k1);
        int64_t last = (int64_t)(stop + n - 1); /* its eol's last byte, or where it would be */
        memcpy(hashes + i, &h, 8);
        memcpy(ends + i, &last, 8);
        start = stop + n;
    }
    Py_END_ALLOW_THREADS
    out = PyTuple_Pack(2, hashes_out, ends_out);
done:
    Py_XDECREF(hashes_out);
    Py_XDECREF(ends_out);
    PyBuffer_Release(&data);
    PyBuffer_Release(&eol);
    PyBuffer_Release(&key);
    return out;
}

static PyMethodDef methods[] = {
    {"siphash_lines", siphash_lines, METH_VARARGS,
     "siphash_lines(data, eol, delimiter, key) -> (hashes, ends): pandas.util.hash_array's SipHash of "
     "each line of data.split(eol) with the delimiter byte read as \\x1f (native uint64s), and the offset "
     "of each line's eol's last byte (native int64s)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_splithash",
                                    "The split rule's SipHash of a block's lines (ppmlops.privacy.split).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__splithash(void) {
#ifdef SPLITHASH_AVX2
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2") && getenv("PPMLOPS_SPLITHASH_SCALAR") == NULL;
#endif
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "avx2", use_avx2) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
