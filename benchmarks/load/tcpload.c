/*
 * tcpload: the raw TCP load generator of benchmarks/load/run.py (compiled at run time with gcc -O2).
 *
 *   tcpload pingpong HOST PORT CONNS MSG_BYTES SECONDS
 *       CONNS connections; each sends MSG_BYTES, waits until all of them came back, sends again.
 *       Reports round trips per second and the round-trip latency (p50, p99).
 *   tcpload bulk HOST PORT CONNS CHUNK_BYTES SECONDS
 *       CONNS connections; each writes CHUNK_BYTES writes as fast as the socket takes them and reads
 *       whatever comes back. Reports the echoed bytes per second (one direction; as many go the other way).
 *   tcpload fanout HOST PORT CONNS MSG_BYTES SECONDS
 *       The sample's chat port: CONNS connections read their "id <hex>" line; the first one sends
 *       "say <text>" lines sized so that each delivered line ("<hex id>: <text>\n") is MSG_BYTES long,
 *       keeping at most FANOUT_WINDOW broadcasts in flight (a broadcast is done when every other
 *       connection received its line). Reports lines delivered per second (ops) and checks that every
 *       line is whole and from the sender. Once every connection has its id it prints "connected N" and
 *       waits for a line (or end of file) on stdin before it starts, so that a caller can measure the
 *       server over the broadcasts alone, without the 10,000 accepts.
 *   tcpload idle HOST PORT CONNS MAX_HOLD_SECONDS
 *       Opens CONNS connections that send nothing, prints "connected N" on stdout, then holds them
 *       until a line (or end of file) arrives on stdin, or MAX_HOLD_SECONDS pass; then checks which are
 *       still open and closes them all with RST (SO_LINGER 0: no TIME_WAIT left on the loopback ports).
 *
 * The last line on stdout is one JSON object. Exit status 0 when it ran (whatever it measured), 2 on
 * bad arguments, 3 when no connection could be made. Every mode stops by itself (alarm as a backstop).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static struct sockaddr_in target;

/* A blocking connect (loopback: immediate unless the server's accept queue is full), then non-blocking. */
static int open_conn(int nodelay, int rst_on_close)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&target, sizeof target) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    if (nodelay) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (rst_on_close) {
        struct linger lg = { 1, 0 };
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* Latency histogram: 1 µs buckets up to 10 ms, then 100 µs buckets up to 1 s, then one overflow bucket. */
#define FINE 10000
#define COARSE 9900
static uint64_t hist[FINE + COARSE + 1];

static void record_us(double us)
{
    long v = (long)us;
    if (v < 0) v = 0;
    if (v < FINE) hist[v]++;
    else if (v < FINE + COARSE * 100L) hist[FINE + (v - FINE) / 100]++;
    else hist[FINE + COARSE]++;
}

static double percentile_us(uint64_t total, double p)
{
    if (total == 0) return 0;
    uint64_t want = (uint64_t)(p * (double)total);
    if (want >= total) want = total - 1;
    uint64_t seen = 0;
    for (long i = 0; i <= FINE + COARSE; i++) {
        seen += hist[i];
        if (seen > want) {
            return i < FINE ? (double)i + 0.5 : (double)(FINE + (i - FINE) * 100L) + 50.0;
        }
    }
    return (double)(FINE + COARSE * 100L);
}

struct conn {
    int fd;
    size_t got;       /* pingpong: bytes of the current message echoed so far */
    double sent_at;   /* pingpong: when the current message left */
    int dead;
};

static int run_pingpong(int conns, size_t msg, double seconds)
{
    struct conn *c = calloc((size_t)conns, sizeof *c);
    char *out = malloc(msg), *in = malloc(65536);
    memset(out, 'x', msg);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int opened = 0, errors = 0, closed = 0;
    for (int i = 0; i < conns; i++) {
        c[i].fd = open_conn(1, 0);
        if (c[i].fd < 0) { c[i].dead = 1; errors++; continue; }
        opened++;
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
        epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev);
    }
    if (opened == 0) {
        printf("{\"mode\":\"pingpong\",\"error\":\"no connection\",\"connect_errors\":%d}\n", errors);
        return 3;
    }
    double start = now(), end = start + seconds;
    for (int i = 0; i < conns; i++) {
        if (c[i].dead) continue;
        c[i].sent_at = now();
        if (send(c[i].fd, out, msg, MSG_NOSIGNAL) != (ssize_t)msg) { c[i].dead = 1; errors++; }
    }
    uint64_t trips = 0;
    struct epoll_event evs[256];
    double t = start;
    while (t < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        t = now();
        for (int k = 0; k < n; k++) {
            struct conn *x = &c[evs[k].data.u32];
            if (x->dead) continue;
            ssize_t r = recv(x->fd, in, 65536, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                x->dead = 1;
                if (r == 0) closed++; else errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
                continue;
            }
            x->got += (size_t)r;
            if (x->got >= msg) {
                /* One message in flight per connection, so more than msg bytes would be a server bug. */
                if (x->got > msg) errors++;
                x->got = 0;
                trips++;
                record_us((t - x->sent_at) * 1e6);
                x->sent_at = t;
                if (send(x->fd, out, msg, MSG_NOSIGNAL) != (ssize_t)msg) {
                    x->dead = 1;
                    errors++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
                }
            }
        }
    }
    double elapsed = now() - start;
    int alive = 0;
    for (int i = 0; i < conns; i++) {
        if (!c[i].dead) alive++;
        if (c[i].fd >= 0) close(c[i].fd);
    }
    printf("{\"mode\":\"pingpong\",\"conns\":%d,\"opened\":%d,\"alive_at_end\":%d,\"msg_bytes\":%zu,"
           "\"seconds\":%.4f,\"ops\":%llu,\"rate\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
           "\"errors\":%d,\"closed_by_server\":%d}\n",
           conns, opened, alive, msg, elapsed, (unsigned long long)trips, (double)trips / elapsed,
           percentile_us(trips, 0.50), percentile_us(trips, 0.99), errors, closed);
    return 0;
}

