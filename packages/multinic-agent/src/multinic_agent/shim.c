/*
 * The multi-nic CNI plugin executable, compiled: the same program as shim.py.
 *
 * The container runtime (through Multus) execs this file for every pod start
 * and stop, on the host, where there may be no Python at all.  It forwards
 * the CNI_* environment and the network config on stdin to the node agent
 * over a root-only unix socket, prints the agent's reply on stdout and exits
 * with the reply's status.  VERSION is answered here.
 *
 * Built statically by `multinic-agent build-shim` (multinic_agent/shim_build.py).
 * Behaviour, error messages and CNI error codes are those of shim.py run by
 * CPython 3.11 in its default (C/POSIX locale, UTF-8 mode) set-up, byte for
 * byte; tests run both programs on the same inputs.  In particular:
 *
 * - environment and stdin are decoded as UTF-8 with "surrogateescape": an
 *   invalid byte B becomes the lone surrogate U+DC00+B, sent to the agent as
 *   the JSON escape \udcXX (stdin's line endings are kept, as Python's stdin
 *   keeps them on POSIX);
 * - JSON is produced as json.encode_basestring_ascii does (ASCII only);
 * - JSON is parsed as the C scanner of Python's json module parses it
 *   (json.loads(strict=True): NaN/Infinity accepted, the same error messages
 *   and offsets, counted in characters), and a reply's "stdout" is written
 *   as UTF-8 with surrogateescape, its "stderr" with backslashreplace.
 *
 * Wire protocol (one request and one reply per connection, each a single
 * line of JSON terminated by \n, at most MAX_MESSAGE bytes):
 *   request: {"env": {"CNI_COMMAND": ..., ...}, "stdin": "<network config>"}
 *   reply:   {"exit": <int>, "stdout": "<CNI result or error>", "stderr": "..."}
 *
 * C99 + POSIX.1-2008, libc only.  Every buffer is bounded by the input it
 * holds (stdin and replies by MAX_MESSAGE characters); allocation failure
 * ends the program with a CNI error.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/multinic/agent.sock"
#define SOCKET_ENV "MULTINIC_AGENT_SOCKET"
#define TIMEOUT_ENV "MULTINIC_SHIM_TIMEOUT"
#define DEFAULT_TIMEOUT_S 300.0
#define LATEST_VERSION "1.1.0"
#define MAX_MESSAGE ((size_t)4 * 1024 * 1024)
#define INT_MAX_STR_DIGITS 4300 /* CPython's int <-> str conversion limit */
#define REPR_LIMIT 500

#define CODE_DECODE 6
#define CODE_TRY_AGAIN 11
#define CODE_OTHER 999

/*
 * Python's recursion limit as the json scanner meets it in shim.py: nested
 * containers allowed in a config (VERSION path, other verbs) and a reply.
 */
#define DEPTH_VERSION 991
#define DEPTH_OTHER 992

static const char *const SUPPORTED_VERSIONS[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};

extern char **environ;

/* ------------------------------------------------------------------ buffers */

typedef struct {
    char *data;
    size_t len, cap;
} bytes_t;

typedef struct {
    uint32_t *data; /* code points; lone surrogates allowed, as in a Python str */
    size_t len, cap;
} ustr_t;

static void die_oom(void);

static void *grow(void *data, size_t *cap, size_t need, size_t item) {
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need) {
        if (cap2 > SIZE_MAX / 2 / item) {
            die_oom();
        }
        cap2 *= 2;
    }
    if (cap2 > SIZE_MAX / item) {
        die_oom();
    }
    void *grown = realloc(data, cap2 * item);
    if (grown == NULL) {
        die_oom();
    }
    *cap = cap2;
    return grown;
}

static void b_add(bytes_t *b, const char *s, size_t n) {
    if (n > SIZE_MAX - b->len - 1) {
        die_oom();
    }
    if (b->len + n + 1 > b->cap) {
        b->data = grow(b->data, &b->cap, b->len + n + 1, 1);
    }
    if (n > 0) {
        memcpy(b->data + b->len, s, n);
    }
    b->len += n;
    b->data[b->len] = '\0';
}

static void b_str(bytes_t *b, const char *s) { b_add(b, s, strlen(s)); }

static void b_fmt(bytes_t *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    if ((size_t)n < sizeof small) {
        b_add(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (big == NULL) {
        die_oom();
    }
    va_start(ap, fmt);
    int m = vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    if (m >= 0) {
        b_add(b, big, (size_t)(m < n ? m : n));
    }
    free(big);
}

static void u_add(ustr_t *u, uint32_t c) {
    if (u->len + 1 > u->cap) {
        u->data = grow(u->data, &u->cap, u->len + 1, sizeof(uint32_t));
    }
    u->data[u->len++] = c;
}

static void u_ascii(ustr_t *u, const char *s) {
    for (; *s; s++) {
        u_add(u, (unsigned char)*s);
    }
}

/* -------------------------------------------------------------------- UTF-8 */

static int is_cont(unsigned char c) { return c >= 0x80 && c <= 0xBF; }

/* Length of the valid UTF-8 sequence at s (its code point in *cp), 0 if none. */
static size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        if (n < 2 || !is_cont(s[1])) {
            return 0;
        }
        *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || !is_cont(s[1]) || !is_cont(s[2])) {
            return 0;
        }
        if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0)) {
            return 0;
        }
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || !is_cont(s[1]) || !is_cont(s[2]) || !is_cont(s[3])) {
            return 0;
        }
        if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90)) {
            return 0;
        }
        *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
              ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        return 4;
    }
    return 0;
}

/* bytes.decode("utf-8", "surrogateescape"), appended to out. */
static void decode_se(const char *text, size_t n, ustr_t *out) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < n) {
        uint32_t cp = 0;
        size_t k = utf8_seq(s + i, n - i, &cp);
        if (k == 0) {
            u_add(out, 0xDC00u + s[i]);
            i += 1;
        } else {
            u_add(out, cp);
            i += k;
        }
    }
}

/*
 * bytes.decode("utf-8") (strict): 0 when valid, else 1 and the message of
 * CPython's UnicodeDecodeError in msg.
 */
static int utf8_strict_error(const char *text, size_t n, bytes_t *msg) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < n) {
        uint32_t cp = 0;
        size_t k = utf8_seq(s + i, n - i, &cp);
        if (k > 0) {
            i += k;
            continue;
        }
        unsigned char c = s[i];
        size_t left = n - i, end = 0;
        const char *why = "invalid continuation byte";
        if (c < 0xC2 || c > 0xF4) {
            why = "invalid start byte";
            end = i + 1;
        } else if (c < 0xE0) {
            if (left < 2) {
                why = "unexpected end of data";
                end = n;
            } else {
                end = i + 1;
            }
        } else if (c < 0xF0) {
            int bad1 = left >= 2 && (!is_cont(s[i + 1]) || (c == 0xE0 && s[i + 1] < 0xA0) ||
                                     (c == 0xED && s[i + 1] >= 0xA0));
            if (left < 2 || (left < 3 && !bad1)) {
                why = "unexpected end of data";
                end = n;
            } else if (bad1) {
                end = i + 1;
            } else {
                end = i + 2;
            }
        } else {
            int bad1 = left >= 2 && (!is_cont(s[i + 1]) || (c == 0xF0 && s[i + 1] < 0x90) ||
                                     (c == 0xF4 && s[i + 1] >= 0x90));
            int bad2 = left >= 3 && !bad1 && !is_cont(s[i + 2]);
            if (left < 2 || (left < 4 && !bad1 && !bad2)) {
                why = "unexpected end of data";
                end = n;
            } else if (bad1) {
                end = i + 1;
            } else if (bad2) {
                end = i + 2;
            } else {
                end = i + 3;
            }
        }
        if (end - i == 1) {
            b_fmt(msg, "'utf-8' codec can't decode byte 0x%02x in position %zu: %s", c, i, why);
        } else {
            b_fmt(msg, "'utf-8' codec can't decode bytes in position %zu-%zu: %s", i, end - 1, why);
        }
        return 1;
    }
    return 0;
}

