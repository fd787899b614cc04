/*
 * The multi-nic CNI plugin executable, compiled: the same program as shim.py.
 *
 * The container runtime (through Multus) execs this file for every pod start
 * and stop, on the host, where there may be no Python at all.  It is a pipe:
 * the CNI_* environment and stdin go to the node agent over its root-only
 * unix socket, the agent's stdout and stderr come back and are written out,
 * and the shim exits with the agent's status.  The agent parses and answers
 * every CNI command, VERSION included; the shim reads no JSON.
 *
 * Wire protocol (multinic_agent/wire.py), one request and one reply per connection:
 *   request: "MULTINIC/1\0", "KEY=VALUE\0" for every CNI_* variable, "\0", stdin's
 *            bytes (at most MAX_STDIN); then the shim shuts its sending side down.
 *   reply:   "MULTINIC/1\0", exit status, stdout length, stderr length (32-bit
 *            big-endian), then stdout's and stderr's bytes.
 *
 * The shim answers on its own only what the agent cannot: stdin unreadable or
 * too large (6), the agent's socket absent, refused or unreachable, or a reply
 * in another protocol (11; for VERSION the fixed list of supported versions
 * instead), a reply with numbers out of range (999).  Its errors are in the
 * latest CNI version (the format every version shares) and quote only the
 * socket path, CNI_COMMAND and libc's error text, bytes outside printable
 * ASCII (and the backslash) as the text \xHH.
 *
 * Built statically by `multinic-agent build-shim` (shim_build.py); C99 + POSIX, libc only.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define MAGIC "MULTINIC/1" /* sent with its terminating NUL */
#define MAGIC_LEN (sizeof MAGIC)
#define HEADER_LEN (MAGIC_LEN + 12)
#define DEFAULT_SOCKET "/run/multinic/agent.sock"
#define DEFAULT_TIMEOUT_S 300.0
#define MAX_TIMEOUT_S 1e6
#define MAX_STDIN ((size_t)4 * 1024 * 1024)
#define MAX_PART ((uint32_t)4 * 1024 * 1024) /* the reply's stdout, and its stderr */
#define CODE_DECODE 6
#define CODE_TRY_AGAIN 11
#define CODE_OTHER 999
#define ERROR_HEAD "{\"cniVersion\":\"1.1.0\",\"code\":"
#define VERSIONS                                                                                  \
    "{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\","  \
    "\"1.1.0\"]}"

extern char **environ;

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

/* Global, so that they are still reachable at exit (for the sanitizers' leak check). */
static buf_t request, reply, msg, out;
static const char *command = ""; /* CNI_COMMAND, in the details of the shim's own errors */

static void write_all(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            exit(1); /* nowhere left to say so */
        }
        s += w;
        n -= (size_t)w;
    }
}