static int run_bulk(int conns, size_t chunk, double seconds)
{
    struct conn *c = calloc((size_t)conns, sizeof *c);
    char *out = malloc(chunk), *in = malloc(262144);
    memset(out, 'y', chunk);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int opened = 0, errors = 0, closed = 0;
    for (int i = 0; i < conns; i++) {
        c[i].fd = open_conn(1, 0);
        if (c[i].fd < 0) { c[i].dead = 1; errors++; continue; }
        opened++;
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i };
        epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev);
    }
    if (opened == 0) {
        printf("{\"mode\":\"bulk\",\"error\":\"no connection\",\"connect_errors\":%d}\n", errors);
        return 3;
    }
    uint64_t sent = 0, received = 0;
    struct epoll_event evs[64];
    double start = now(), end = start + seconds, t = start;
    while (t < end) {
        int n = epoll_wait(ep, evs, 64, 100);
        for (int k = 0; k < n; k++) {
            struct conn *x = &c[evs[k].data.u32];
            if (x->dead) continue;
            if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                ssize_t r = recv(x->fd, in, 262144, 0);
                if (r > 0) {
                    received += (uint64_t)r;
                } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    x->dead = 1;
                    if (r == 0) closed++; else errors++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
                    continue;
                }
            }
            if (evs[k].events & EPOLLOUT) {
                ssize_t w = send(x->fd, out, chunk, MSG_NOSIGNAL);
                if (w > 0) {
                    sent += (uint64_t)w;
                } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                    x->dead = 1;
                    errors++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
                }
            }
        }
        t = now();
    }
    double elapsed = now() - start;
    int alive = 0;
    for (int i = 0; i < conns; i++) {
        if (!c[i].dead) alive++;
        if (c[i].fd >= 0) close(c[i].fd);
    }
    printf("{\"mode\":\"bulk\",\"conns\":%d,\"opened\":%d,\"alive_at_end\":%d,\"chunk_bytes\":%zu,"
           "\"seconds\":%.4f,\"sent_bytes\":%llu,\"ops\":%llu,\"rate\":%.1f,\"mb_per_s\":%.2f,"
           "\"errors\":%d,\"closed_by_server\":%d}\n",
           conns, opened, alive, chunk, elapsed, (unsigned long long)sent, (unsigned long long)received,
           (double)received / elapsed, (double)received / elapsed / 1e6, errors, closed);
    return 0;
}