static void put_utf8(bytes_t *b, uint32_t c) {
    char out[4];
    size_t n;
    if (c < 0x80) {
        out[0] = (char)c;
        n = 1;
    } else if (c < 0x800) {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3F));
        n = 2;
    } else if (c < 0x10000) {
        out[0] = (char)(0xE0 | (c >> 12));
        out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        n = 3;
    } else {
        out[0] = (char)(0xF0 | (c >> 18));
        out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[3] = (char)(0x80 | (c & 0x3F));
        n = 4;
    }
    b_add(b, out, n);
}

static int is_surrogate(uint32_t c) { return c >= 0xD800 && c <= 0xDFFF; }

/* ------------------------------------------------------------- JSON output */

/* json.encoder.encode_basestring_ascii: a quoted, ASCII-only JSON string. */
static void quote_u(bytes_t *b, const uint32_t *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    b_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        if (c >= ' ' && c <= '~' && c != '\\' && c != '"') {
            char ch = (char)c;
            b_add(b, &ch, 1);
            continue;
        }
        switch (c) {
        case '\\': b_add(b, "\\\\", 2); continue;
        case '"': b_add(b, "\\\"", 2); continue;
        case '\b': b_add(b, "\\b", 2); continue;
        case '\f': b_add(b, "\\f", 2); continue;
        case '\n': b_add(b, "\\n", 2); continue;
        case '\r': b_add(b, "\\r", 2); continue;
        case '\t': b_add(b, "\\t", 2); continue;
        default: break;
        }
        uint32_t units[2];
        size_t count = 1;
        units[0] = c;
        if (c >= 0x10000) {
            uint32_t v = c - 0x10000;
            units[0] = 0xD800 | ((v >> 10) & 0x3FF);
            units[1] = 0xDC00 | (v & 0x3FF);
            count = 2;
        }
        for (size_t k = 0; k < count; k++) {
            char esc[6] = {'\\', 'u', hex[(units[k] >> 12) & 15], hex[(units[k] >> 8) & 15],
                           hex[(units[k] >> 4) & 15], hex[units[k] & 15]};
            b_add(b, esc, 6);
        }
    }
    b_add(b, "\"", 1);
}

/* Bytes as Python holds them after decoding with surrogateescape, quoted. */
static void quote_b(bytes_t *b, const char *s, size_t n) {
    ustr_t u = {NULL, 0, 0};
    decode_se(s, n, &u);
    quote_u(b, u.data, u.len);
    free(u.data);
}

/* shim.error_json: {"cniVersion":..,"code":..,"msg":..,"details":..} (no newline). */
static void error_json(bytes_t *out, const ustr_t *version, int code, const bytes_t *msg,
                       const ustr_t *details) {
    b_str(out, "{\"cniVersion\":");
    if (version != NULL) {
        quote_u(out, version->data, version->len);
    } else {
        b_str(out, "\"" LATEST_VERSION "\"");
    }
    b_fmt(out, ",\"code\":%d,\"msg\":", code);
    quote_b(out, msg->data, msg->len);
    b_str(out, ",\"details\":");
    if (details != NULL) {
        quote_u(out, details->data, details->len);
    } else {
        b_str(out, "\"\"");
    }
    b_str(out, "}");
}

static void write_all(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

static void die_oom(void) {
    static const char msg[] = "{\"cniVersion\":\"" LATEST_VERSION
                              "\",\"code\":999,\"msg\":\"multi-nic shim failed: MemoryError: \","
                              "\"details\":\"\"}";
    write_all(STDOUT_FILENO, msg, sizeof msg - 1);
    _exit(1);
}

/* -------------------------------------------------------------- JSON input */

enum {
    T_STR = 1,
    T_INT,
    T_FLOAT,
    T_TRUE,
    T_FALSE,
    T_NULL,
    T_NAN,
    T_INF,
    T_NINF,
    T_OBJ,
    T_ARR
};

enum { E_NONE, E_STOP, E_DECODE, E_RECURSION, E_INTDIGITS };

typedef struct {
    int kind;
    size_t pos;       /* StopIteration value, or the JSONDecodeError position */
    const char *msg;  /* JSONDecodeError message, or the container of E_RECURSION */
    size_t digits;    /* E_INTDIGITS */
} jerr_t;

typedef struct {
    size_t key;   /* index of the key's opening quote */
    size_t value; /* index of the value's first character */
    int type;
} member_t;

typedef struct {
    member_t *data;
    size_t len, cap;
} members_t;

typedef struct {
    const uint32_t *s;
    size_t len;
    int max_depth;
    jerr_t err;
} scanner_t;

static int fail(scanner_t *sc, int kind, size_t pos, const char *msg) {
    sc->err.kind = kind;
    sc->err.pos = pos;
    sc->err.msg = msg;
    return -1;
}

static int is_ws(uint32_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static int hexval(uint32_t c) {
    if (c >= '0' && c <= '9') {
        return (int)(c - '0');
    }
    if (c >= 'a' && c <= 'f') {
        return (int)(c - 'a' + 10);
    }
    if (c >= 'A' && c <= 'F') {
        return (int)(c - 'A' + 10);
    }
    return -1;
}

static int hex4(const uint32_t *s, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s[i]);
        if (h < 0) {
            return -1;
        }
        v = (v << 4) | (uint32_t)h;
    }
    *out = v;
    return 0;
}

/* _json.scanstring (strict); end is the index after the opening quote. */
static int scan_string(scanner_t *sc, size_t end, size_t *next, ustr_t *out) {
    const uint32_t *s = sc->s;
    size_t len = sc->len, begin = end - 1;
    for (;;) {
        uint32_t c = 0;
        size_t nx;
        for (nx = end; nx < len; nx++) {
            c = s[nx];
            if (c == '"' || c == '\\') {
                break;
            }
            if (c <= 0x1f) {
                return fail(sc, E_DECODE, nx, "Invalid control character at");
            }
        }
        if (!(nx < len && (c == '"' || c == '\\'))) {
            return fail(sc, E_DECODE, begin, "Unterminated string starting at");
        }
        if (out != NULL) {
            for (size_t i = end; i < nx; i++) {
                u_add(out, s[i]);
            }
        }
        nx++;
        if (c == '"') {
            end = nx;
            break;
        }
        if (nx == len) {
            return fail(sc, E_DECODE, begin, "Unterminated string starting at");
        }
        c = s[nx];
        if (c != 'u') {
            end = nx + 1;
            switch (c) {
            case '"': break;
            case '\\': break;
            case '/': break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            default: return fail(sc, E_DECODE, end - 2, "Invalid \\escape");
            }
        } else {
            nx++;
            end = nx + 4;
            if (end >= len) {
                return fail(sc, E_DECODE, nx - 1, "Invalid \\uXXXX escape");
            }
            if (hex4(s + nx, &c) < 0) {
                return fail(sc, E_DECODE, end - 5, "Invalid \\uXXXX escape");
            }
            if (c >= 0xD800 && c <= 0xDBFF && end + 6 < len && s[end] == '\\' &&
                s[end + 1] == 'u') {
                uint32_t c2 = 0;
                if (hex4(s + end + 2, &c2) < 0) {
                    return fail(sc, E_DECODE, end + 1, "Invalid \\uXXXX escape");
                }
                if (c2 >= 0xDC00 && c2 <= 0xDFFF) {
                    c = 0x10000 + (((c - 0xD800) << 10) | (c2 - 0xDC00));
                    end += 6;
                }
            }
        }
        if (out != NULL) {
            u_add(out, c);
        }
    }
    *next = end;
    return T_STR;
}