static void put(buf_t *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *grown = realloc(b->data, cap);
        if (grown == NULL) {
            static const char oom[] = ERROR_HEAD "999,\"msg\":\"multi-nic shim: out of memory\","
                                                 "\"details\":\"\"}";
            write_all(STDOUT_FILENO, oom, sizeof oom - 1);
            exit(1);
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void puts_(buf_t *b, const char *s) { put(b, s, strlen(s)); }

/* A JSON string of bytes: printable ASCII as is, the rest (and \) as the text \xHH. */
static void quote(const char *s, size_t n) {
    put(&out, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"') {
            put(&out, "\\\"", 2);
        } else if (c >= 0x20 && c < 0x7f && c != '\\') {
            put(&out, (const char *)&c, 1);
        } else {
            snprintf(esc, sizeof esc, "\\\\x%02x", c);
            put(&out, esc, 5);
        }
    }
    put(&out, "\"", 1);
}

/* msg = head + path + tail: the message of most of the shim's own errors. */
static void message(const char *head, const char *path, const char *tail) {
    msg.len = 0;
    puts_(&msg, head);
    puts_(&msg, path);
    puts_(&msg, tail);
}

/* The shim's own answer (msg): a CNI error, or for VERSION out of the agent's reach, the list. */
static int fail(int code) {
    if (code == CODE_TRY_AGAIN && strcmp(command, "VERSION") == 0) {
        write_all(STDOUT_FILENO, VERSIONS, sizeof VERSIONS - 1);
        return 0;
    }
    char text[32];
    snprintf(text, sizeof text, "%d,\"msg\":", code);
    puts_(&out, ERROR_HEAD);
    puts_(&out, text);
    quote(msg.data, msg.len);
    msg.len = 0;
    puts_(&msg, "CNI_COMMAND=");
    puts_(&msg, command);
    puts_(&out, ",\"details\":");
    quote(msg.data, msg.len);
    puts_(&out, "}");
    write_all(STDOUT_FILENO, out.data, out.len);
    return 1;
}

/* str() of Python's OSError, as shim.py reports it. */
static const char *os_error(int err) {
    static char text[256];
    if (err == EAGAIN || err == EWOULDBLOCK) {
        return "timed out";
    }
    snprintf(text, sizeof text, "[Errno %d] %s", err, strerror(err));
    return text;
}

/* MULTINIC_SHIM_TIMEOUT: digits and a point, above 0 and at most 1e6; else the default. */
static double timeout_s(void) {
    const char *text = getenv("MULTINIC_SHIM_TIMEOUT");
    if (text != NULL && *text && strspn(text, "0123456789.") == strlen(text)) {
        char *end;
        double value = strtod(text, &end);
        if (*end == '\0' && value > 0 && value <= MAX_TIMEOUT_S) {
            return value;
        }
    }
    return DEFAULT_TIMEOUT_S;
}

static uint32_t field(int index) { /* of the reply's header: exit status, stdout, stderr length */
    const unsigned char *u = (const unsigned char *)reply.data + MAGIC_LEN + 4 * index;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    command = getenv("CNI_COMMAND") ? getenv("CNI_COMMAND") : "";
    put(&request, MAGIC, MAGIC_LEN);
    for (char **entry = environ; *entry; entry++) {
        if (strncmp(*entry, "CNI_", 4) == 0 && strchr(*entry, '=') != NULL) {
            put(&request, *entry, strlen(*entry) + 1);
        }
    }
    put(&request, "", 1);
    size_t header = request.len;
    char chunk[65536];
    for (ssize_t n; (n = read(STDIN_FILENO, chunk, sizeof chunk)) != 0;) {
        if (n < 0 && errno != EINTR) {
            message("cannot read stdin: ", os_error(errno), "");
            return fail(CODE_DECODE);
        }
        put(&request, chunk, n < 0 ? 0 : (size_t)n);
        if (request.len - header > MAX_STDIN) {
            message("network config exceeds 4194304 bytes (the shim's limit)", "", "");
            return fail(CODE_DECODE);
        }
    }

    const char *path = getenv("MULTINIC_AGENT_SOCKET");
    path = path && *path ? path : DEFAULT_SOCKET;
    /* A socket planted by someone else would get every pod's config: as root, only root's. */
    struct stat info;
    if (lstat(path, &info) != 0) {
        int err = errno;
        if (err == ENOENT) {
            message("agent socket ", path, " does not exist (is multinic-agent running?)");
        } else {
            message("agent socket ", path, " cannot be inspected: ");
            puts_(&msg, strerror(err));
        }
        return fail(CODE_TRY_AGAIN);
    }
    if (!S_ISSOCK(info.st_mode)) {
        message("refusing agent socket ", path, ": it is not a unix socket");
        return fail(CODE_TRY_AGAIN);
    }
    if (geteuid() == 0 && info.st_uid != 0) {
        char uid[64];
        snprintf(uid, sizeof uid, ": owned by uid %lu, not root", (unsigned long)info.st_uid);
        message("refusing agent socket ", path, uid);
        return fail(CODE_TRY_AGAIN);
    }

    message("multinic agent at ", path, " is unreachable: ");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t path_len = strlen(path);
    if (path_len > sizeof addr.sun_path) {
        puts_(&msg, "AF_UNIX path too long");
        return fail(CODE_TRY_AGAIN);
    }
    memcpy(addr.sun_path, path, path_len);
    double timeout = timeout_s();
    struct timeval tv = {(time_t)timeout, (suseconds_t)((timeout - (double)(time_t)timeout) * 1e6)};
    tv.tv_usec += tv.tv_sec == 0 && tv.tv_usec == 0; /* 0 would be no timeout at all */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
             setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0;
    socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len);
    while (!rc && (rc = connect(fd, (struct sockaddr *)&addr, addr_len)) != 0 && errno == EINTR) {
        rc = 0;
    }
    if (rc != 0) {
        puts_(&msg, os_error(errno));
        return fail(CODE_TRY_AGAIN);
    }
    /* A send that fails may still have an answer behind it (the agent refused early). */
    int send_error = 0;
    for (size_t sent = 0; sent < request.len && !send_error;) {
        ssize_t n = send(fd, request.data + sent, request.len - sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EINTR) {
            send_error = errno;
        }
        sent += n < 0 ? 0 : (size_t)n;
    }
    if (!send_error) {
        shutdown(fd, SHUT_WR);
    }
    for (size_t want = HEADER_LEN; reply.len < want;) {
        ssize_t n = recv(fd, chunk, sizeof chunk, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            int err = send_error ? send_error : n < 0 ? errno : 0;
            puts_(&msg, err               ? os_error(err)
                        : reply.len == 0 ? "agent closed the connection without a reply"
                                         : "agent closed the connection in mid-reply");
            return fail(CODE_TRY_AGAIN);
        }
        put(&reply, chunk, (size_t)n);
        /* Another protocol is an agent of another version (being upgraded): try again. */
        int code = 0;
        if (memcmp(reply.data, MAGIC, reply.len < MAGIC_LEN ? reply.len : MAGIC_LEN) != 0) {
            code = CODE_TRY_AGAIN;
        } else if (want == HEADER_LEN && reply.len >= HEADER_LEN) {
            if (field(0) > 255 || field(1) > MAX_PART || field(2) > MAX_PART) {
                code = CODE_OTHER;
            }
            want = HEADER_LEN + (size_t)field(1) + (size_t)field(2);
        }
        if (code != 0) {
            message("multinic agent at ", path, " sent a malformed reply: ");
            puts_(&msg, code == CODE_OTHER ? "its exit status or a length is out of range"
                                           : "not MULTINIC/1 (an agent of another version?)");
            return fail(code);
        }
    }
    write_all(STDERR_FILENO, reply.data + HEADER_LEN + field(1), field(2));
    write_all(STDOUT_FILENO, reply.data + HEADER_LEN, field(1));
    return (int)field(0);
}
