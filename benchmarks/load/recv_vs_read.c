// What a socket call costs by its name: a loopback TCP connection in one thread, a 100-byte request and a 120-byte
// response per exchange (a small HTTP request and answer), the server side read with read(2) and answered with
// sendmsg(2) of one iovec (mode 0), or with recv(2) and send(2) (mode 1). Prints the server side's time per call.
// No .NET involved: on a socket, read(2) goes through the file layer first (the position lock of fdget_pos, the
// permission hooks of vfs_read) and sendmsg(2) copies a msghdr and an iovec in from user space; recv(2) and
// send(2) go to the socket at once.
//
//   gcc -O2 -o /tmp/rvr benchmarks/load/recv_vs_read.c
//   for r in 1 2 3; do taskset -c 1 /tmp/rvr 0 200000; taskset -c 1 /tmp/rvr 1 200000; done
//
// Seen on the 2-core VM of benchmarks/results (Linux 6.18, 2026-11-30), interleaved pairs: in a slow phase of the
// machine read 2.42 / 2.06 / 1.78 us against recv 2.20 / 1.82 / 1.64, sendmsg 4.96 / 3.94 / 3.26 against send 4.74 /
// 3.74 / 3.17; in a fast one read 1.69-1.74 against recv 1.50-1.62, sendmsg 3.00-3.10 against send 2.94-3.07: recv
// is 0.1-0.2 us cheaper in every pair, send 0-0.2 us.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODE(0 read+sendmsg, 1 recv+send) EXCHANGES\n", argv[0]);
        return 2;
    }
    int mode = atoi(argv[1]), n = atoi(argv[2]);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {0};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (bind(listener, (void *)&address, sizeof address) || listen(listener, 1) || getsockname(listener, (void *)&address, &length)) {
        perror("listen");
        return 1;
    }
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(client, (void *)&address, sizeof address)) {
        perror("connect");
        return 1;
    }
    int server = accept(listener, 0, 0), one = 1;
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    char buffer[4096], message[128];
    memset(message, 'x', sizeof message);
    double reading = 0, writing = 0;
    for (int i = 0; i < n; i++) {
        if (send(client, message, 100, 0) != 100) {
            perror("request");
            return 1;
        }
        double t0 = now();
        ssize_t got = mode == 0 ? read(server, buffer, sizeof buffer) : recv(server, buffer, sizeof buffer, 0);
        double t1 = now();
        ssize_t sent;
        if (mode == 0) {
            struct iovec vector = {message, 120};
            struct msghdr header = {0};
            header.msg_iov = &vector;
            header.msg_iovlen = 1;
            sent = sendmsg(server, &header, MSG_NOSIGNAL);
        } else {
            sent = send(server, message, 120, MSG_NOSIGNAL);
        }
        double t2 = now();
        if (got != 100 || sent != 120 || recv(client, buffer, sizeof buffer, 0) != 120) {
            fprintf(stderr, "short exchange\n");
            return 1;
        }
        reading += t1 - t0;
        writing += t2 - t1;
    }
    printf("%s: %.3f us per read, %.3f us per send\n", mode == 0 ? "read + sendmsg" : "recv + send", reading / n * 1e6, writing / n * 1e6);
    return 0;
}