static int is_digit(uint32_t c) { return c >= '0' && c <= '9'; }

/* _json's _match_number_unicode. */
static int scan_number(scanner_t *sc, size_t start, size_t *next) {
    const uint32_t *s = sc->s;
    size_t idx = start, end_idx = sc->len - 1;
    int is_float = 0;
    if (s[idx] == '-') {
        idx++;
        if (idx > end_idx) {
            return fail(sc, E_STOP, start, NULL);
        }
    }
    if (s[idx] >= '1' && s[idx] <= '9') {
        idx++;
        while (idx <= end_idx && is_digit(s[idx])) {
            idx++;
        }
    } else if (s[idx] == '0') {
        idx++;
    } else {
        return fail(sc, E_STOP, start, NULL);
    }
    if (idx < end_idx && s[idx] == '.' && is_digit(s[idx + 1])) {
        is_float = 1;
        idx += 2;
        while (idx <= end_idx && is_digit(s[idx])) {
            idx++;
        }
    }
    if (idx < end_idx && (s[idx] == 'e' || s[idx] == 'E')) {
        size_t e_start = idx;
        idx++;
        if (idx < end_idx && (s[idx] == '-' || s[idx] == '+')) {
            idx++;
        }
        while (idx <= end_idx && is_digit(s[idx])) {
            idx++;
        }
        if (is_digit(s[idx - 1])) {
            is_float = 1;
        } else {
            idx = e_start;
        }
    }
    if (!is_float) {
        size_t digits = idx - start - (s[start] == '-' ? 1 : 0);
        if (digits > INT_MAX_STR_DIGITS) {
            sc->err.digits = digits;
            return fail(sc, E_INTDIGITS, start, NULL);
        }
    }
    *next = idx;
    return is_float ? T_FLOAT : T_INT;
}

static int match(const scanner_t *sc, size_t idx, const char *word) {
    size_t n = strlen(word);
    if (idx + n - 1 >= sc->len) { /* _json wants idx + n - 1 < length */
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (sc->s[idx + i] != (unsigned char)word[i]) {
            return 0;
        }
    }
    return 1;
}

static int scan_value(scanner_t *sc, size_t idx, size_t *next, int depth, members_t *members);

static size_t skip_ws(const scanner_t *sc, size_t idx) {
    while (idx < sc->len && is_ws(sc->s[idx])) {
        idx++;
    }
    return idx;
}

static int scan_object(scanner_t *sc, size_t idx, size_t *next, int depth, members_t *members) {
    idx = skip_ws(sc, idx);
    if (idx >= sc->len || sc->s[idx] != '}') {
        for (;;) {
            if (idx >= sc->len || sc->s[idx] != '"') {
                return fail(sc, E_DECODE, idx, "Expecting property name enclosed in double quotes");
            }
            size_t key = idx, after = 0;
            if (scan_string(sc, idx + 1, &after, NULL) < 0) {
                return -1;
            }
            idx = skip_ws(sc, after);
            if (idx >= sc->len || sc->s[idx] != ':') {
                return fail(sc, E_DECODE, idx, "Expecting ':' delimiter");
            }
            idx = skip_ws(sc, idx + 1);
            size_t value = idx;
            int type = scan_value(sc, idx, &after, depth, NULL);
            if (type < 0) {
                return -1;
            }
            if (members != NULL) {
                if (members->len + 1 > members->cap) {
                    members->data =
                        grow(members->data, &members->cap, members->len + 1, sizeof(member_t));
                }
                members->data[members->len].key = key;
                members->data[members->len].value = value;
                members->data[members->len].type = type;
                members->len++;
            }
            idx = skip_ws(sc, after);
            if (idx < sc->len && sc->s[idx] == '}') {
                break;
            }
            if (idx >= sc->len || sc->s[idx] != ',') {
                return fail(sc, E_DECODE, idx, "Expecting ',' delimiter");
            }
            idx = skip_ws(sc, idx + 1);
        }
    }
    *next = idx + 1;
    return T_OBJ;
}

static int scan_array(scanner_t *sc, size_t idx, size_t *next, int depth) {
    idx = skip_ws(sc, idx);
    if (idx >= sc->len || sc->s[idx] != ']') {
        for (;;) {
            size_t after = 0;
            if (scan_value(sc, idx, &after, depth, NULL) < 0) {
                return -1;
            }
            idx = skip_ws(sc, after);
            if (idx < sc->len && sc->s[idx] == ']') {
                break;
            }
            if (idx >= sc->len || sc->s[idx] != ',') {
                return fail(sc, E_DECODE, idx, "Expecting ',' delimiter");
            }
            idx = skip_ws(sc, idx + 1);
        }
    }
    *next = idx + 1;
    return T_ARR;
}

/* _json's scan_once: the type of the value at idx, its end in *next; -1 on error. */
static int scan_value(scanner_t *sc, size_t idx, size_t *next, int depth, members_t *members) {
    if (idx >= sc->len) {
        return fail(sc, E_STOP, idx, NULL);
    }
    switch (sc->s[idx]) {
    case '"': return scan_string(sc, idx + 1, next, NULL);
    case '{':
        if (depth + 1 > sc->max_depth) {
            return fail(sc, E_RECURSION, idx, "object");
        }
        return scan_object(sc, idx + 1, next, depth + 1, members);
    case '[':
        if (depth + 1 > sc->max_depth) {
            return fail(sc, E_RECURSION, idx, "array");
        }
        return scan_array(sc, idx + 1, next, depth + 1);
    case 'n':
        if (match(sc, idx, "null")) {
            *next = idx + 4;
            return T_NULL;
        }
        break;
    case 't':
        if (match(sc, idx, "true")) {
            *next = idx + 4;
            return T_TRUE;
        }
        break;
    case 'f':
        if (match(sc, idx, "false")) {
            *next = idx + 5;
            return T_FALSE;
        }
        break;
    case 'N':
        if (match(sc, idx, "NaN")) {
            *next = idx + 3;
            return T_NAN;
        }
        break;
    case 'I':
        if (match(sc, idx, "Infinity")) {
            *next = idx + 8;
            return T_INF;
        }
        break;
    case '-':
        if (match(sc, idx, "-Infinity")) {
            *next = idx + 9;
            return T_NINF;
        }
        break;
    default: break;
    }
    return scan_number(sc, idx, next);
}

