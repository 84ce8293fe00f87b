// New connections per second against the sample: each worker loops connect, one GET /plaintext (with a PROXY protocol
// header first when asked: 1 = v1 text, 2 = v2 binary, in the same write as the request, as HAProxy sends it), read
// the whole response, close with a RST (SO_LINGER 0, so neither side keeps TIME_WAIT and the ports never run out).
// Prints "connections/s N". Pin it away from the server: taskset -c 1 ./connrate PORT SECONDS WORKERS HEADER.
//
//   gcc -O2 -o /tmp/connrate benchmarks/load/connrate.c
//   taskset -c 1 /tmp/connrate 5080 5 4 0      # no header, to a sample without --ProxyProtocol
//   taskset -c 1 /tmp/connrate 5081 5 4 1      # v1 header, to a sample with --ProxyProtocol true
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: connrate PORT SECONDS WORKERS HEADER(0|1|2)\n"); return 2; }
    int port = atoi(argv[1]), workers = atoi(argv[3]), header = atoi(argv[4]);
    double seconds = atof(argv[2]);
    static const char request[] = "GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    char out[256]; int len = 0;
    if (header == 1) {
        len = snprintf(out, sizeof out, "PROXY TCP4 192.0.2.1 127.0.0.1 40000 %d\r\n", port);
    } else if (header == 2) {
        static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
        unsigned char *h = (unsigned char *)out;
        memcpy(h, sig, 12); h[12] = 0x21; h[13] = 0x11; h[14] = 0; h[15] = 12;
        unsigned char addr[12] = {192, 0, 2, 1, 127, 0, 0, 1, 40000 >> 8, 40000 & 0xFF, port >> 8, port & 0xFF};
        memcpy(h + 16, addr, 12); len = 28;
    }
    memcpy(out + len, request, sizeof request - 1); len += sizeof request - 1;

    int fds[2]; if (pipe(fds) != 0) { perror("pipe"); return 1; }
    for (int w = 0; w < workers; w++) {
        if (fork() != 0) continue;
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
        struct linger lg = {1, 0};
        long done = 0, failed = 0; char buf[4096];
        double end = now() + seconds;
        while (now() < end) {
            int s = socket(AF_INET, SOCK_STREAM, 0); int one = 1;
            setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            int ok = connect(s, (void *)&a, sizeof a) == 0 && write(s, out, len) == len;
            // The response ends with its 13-byte body "Hello, World!".
            int got = 0;
            while (ok) {
                ssize_t n = read(s, buf + got, sizeof buf - 1 - got);
                if (n <= 0) { ok = 0; break; }
                got += n; buf[got] = 0;
                if (got >= 13 && memcmp(buf + got - 13, "Hello, World!", 13) == 0) break;
            }
            setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(s);
            if (ok) done++; else failed++;
        }
        long r[2] = {done, failed};
        if (write(fds[1], r, sizeof r) != sizeof r) _exit(1);
        _exit(0);
    }
    long total = 0, failures = 0;
    for (int w = 0; w < workers; w++) { long r[2]; if (read(fds[0], r, sizeof r) == sizeof r) { total += r[0]; failures += r[1]; } }
    while (wait(NULL) > 0) {}
    printf("connections/s %.0f failed %ld\n", total / seconds, failures);
    return failures > 0 ? 1 : 0;
}