static int run_idle(int conns, double max_hold)
{
    int *fds = malloc(sizeof(int) * (size_t)conns);
    int opened = 0, failed = 0;
    double start = now(), deadline = start + max_hold;
    /* Paced in batches: connecting faster than the server accepts overflows its accept queue, and every dropped
     * SYN costs a 1 s retransmission. A batch that met a slow connect doubles the pause after it. */
    const int batch = 128;
    long pause_us = 5000;
    for (int i = 0; i < conns; i++) {
        double t = now();
        fds[i] = t < deadline ? open_conn(0, 1) : -1;
        if (fds[i] < 0) failed++; else opened++;
        if (now() - t > 0.2 && pause_us < 200000) pause_us *= 2;
        if ((i + 1) % batch == 0) usleep((useconds_t)pause_us);
    }
    double connect_s = now() - start;
    printf("connected %d\n", opened);
    fflush(stdout);
    /* Hold until the runner has read the server's memory: a line or EOF on stdin, or the deadline. */
    for (;;) {
        double left = deadline - now();
        if (left <= 0) break;
        struct pollfd p = { .fd = 0, .events = POLLIN };
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r != 0) break;
    }
    int alive = 0, closed = 0, reset = 0;
    char b;
    for (int i = 0; i < conns; i++) {
        if (fds[i] < 0) continue;
        ssize_t r = recv(fds[i], &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) alive++;
        else if (r == 0) closed++;
        else if (r < 0) reset++;
        else alive++; /* the server sent something: still open */
        close(fds[i]);
    }
    printf("{\"mode\":\"idle\",\"conns\":%d,\"opened\":%d,\"connect_failures\":%d,\"connect_seconds\":%.3f,"
           "\"alive_at_end\":%d,\"closed_by_server\":%d,\"reset_by_server\":%d}\n",
           conns, opened, failed, connect_s, alive, closed, reset);
    return opened == 0 ? 3 : 0;
}

/* ---- fanout: broadcasts through the sample's chat port ---- */

#define FANOUT_WINDOW 16

struct reader {
    int fd;
    int dead;
    size_t len;          /* bytes of the current line so far */
    uint64_t lines;      /* lines received after the id line */
    char line[512];
};

/* Reads the whole "id <hex>\n" line, blocking-ish (poll, bounded): the first line the server sends. */
static int read_id_line(int fd, char *out, size_t cap)
{
    size_t len = 0;
    double deadline = now() + 10.0;
    while (now() < deadline) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t r = recv(fd, out + len, 1, 0); /* byte by byte: nothing after the id line may be swallowed */
        if (r <= 0) {
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            return -1;
        }
        if (out[len] == '\n') {
            out[len] = 0;
            return strncmp(out, "id ", 3) == 0 ? 0 : -1;
        }
        if (++len >= cap - 1) return -1;
    }
    return -1;
}

static int run_fanout(int conns, size_t msg, double seconds)
{
    if (conns < 2) {
        fprintf(stderr, "tcpload: fanout needs at least 2 connections\n");
        return 2;
    }
    struct reader *c = calloc((size_t)conns, sizeof *c);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int opened = 0, errors = 0, closed = 0, bad_lines = 0;
    char sender_id[128] = "";
    for (int i = 0; i < conns; i++) {
        c[i].fd = open_conn(1, 1);
        char idline[128];
        if (c[i].fd < 0 || read_id_line(c[i].fd, idline, sizeof idline) != 0) {
            if (c[i].fd >= 0) close(c[i].fd);
            c[i].fd = -1;
            c[i].dead = 1;
            errors++;
            continue;
        }
        if (i == 0) snprintf(sender_id, sizeof sender_id, "%s", idline + 3);
        opened++;
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
        epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev);
    }
    if (c[0].dead || opened < 2) {
        printf("{\"mode\":\"fanout\",\"error\":\"no connection\",\"connect_errors\":%d}\n", errors);
        return 3;
    }
    /* The delivered line is "<sender id>: <text>\n", MSG_BYTES long. */
    size_t prefix = strlen(sender_id) + 2;
    size_t text_len = msg > prefix + 2 ? msg - prefix - 1 : 1;
    char expect[512];
    if (prefix + text_len + 1 >= sizeof expect) {
        fprintf(stderr, "tcpload: fanout MSG_BYTES too large\n");
        return 2;
    }
    snprintf(expect, sizeof expect, "%s: ", sender_id);
    memset(expect + prefix, 'x', text_len);
    expect[prefix + text_len] = 0;
    char say[600];
    int say_len = snprintf(say, sizeof say, "say %s\n", expect + prefix);
    uint64_t receivers = 0;
    for (int i = 1; i < conns; i++) if (!c[i].dead) receivers++;
    printf("connected %d\n", opened);
    fflush(stdout);
    {
        struct pollfd p = { .fd = 0, .events = POLLIN };
        if (poll(&p, 1, 60000) > 0) {
            char go[64];
            if (read(0, go, sizeof go) < 0) { /* end of file or an error: start all the same */ }
        }
    }

    uint64_t done_count[FANOUT_WINDOW] = { 0 };
    uint64_t sent = 0, completed = 0, delivered = 0;
    double start = now(), end = start + seconds;
    char in[65536];
    struct epoll_event evs[256];
    while (now() < end) {
        while (sent < completed + FANOUT_WINDOW) {
            if (send(c[0].fd, say, (size_t)say_len, MSG_NOSIGNAL) != say_len) { errors++; goto out; }
            sent++;
        }
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            struct reader *x = &c[i];
            if (x->dead) continue;
            for (;;) {
                ssize_t r = recv(x->fd, in, sizeof in, 0);
                if (r <= 0) {
                    if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
                    x->dead = 1;
                    if (r == 0) closed++; else errors++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
                    if (i == 0) goto out;
                    break;
                }
                if (i == 0) continue; /* the sender gets nothing back for "say"; ignore whatever comes */
                /* Line by line with memchr/memcmp, not byte by byte: at a million lines a second the client's parsing
                 * was what bounded the measurement. A line split across reads is put together in x->line. */
                for (ssize_t b = 0; b < r;) {
                    const char *nl = memchr(in + b, '\n', (size_t)(r - b));
                    size_t part = nl ? (size_t)(nl - (in + b)) : (size_t)(r - b);
                    const char *whole;
                    size_t len;
                    if (x->len == 0 && nl) {
                        whole = in + b;   /* the common case: the whole line is in this read */
                        len = part;
                    } else {
                        size_t room = sizeof x->line - 1 > x->len ? sizeof x->line - 1 - x->len : 0;
                        memcpy(x->line + x->len, in + b, part < room ? part : room);
                        x->len += part;
                        whole = x->line;
                        len = x->len;
                    }
                    b += (ssize_t)part;
                    if (!nl) break;
                    b++; /* the '\n' */
                    /* A whole line: must be exactly the broadcast, never torn or another's. */
                    if (len != prefix + text_len || memcmp(whole, expect, len) != 0) bad_lines++;
                    x->len = 0;
                    uint64_t m = x->lines++;
                    delivered++;
                    if (m < completed || m >= sent) { bad_lines++; continue; }
                    if (++done_count[m % FANOUT_WINDOW] == receivers) {
                        done_count[m % FANOUT_WINDOW] = 0;
                        /* Lines arrive in order per connection, so broadcasts complete in order. */
                        completed++;
                    }
                }
                if (r < (ssize_t)sizeof in) break;
            }
        }
    }