/* Py_UNICODE_ISSPACE: what str.strip() removes. */
static int py_isspace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/*
 * shim.decode_message on text already decoded: 0 and the top-level members
 * when it is one JSON object, else -1 and the ValueError's message in why.
 * The scanner is left on the stripped text (offsets of members).
 */
static int decode_message(const ustr_t *text, int max_depth, scanner_t *sc, members_t *members,
                          bytes_t *why) {
    size_t a = 0, z = text->len;
    while (a < z && py_isspace(text->data[a])) {
        a++;
    }
    while (z > a && py_isspace(text->data[z - 1])) {
        z--;
    }
    sc->s = text->data + a;
    sc->len = z - a;
    sc->max_depth = max_depth;
    sc->err.kind = E_NONE;
    size_t end = 0;
    int type = scan_value(sc, 0, &end, 0, members);
    if (type < 0) {
        switch (sc->err.kind) {
        case E_STOP: b_fmt(why, "not JSON at offset %zu", sc->err.pos); break;
        case E_DECODE: {
            size_t line = 1, last_nl = 0;
            int seen = 0;
            for (size_t i = 0; i < sc->err.pos && i < sc->len; i++) {
                if (sc->s[i] == '\n') {
                    line++;
                    last_nl = i;
                    seen = 1;
                }
            }
            size_t column = seen ? sc->err.pos - last_nl : sc->err.pos + 1;
            b_fmt(why, "not JSON: %s: line %zu column %zu (char %zu)", sc->err.msg, line, column,
                  sc->err.pos);
            break;
        }
        case E_RECURSION:
            b_fmt(why,
                  "not JSON: maximum recursion depth exceeded while decoding a JSON %s from a "
                  "unicode string",
                  sc->err.msg);
            break;
        default:
            b_fmt(why,
                  "not JSON: Exceeds the limit (%d digits) for integer string conversion: value "
                  "has %zu digits; use sys.set_int_max_str_digits() to increase the limit",
                  INT_MAX_STR_DIGITS, sc->err.digits);
            break;
        }
        return -1;
    }
    if (end != sc->len) {
        b_fmt(why, "extra data after the JSON value at offset %zu", end);
        return -1;
    }
    if (type != T_OBJ) {
        b_str(why, "a wire message must be a JSON object");
        return -1;
    }
    return 0;
}

/* The decoded string at s[idx] (an opening quote of a string already scanned). */
static void string_at(const scanner_t *sc, size_t idx, ustr_t *out) {
    scanner_t copy = *sc;
    size_t next = 0;
    (void)scan_string(&copy, idx + 1, &next, out);
}

static int ustr_eq(const ustr_t *a, const ustr_t *b) {
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len * 4) == 0);
}

/* The member of the last occurrence of key, or NULL (dict semantics: the last wins). */
static const member_t *lookup(const scanner_t *sc, const members_t *members, const char *key) {
    ustr_t want = {NULL, 0, 0}, have = {NULL, 0, 0};
    const member_t *found = NULL;
    u_ascii(&want, key);
    for (size_t i = members->len; i-- > 0;) {
        have.len = 0;
        string_at(sc, members->data[i].key, &have);
        if (ustr_eq(&want, &have)) {
            found = &members->data[i];
            break;
        }
    }
    free(want.data);
    free(have.data);
    return found;
}

/* ------------------------------------------------- repr() of a parsed value */

typedef struct {
    ustr_t out;
    int full;
    const uint32_t *ends; /* container_ends() of the text */
} repr_t;

static void r_add(repr_t *r, uint32_t c) {
    if (r->out.len >= REPR_LIMIT) {
        r->full = 1;
        return;
    }
    u_add(&r->out, c);
}

static void r_ascii(repr_t *r, const char *s) {
    for (; *s && !r->full; s++) {
        r_add(r, (unsigned char)*s);
    }
}

/* Approximates str.isprintable() outside ASCII (no Unicode database here). */
static int printable(uint32_t c) {
    if (c < 0xA1) {
        return 0;
    }
    if (c == 0xAD || is_surrogate(c) || c == 0x1680 || (c >= 0x2000 && c <= 0x200F) ||
        (c >= 0x2028 && c <= 0x202F) || (c >= 0x205F && c <= 0x206F) || c == 0x3000 ||
        c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFB) || (c >= 0xE000 && c <= 0xF8FF) ||
        (c & 0xFFFE) == 0xFFFE || c >= 0xF0000 || (c >= 0xE0000 && c <= 0xE0FFF) ||
        (c >= 0x600 && c <= 0x605) || c == 0x61C || c == 0x6DD || c == 0x70F || c == 0x180E) {
        return 0;
    }
    return 1;
}

/* repr(str) */
static void repr_str(repr_t *r, const ustr_t *u) {
    static const char hex[] = "0123456789abcdef";
    int single = 0, dbl = 0;
    for (size_t i = 0; i < u->len; i++) {
        single |= u->data[i] == '\'';
        dbl |= u->data[i] == '"';
    }
    uint32_t quote = (single && !dbl) ? '"' : '\'';
    r_add(r, quote);
    for (size_t i = 0; i < u->len && !r->full; i++) {
        uint32_t c = u->data[i];
        char esc[12];
        if (c == quote || c == '\\') {
            r_add(r, '\\');
            r_add(r, c);
        } else if (c == '\t') {
            r_ascii(r, "\\t");
        } else if (c == '\n') {
            r_ascii(r, "\\n");
        } else if (c == '\r') {
            r_ascii(r, "\\r");
        } else if (c < ' ' || c == 0x7F) {
            snprintf(esc, sizeof esc, "\\x%c%c", hex[(c >> 4) & 15], hex[c & 15]);
            r_ascii(r, esc);
        } else if (c < 0x7F || printable(c)) {
            r_add(r, c);
        } else if (c <= 0xFF) {
            snprintf(esc, sizeof esc, "\\x%02x", (unsigned)c);
            r_ascii(r, esc);
        } else if (c <= 0xFFFF) {
            snprintf(esc, sizeof esc, "\\u%04x", (unsigned)c);
            r_ascii(r, esc);
        } else {
            snprintf(esc, sizeof esc, "\\U%08x", (unsigned)c);
            r_ascii(r, esc);
        }
    }
    r_add(r, quote);
}

/* repr(float) of a JSON number: the shortest string that reads back the same. */
static void repr_float(repr_t *r, const scanner_t *sc, size_t idx, size_t end) {
    char num[40];
    char *text = malloc(end - idx + 1);
    if (text == NULL) {
        die_oom();
    }
    for (size_t i = idx; i < end; i++) {
        text[i - idx] = (char)sc->s[i]; /* a JSON number: ASCII */
    }
    text[end - idx] = '\0';
    double v = strtod(text, NULL);
    free(text);
    if (v != v) {
        r_ascii(r, "nan");
        return;
    }
    if (v > 1.7976931348623157e308 || v < -1.7976931348623157e308) {
        r_ascii(r, v > 0 ? "inf" : "-inf");
        return;
    }
    int prec;
    for (prec = 0; prec < 17; prec++) {
        snprintf(num, sizeof num, "%.*e", prec, v);
        if (strtod(num, NULL) == v) {
            break;
        }
    }
    /* num: [-]d[.ddd]e[+-]xx */
    char digits[32];
    size_t nd = 0;
    const char *p = num;
    int negative = 0;
    if (*p == '-') {
        negative = 1;
        p++;
    }
    for (; *p && *p != 'e'; p++) {
        if (*p >= '0' && *p <= '9' && nd < sizeof digits - 1) {
            digits[nd++] = *p;
        }
    }
    int exp10 = (*p == 'e') ? atoi(p + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0') {
        nd--;
    }
    digits[nd] = '\0';
    char res[64];
    size_t k = 0;
    if (negative) {
        res[k++] = '-';
    }
    if (exp10 >= -4 && exp10 < 16) {
        if (exp10 < 0) {
            res[k++] = '0';
            res[k++] = '.';
            for (int z = 0; z < -exp10 - 1; z++) {
                res[k++] = '0';
            }
            for (size_t i = 0; i < nd; i++) {
                res[k++] = digits[i];
            }
        } else {
            for (int i = 0; i <= exp10; i++) {
                res[k++] = (size_t)i < nd ? digits[i] : '0';
            }
            res[k++] = '.';
            if ((size_t)exp10 + 1 < nd) {
                for (size_t i = (size_t)exp10 + 1; i < nd; i++) {
                    res[k++] = digits[i];
                }
            } else {
                res[k++] = '0';
            }
        }
        res[k] = '\0';
    } else {
        res[k++] = digits[0];
        if (nd > 1) {
            res[k++] = '.';
            for (size_t i = 1; i < nd; i++) {
                res[k++] = digits[i];
            }
        }
        res[k] = '\0';
        snprintf(res + k, sizeof res - k, "e%c%02d", exp10 < 0 ? '-' : '+',
                 exp10 < 0 ? -exp10 : exp10);
    }
    r_ascii(r, res);
}

static void repr_value(repr_t *r, const scanner_t *sc, size_t idx, int type);

/*
 * For each '{' / '[' of text already scanned (valid), the index of its
 * closing bracket: values are skipped in constant time, so a repr() costs
 * one pass over the reply however deep it nests.
 */
static uint32_t *container_ends(const scanner_t *sc) {
    /* a reply holds at most MAX_MESSAGE characters: indexes fit in 32 bits */
    uint32_t *ends = calloc(sc->len ? sc->len : 1, sizeof(uint32_t));
    uint32_t *stack = malloc((sc->len ? sc->len : 1) * sizeof(uint32_t));
    if (ends == NULL || stack == NULL) {
        die_oom();
    }
    size_t depth = 0;
    int in_string = 0;
    for (size_t i = 0; i < sc->len; i++) {
        uint32_t c = sc->s[i];
        if (in_string) {
            if (c == '\\') {
                i++;
            } else if (c == '"') {
                in_string = 0;
            }
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            stack[depth++] = (uint32_t)i;
        } else if ((c == '}' || c == ']') && depth > 0) {
            ends[stack[--depth]] = (uint32_t)i;
        }
    }
    free(stack);
    return ends;
}

/* The type of the (valid) value at idx and the index after it. */
static int skip_value(const repr_t *r, const scanner_t *sc, size_t idx, size_t *next) {
    if (sc->s[idx] == '{' || sc->s[idx] == '[') {
        *next = (size_t)r->ends[idx] + 1;
        return sc->s[idx] == '{' ? T_OBJ : T_ARR;
    }
    scanner_t copy = *sc;
    return scan_value(&copy, idx, next, 0, NULL);
}

typedef struct {
    ustr_t key;
    uint64_t hash;
    size_t value;
    int type;
} rmember_t;

static void repr_object(repr_t *r, const scanner_t *sc, size_t idx) {
    rmember_t *members = NULL;
    size_t count = 0, cap = 0;
    size_t i = skip_ws(sc, idx + 1);
    while (i < sc->len && sc->s[i] == '"') {
        if (count + 1 > cap) {
            members = grow(members, &cap, count + 1, sizeof(rmember_t));
        }
        rmember_t *m = &members[count++];
        memset(m, 0, sizeof *m);
        scanner_t copy = *sc;
        size_t after = 0;
        (void)scan_string(&copy, i + 1, &after, &m->key);
        m->hash = 1469598103934665603ull;
        for (size_t k = 0; k < m->key.len; k++) {
            m->hash = (m->hash ^ m->key.data[k]) * 1099511628211ull;
        }
        i = skip_ws(sc, after);
        i = skip_ws(sc, i + 1); /* the ':' */
        m->value = i;
        m->type = skip_value(r, sc, i, &after);
        i = skip_ws(sc, after);
        if (i < sc->len && sc->s[i] == ',') {
            i = skip_ws(sc, i + 1);
        }
    }
    /*
     * dict semantics: a key keeps its first position and takes its last
     * value.  An open-addressing table of the distinct keys: slot -> the
     * first member with that key; last[k]: the last member with k's key.
     */
    size_t slots = 16;
    while (slots < 2 * count) {
        slots *= 2;
    }
    size_t *table = malloc(slots * sizeof(size_t));
    size_t *last = malloc((count ? count : 1) * sizeof(size_t));
    if (table == NULL || last == NULL) {
        die_oom();
    }
    for (size_t k = 0; k < slots; k++) {
        table[k] = SIZE_MAX;
    }
    for (size_t k = 0; k < count; k++) {
        size_t slot = (size_t)members[k].hash & (slots - 1);
        last[k] = k;
        while (table[slot] != SIZE_MAX) {
            size_t j = table[slot];
            if (members[j].hash == members[k].hash && ustr_eq(&members[j].key, &members[k].key)) {
                break;
            }
            slot = (slot + 1) & (slots - 1);
        }
        if (table[slot] == SIZE_MAX) {
            table[slot] = k;
        } else {
            last[table[slot]] = k;
            last[k] = SIZE_MAX; /* not the first: emitted with the first */
        }
    }
    r_add(r, '{');
    int first = 1;
    for (size_t k = 0; k < count && !r->full; k++) {
        if (last[k] == SIZE_MAX) {
            continue;
        }
        size_t use = last[k];
        if (!first) {
            r_ascii(r, ", ");
        }
        first = 0;
        repr_str(r, &members[k].key);
        r_ascii(r, ": ");
        repr_value(r, sc, members[use].value, members[use].type);
    }
    free(table);
    free(last);
    r_add(r, '}');
    for (size_t k = 0; k < count; k++) {
        free(members[k].key.data);
    }
    free(members);
}

static void repr_array(repr_t *r, const scanner_t *sc, size_t idx) {
    r_add(r, '[');
    size_t i = skip_ws(sc, idx + 1);
    int first = 1;
    while (i < sc->len && sc->s[i] != ']' && !r->full) {
        size_t after = 0;
        int type = skip_value(r, sc, i, &after);
        if (!first) {
            r_ascii(r, ", ");
        }
        first = 0;
        repr_value(r, sc, i, type);
        i = skip_ws(sc, after);
        if (i < sc->len && sc->s[i] == ',') {
            i = skip_ws(sc, i + 1);
        }
    }
    r_add(r, ']');
}