out:;
    double elapsed = now() - start;
    int alive = 0;
    for (int i = 0; i < conns; i++) {
        if (!c[i].dead) alive++;
        if (c[i].fd >= 0) close(c[i].fd);
    }
    printf("{\"mode\":\"fanout\",\"conns\":%d,\"opened\":%d,\"alive_at_end\":%d,\"msg_bytes\":%zu,"
           "\"seconds\":%.4f,\"ops\":%llu,\"rate\":%.1f,\"broadcasts\":%llu,\"bad_lines\":%d,"
           "\"errors\":%d,\"closed_by_server\":%d}\n",
           conns, opened, alive, prefix + text_len + 1, elapsed, (unsigned long long)delivered,
           (double)delivered / elapsed, (unsigned long long)completed, bad_lines, errors + bad_lines, closed);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: tcpload pingpong|bulk|fanout HOST PORT CONNS BYTES SECONDS | tcpload idle HOST PORT CONNS MAX_HOLD_SECONDS\n");
        return 2;
    }
    const char *mode = argv[1];
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &target.sin_addr) != 1) {
        fprintf(stderr, "tcpload: HOST must be an IPv4 address\n");
        return 2;
    }
    int conns = atoi(argv[4]);
    if (conns <= 0) {
        fprintf(stderr, "tcpload: CONNS must be positive\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    if (strcmp(mode, "idle") == 0) {
        double hold = atof(argv[5]);
        alarm((unsigned)hold + 30);
        return run_idle(conns, hold);
    }
    if (argc < 7) {
        fprintf(stderr, "tcpload: %s needs BYTES and SECONDS\n", mode);
        return 2;
    }
    size_t bytes = (size_t)atol(argv[5]);
    double seconds = atof(argv[6]);
    if (bytes == 0 || seconds <= 0) {
        fprintf(stderr, "tcpload: BYTES and SECONDS must be positive\n");
        return 2;
    }
    alarm((unsigned)seconds + 30);
    if (strcmp(mode, "pingpong") == 0) return run_pingpong(conns, bytes, seconds);
    if (strcmp(mode, "bulk") == 0) return run_bulk(conns, bytes, seconds);
    if (strcmp(mode, "fanout") == 0) return run_fanout(conns, bytes, seconds);
    fprintf(stderr, "tcpload: unknown mode %s\n", mode);
    return 2;
}