static void repr_value(repr_t *r, const scanner_t *sc, size_t idx, int type) {
    if (r->full) {
        return;
    }
    switch (type) {
    case T_STR: {
        ustr_t u = {NULL, 0, 0};
        string_at(sc, idx, &u);
        repr_str(r, &u);
        free(u.data);
        return;
    }
    case T_INT: {
        size_t i = idx, end = 0;
        scanner_t copy = *sc;
        (void)scan_number(&copy, idx, &end);
        int negative = sc->s[i] == '-';
        if (negative && end - idx == 2 && sc->s[i + 1] == '0') {
            r_add(r, '0');
            return;
        }
        for (; i < end && !r->full; i++) {
            r_add(r, sc->s[i]);
        }
        return;
    }
    case T_FLOAT: {
        size_t end = 0;
        scanner_t copy = *sc;
        (void)scan_number(&copy, idx, &end);
        repr_float(r, sc, idx, end);
        return;
    }
    case T_TRUE: r_ascii(r, "True"); return;
    case T_FALSE: r_ascii(r, "False"); return;
    case T_NULL: r_ascii(r, "None"); return;
    case T_NAN: r_ascii(r, "nan"); return;
    case T_INF: r_ascii(r, "inf"); return;
    case T_NINF: r_ascii(r, "-inf"); return;
    case T_OBJ: repr_object(r, sc, idx); return;
    case T_ARR: repr_array(r, sc, idx); return;
    default: return;
    }
}

/* ------------------------------------------------------------ environment */

typedef struct {
    const char *key; /* points into environ: "KEY=value" */
    size_t key_len;
    const char *value;
} env_entry_t;

typedef struct {
    env_entry_t *data;
    size_t len, cap;
} env_t;

/* os.environ: entries with '=', the first of duplicate names kept. */
static void load_environ(env_t *env) {
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL) {
            continue;
        }
        size_t key_len = (size_t)(eq - *e);
        int dup = 0;
        for (size_t i = 0; i < env->len && !dup; i++) {
            dup = env->data[i].key_len == key_len && memcmp(env->data[i].key, *e, key_len) == 0;
        }
        if (dup) {
            continue;
        }
        if (env->len + 1 > env->cap) {
            env->data = grow(env->data, &env->cap, env->len + 1, sizeof(env_entry_t));
        }
        env->data[env->len].key = *e;
        env->data[env->len].key_len = key_len;
        env->data[env->len].value = eq + 1;
        env->len++;
    }
}

static const char *env_get(const env_t *env, const char *key) {
    size_t n = strlen(key);
    for (size_t i = 0; i < env->len; i++) {
        if (env->data[i].key_len == n && memcmp(env->data[i].key, key, n) == 0) {
            return env->data[i].value;
        }
    }
    return NULL;
}

/*
 * float(text) as Python parses it (ASCII forms: surrounding whitespace,
 * underscores between digits, inf/infinity/nan); 0 when it is not a number.
 */
static int py_float(const char *text, double *out) {
    ustr_t u = {NULL, 0, 0};
    decode_se(text, strlen(text), &u);
    size_t a = 0, z = u.len;
    while (a < z && py_isspace(u.data[a])) {
        a++;
    }
    while (z > a && py_isspace(u.data[z - 1])) {
        z--;
    }
    char buf[512];
    size_t n = 0;
    int ok = z > a && z - a < sizeof buf;
    for (size_t i = a; ok && i < z; i++) {
        uint32_t c = u.data[i];
        if (c == '_') {
            /* only between two digits */
            ok = i > a && i + 1 < z && is_digit(u.data[i - 1]) && is_digit(u.data[i + 1]);
            continue;
        }
        if (c > 0x7E) {
            ok = 0;
            break;
        }
        buf[n++] = (char)c;
    }
    free(u.data);
    if (!ok) {
        return 0;
    }
    buf[n] = '\0';
    const char *p = buf;
    if (*p == '+' || *p == '-') {
        p++;
    }
    char lower[16];
    size_t m = strlen(p);
    if (m < sizeof lower) {
        for (size_t i = 0; i <= m; i++) {
            char c = p[i];
            lower[i] = (char)((c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c);
        }
        if (strcmp(lower, "inf") == 0 || strcmp(lower, "infinity") == 0) {
            *out = buf[0] == '-' ? -HUGE_VAL : HUGE_VAL;
            return 1;
        }
        if (strcmp(lower, "nan") == 0) {
            *out = NAN;
            return 1;
        }
    }
    /* [digits][.digits][e[+-]digits] with at least one digit in the mantissa */
    const char *q = p;
    size_t mant = 0;
    while (is_digit((unsigned char)*q)) {
        q++;
        mant++;
    }
    if (*q == '.') {
        q++;
        while (is_digit((unsigned char)*q)) {
            q++;
            mant++;
        }
    }
    if (mant == 0) {
        return 0;
    }
    if (*q == 'e' || *q == 'E') {
        q++;
        if (*q == '+' || *q == '-') {
            q++;
        }
        if (!is_digit((unsigned char)*q)) {
            return 0;
        }
        while (is_digit((unsigned char)*q)) {
            q++;
        }
    }
    if (*q != '\0') {
        return 0;
    }
    *out = strtod(buf, NULL);
    return 1;
}

/* ------------------------------------------------------------- the socket */

/* A Python OSError's str(): "[Errno N] strerror". */
static void os_error(bytes_t *why, int err) { b_fmt(why, "[Errno %d] %s", err, strerror(err)); }

static long long now_ms(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        return 0;
    }
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until fd is ready (POLLIN/POLLOUT) before deadline_ms: 0, or -1 with why set. */
static int wait_fd(int fd, short events, long long deadline_ms, bytes_t *why) {
    for (;;) {
        long long left = deadline_ms - now_ms();
        if (left <= 0) {
            b_str(why, "timed out");
            return -1;
        }
        struct pollfd p = {fd, events, 0};
        int n = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n > 0) {
            return 0;
        }
        if (n < 0 && errno != EINTR) {
            os_error(why, errno);
            return -1;
        }
    }
}

/*
 * shim.check_socket: "" when the path may be used, else why not in why.
 */
static int check_socket(const char *path, bytes_t *why) {
    struct stat info;
    if (lstat(path, &info) != 0) {
        if (errno == ENOENT) {
            b_fmt(why, "agent socket %s does not exist (is multinic-agent running?)", path);
        } else {
            b_fmt(why, "agent socket %s cannot be inspected: %s", path, strerror(errno));
        }
        return -1;
    }
    if (!S_ISSOCK(info.st_mode)) {
        b_fmt(why, "refusing agent socket %s: it is not a unix socket", path);
        return -1;
    }
    if (geteuid() == 0 && info.st_uid != 0) {
        b_fmt(why, "refusing agent socket %s: owned by uid %lu, not root", path,
              (unsigned long)info.st_uid);
        return -1;
    }
    return 0;
}

/*
 * shim.call_agent: send the request, read the reply line (into reply);
 * 0, or -1 with the OSError/ValueError message in why.  timeout_ms < 0:
 * none (not used: Python's float timeout is always set); 0: non-blocking.
 */
static int call_agent(const char *path, const bytes_t *request, long long timeout_ms,
                      bytes_t *reply, bytes_t *why) {
    struct sockaddr_un addr;
    size_t path_len = strlen(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        os_error(why, errno);
        return -1;
    }
    int result = -1;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        os_error(why, errno);
        goto done;
    }
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (path_len > sizeof addr.sun_path) {
        b_str(why, "AF_UNIX path too long");
        goto done;
    }
    memcpy(addr.sun_path, path, path_len);
    socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len);
    long long deadline = now_ms() + timeout_ms;
    int rc;
    do {
        rc = connect(fd, (struct sockaddr *)&addr, addr_len);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
        if (errno != EINPROGRESS || timeout_ms == 0) {
            os_error(why, errno);
            goto done;
        }
        if (wait_fd(fd, POLLOUT, deadline, why) < 0) {
            goto done;
        }
        int err = 0;
        socklen_t err_len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) != 0) {
            err = errno;
        }
        if (err != 0) {
            os_error(why, err);
            goto done;
        }
    }
    /* sendall: one deadline for the whole request */
    deadline = now_ms() + timeout_ms;
    size_t sent = 0;
    while (sent < request->len) {
        if (timeout_ms > 0 && wait_fd(fd, POLLOUT, deadline, why) < 0) {
            goto done;
        }
        ssize_t n = send(fd, request->data + sent, request->len - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR || ((errno == EAGAIN || errno == EWOULDBLOCK) && timeout_ms > 0)) {
                continue;
            }
            os_error(why, errno);
            goto done;
        }
        sent += (size_t)n;
    }
    /* the reply: until it ends with a newline or the agent closes */
    char chunk[65536];
    while (reply->len == 0 || reply->data[reply->len - 1] != '\n') {
        if (timeout_ms > 0 && wait_fd(fd, POLLIN, now_ms() + timeout_ms, why) < 0) {
            goto done;
        }
        ssize_t n = recv(fd, chunk, sizeof chunk, 0);
        if (n < 0) {
            if (errno == EINTR || ((errno == EAGAIN || errno == EWOULDBLOCK) && timeout_ms > 0)) {
                continue;
            }
            os_error(why, errno);
            goto done;
        }
        if (n == 0) {
            break;
        }
        b_add(reply, chunk, (size_t)n);
        if (reply->len > MAX_MESSAGE) {
            b_fmt(why, "agent reply exceeds %zu bytes", MAX_MESSAGE);
            goto done;
        }
    }
    if (reply->len == 0) {
        b_str(why, "agent closed the connection without a reply");
        goto done;
    }
    result = 0;
done:
    close(fd);
    return result;
}

/* ------------------------------------------------------------------- main */

typedef struct {
    int status;
    bytes_t out, err;
    int exit_overflow; /* posix._exit() would raise OverflowError after the output */
    int bad_stdout;    /* sys.stdout.write() would raise UnicodeEncodeError */
    bytes_t bad_stdout_msg;
} outcome_t;

/* shim.config_version: the config's cniVersion (a non-empty string), else the latest. */
static void config_version(const ustr_t *config, int max_depth, ustr_t *version) {
    version->len = 0;
    for (size_t i = 0; i < config->len; i++) {
        if (is_surrogate(config->data[i])) { /* config.encode() fails */
            u_ascii(version, LATEST_VERSION);
            return;
        }
    }
    scanner_t sc;
    members_t members = {NULL, 0, 0};
    bytes_t why = {NULL, 0, 0};
    if (decode_message(config, max_depth, &sc, &members, &why) == 0) {
        const member_t *m = lookup(&sc, &members, "cniVersion");
        if (m != NULL && m->type == T_STR) {
            string_at(&sc, m->value, version);
        }
    }
    free(members.data);
    free(why.data);
    if (version->len == 0) {
        u_ascii(version, LATEST_VERSION);
    }
}

static void fail_with(outcome_t *o, const ustr_t *version, int code, const bytes_t *msg,
                      const char *command) {
    ustr_t details = {NULL, 0, 0};
    u_ascii(&details, "CNI_COMMAND=");
    decode_se(command, strlen(command), &details);
    o->status = 1;
    error_json(&o->out, version, code, msg, &details);
    free(details.data);
}

/* A string of the reply as sys.stdout writes it (UTF-8, surrogateescape). */
static int encode_stdout(const ustr_t *u, bytes_t *out, bytes_t *why) {
    for (size_t i = 0; i < u->len; i++) {
        uint32_t c = u->data[i];
        if (is_surrogate(c)) {
            if (c >= 0xDC80 && c <= 0xDCFF) {
                char raw = (char)(c - 0xDC00);
                b_add(out, &raw, 1);
                continue;
            }
            size_t j = i;
            while (j + 1 < u->len && is_surrogate(u->data[j + 1]) &&
                   !(u->data[j + 1] >= 0xDC80 && u->data[j + 1] <= 0xDCFF)) {
                j++;
            }
            if (j == i) {
                b_fmt(why,
                      "UnicodeEncodeError: 'utf-8' codec can't encode character '\\u%04x' in "
                      "position %zu: surrogates not allowed",
                      (unsigned)c, i);
            } else {
                b_fmt(why,
                      "UnicodeEncodeError: 'utf-8' codec can't encode characters in position "
                      "%zu-%zu: surrogates not allowed",
                      i, j);
            }
            return -1;
        }
        put_utf8(out, c);
    }
    return 0;
}

/* A string of the reply as sys.stderr writes it (UTF-8, backslashreplace). */
static void encode_stderr(const ustr_t *u, bytes_t *out) {
    for (size_t i = 0; i < u->len; i++) {
        uint32_t c = u->data[i];
        if (is_surrogate(c)) {
            b_fmt(out, "\\u%04x", (unsigned)c);
        } else {
            put_utf8(out, c);
        }
    }
}

static void run(const env_t *env, const ustr_t *config, outcome_t *o) {
    const char *command = env_get(env, "CNI_COMMAND");
    if (command == NULL) {
        command = "";
    }
    ustr_t version = {NULL, 0, 0};
    if (strcmp(command, "VERSION") == 0) {
        config_version(config, DEPTH_VERSION, &version);
        b_str(&o->out, "{\"cniVersion\":");
        quote_u(&o->out, version.data, version.len);
        b_str(&o->out, ",\"supportedVersions\":[");
        for (size_t i = 0; i < sizeof SUPPORTED_VERSIONS / sizeof SUPPORTED_VERSIONS[0]; i++) {
            b_fmt(&o->out, "%s\"%s\"", i ? "," : "", SUPPORTED_VERSIONS[i]);
        }
        b_str(&o->out, "]}");
        o->status = 0;
        free(version.data);
        return;
    }
    config_version(config, DEPTH_OTHER, &version);
    const char *path = env_get(env, SOCKET_ENV);
    if (path == NULL || path[0] == '\0') {
        path = DEFAULT_SOCKET;
    }
    bytes_t why = {NULL, 0, 0}, request = {NULL, 0, 0}, reply = {NULL, 0, 0};
    ustr_t text = {NULL, 0, 0};
    members_t members = {NULL, 0, 0};
    if (check_socket(path, &why) != 0) {
        fail_with(o, &version, CODE_TRY_AGAIN, &why, command);
        goto done;
    }
    double timeout = DEFAULT_TIMEOUT_S;
    const char *timeout_text = env_get(env, TIMEOUT_ENV);
    if (timeout_text != NULL && timeout_text[0] != '\0' && !py_float(timeout_text, &timeout)) {
        timeout = DEFAULT_TIMEOUT_S;
    }
    /* socket.settimeout()'s checks */
    int timeout_error = 0;
    if (timeout != timeout) {
        b_str(&why, "Invalid value NaN (not a number)");
        timeout_error = 1;
    } else if (timeout < 0) {
        b_str(&why, "Timeout value out of range");
        timeout_error = 1;
    } else if (timeout * 1e9 >= 9223372036854775807.0) {
        bytes_t msg = {NULL, 0, 0};
        b_str(&msg,
              "multi-nic shim failed: OverflowError: timestamp out of range for platform time_t");
        o->status = 1;
        error_json(&o->out, NULL, CODE_OTHER, &msg, NULL);
        free(msg.data);
        goto done;
    }
    int failed = timeout_error;
    if (!failed) {
        long long timeout_ms = (long long)(timeout * 1000.0);
        if (timeout > 0 && timeout_ms == 0) {
            timeout_ms = 1;
        }
        b_str(&request, "{\"env\":{");
        int first = 1;
        for (size_t i = 0; i < env->len; i++) {
            const env_entry_t *e = &env->data[i];
            if (e->key_len >= 4 && memcmp(e->key, "CNI_", 4) == 0) {
                if (!first) {
                    b_str(&request, ",");
                }
                first = 0;
                quote_b(&request, e->key, e->key_len);
                b_str(&request, ":");
                quote_b(&request, e->value, strlen(e->value));
            }
        }
        b_str(&request, "},\"stdin\":");
        quote_u(&request, config->data, config->len);
        b_str(&request, "}\n");
        failed = call_agent(path, &request, timeout_ms, &reply, &why) != 0;
    }
    scanner_t sc;
    if (!failed) {
        if (utf8_strict_error(reply.data, reply.len, &why)) {
            failed = 1;
        } else {
            decode_se(reply.data, reply.len, &text);
            failed = decode_message(&text, DEPTH_OTHER, &sc, &members, &why) != 0;
        }
    }
    if (failed) {
        bytes_t msg = {NULL, 0, 0};
        b_fmt(&msg, "multinic agent at %s is unreachable: ", path);
        b_add(&msg, why.data, why.len);
        fail_with(o, &version, CODE_TRY_AGAIN, &msg, command);
        free(msg.data);
        goto done;
    }
    const member_t *status = lookup(&sc, &members, "exit");
    const member_t *out = lookup(&sc, &members, "stdout");
    const member_t *err = lookup(&sc, &members, "stderr");
    int good = status != NULL &&
               (status->type == T_INT || status->type == T_TRUE || status->type == T_FALSE) &&
               out != NULL && out->type == T_STR && (err == NULL || err->type == T_STR);
    if (!good) {
        bytes_t msg = {NULL, 0, 0};
        uint32_t *ends = container_ends(&sc);
        repr_t r = {{NULL, 0, 0}, 0, ends};
        b_fmt(&msg, "multinic agent at %s sent a malformed reply", path);
        repr_value(&r, &sc, 0, T_OBJ);
        free(ends);
        o->status = 1;
        error_json(&o->out, &version, CODE_OTHER, &msg, &r.out);
        free(msg.data);
        free(r.out.data);
        goto done;
    }
    if (status->type == T_INT) {
        /* the exit status as posix._exit() takes it: a C int */
        long long v = 0;
        int negative = sc.s[status->value] == '-';
        for (size_t i = status->value + (size_t)negative; i < sc.len && is_digit(sc.s[i]); i++) {
            v = v * 10 + (long long)(sc.s[i] - '0');
            if (v > (long long)INT_MAX + 1) {
                o->exit_overflow = 1;
                break;
            }
        }
        if (negative) {
            v = -v;
        }
        if (v > INT_MAX || v < INT_MIN) {
            o->exit_overflow = 1;
        }
        o->status = o->exit_overflow ? 1 : (int)v;
    } else {
        o->status = status->type == T_TRUE;
    }
    ustr_t u = {NULL, 0, 0};
    string_at(&sc, out->value, &u);
    if (encode_stdout(&u, &o->out, &o->bad_stdout_msg) != 0) {
        o->bad_stdout = 1;
        o->out.len = 0;
    }
    if (err != NULL) {
        u.len = 0;
        string_at(&sc, err->value, &u);
        encode_stderr(&u, &o->err);
    }
    free(u.data);
done:
    free(version.data);
    free(why.data);
    free(request.data);
    free(reply.data);
    free(text.data);
    free(members.data);
}

/*
 * sys.stdin.read(MAX_MESSAGE + 1): stdin decoded (surrogateescape; line
 * endings kept, as on POSIX); 1 when it holds more than MAX_MESSAGE characters,
 * -1 on a read error (errno set).
 */
static int read_config(ustr_t *config) {
    bytes_t raw = {NULL, 0, 0};
    char chunk[65536];
    /* a character is at most 4 bytes: more than this is too long whatever it holds */
    const size_t cap = 4 * (MAX_MESSAGE + 1);
    for (;;) {
        ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            int saved = errno;
            free(raw.data);
            errno = saved;
            return -1;
        }
        if (n == 0) {
            break;
        }
        b_add(&raw, chunk, (size_t)n);
        if (raw.len >= cap) {
            break;
        }
    }
    ustr_t decoded = {NULL, 0, 0};
    decode_se(raw.data, raw.len, &decoded);
    free(raw.data);
    for (size_t i = 0; i < decoded.len && config->len <= MAX_MESSAGE; i++) {
        u_add(config, decoded.data[i]);
    }
    free(decoded.data);
    return config->len > MAX_MESSAGE ? 1 : 0;
}

int main(void) {
    signal(SIGPIPE, SIG_IGN); /* as Python: a closed pipe is an error, not a signal */
    outcome_t o;
    memset(&o, 0, sizeof o);
    ustr_t config = {NULL, 0, 0};
    env_t env = {NULL, 0, 0};
    int state = read_config(&config);
    if (state != 0) {
        bytes_t msg = {NULL, 0, 0};
        if (state < 0) {
            b_str(&msg, "cannot read stdin: ");
            os_error(&msg, errno);
        } else {
            b_fmt(&msg, "network config exceeds %zu bytes", MAX_MESSAGE);
        }
        error_json(&o.out, NULL, CODE_DECODE, &msg, NULL);
        free(msg.data);
        o.status = 1;
    } else {
        load_environ(&env);
        run(&env, &config, &o);
        if (o.err.len > 0) {
            write_all(STDERR_FILENO, o.err.data, o.err.len);
        }
    }
    if (o.bad_stdout) {
        /* Python's stdout.write() raised: nothing on stdout, the error on stderr */
        b_str(&o.bad_stdout_msg, "\n");
        write_all(STDERR_FILENO, o.bad_stdout_msg.data, o.bad_stdout_msg.len);
        o.status = 1;
    } else if (o.out.len > 0) {
        write_all(STDOUT_FILENO, o.out.data, o.out.len);
    }
    if (o.exit_overflow && !o.bad_stdout) {
        static const char overflow[] = "OverflowError: Python int too large to convert to C int\n";
        write_all(STDERR_FILENO, overflow, sizeof overflow - 1);
        o.status = 1;
    }
    free(config.data);
    free(env.data);
    free(o.out.data);
    free(o.err.data);
    free(o.bad_stdout_msg.data);
    return o.status;
}
