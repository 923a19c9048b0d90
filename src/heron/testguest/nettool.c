/*
 * heron-nettool: the test guest measures its own network, so a test can prove that traffic
 * really flows between two guests (and roughly how well) without any tool on the host side.
 *
 * Built by heron.testguest.build (gcc -static); /init starts "nettool serve 7" at boot.
 *
 *   nettool serve PORT               TCP server, one process per connection
 *   nettool send HOST PORT SECONDS   stream to HOST for SECONDS; prints
 *                                    throughput_bps=N bytes=N seconds=F
 *   nettool rtt HOST PORT COUNT      COUNT request/response round trips; prints
 *                                    rtt_us_median=N rtt_us_min=N rtt_us_max=N count=N
 *
 * The first byte a client sends picks the service: 'E' echoes every later byte back, 'S' sinks
 * them and answers the byte count (decimal, newline) once the client has shut down its side.
 * The sender's figure therefore counts only bytes that reached the server, over the time until
 * the server had them all, not what sat in the sender's socket buffer. Every socket has a
 * timeout, so a lost peer ends a command with an error instead of hanging a test.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IO_TIMEOUT_S 10
#define CHUNK 65536
#define PING_BYTES 32
#define MAX_COUNT 100000

static void die(const char *what)
{
    fprintf(stderr, "nettool: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void set_timeouts(int fd)
{
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("write");
        buf += n;
        len -= (size_t)n;
    }
}

/* Reads exactly len bytes; 0 if the peer closed first. */
static int read_all(int fd, char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("read");
        if (n == 0)
            return 0;
        buf += n;
        len -= (size_t)n;
    }
    return 1;
}

static long parse_number(const char *text, long low, long high, const char *what)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || *end || end == text || value < low || value > high) {
        fprintf(stderr, "nettool: %s must be a number from %ld to %ld\n", what, low, high);
        exit(2);
    }
    return value;
}

/* Addresses only: the guest has no resolver, and a static glibc cannot load one anyway. */
static int dial(const char *host, const char *port_text)
{
    uint16_t port = htons((uint16_t)parse_number(port_text, 1, 65535, "PORT"));
    struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = port};
    struct sockaddr_in6 v6 = {.sin6_family = AF_INET6, .sin6_port = port};
    struct sockaddr *addr;
    socklen_t len;
    if (inet_pton(AF_INET, host, &v4.sin_addr) == 1) {
        addr = (struct sockaddr *)&v4;
        len = sizeof v4;
    } else if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1) {
        addr = (struct sockaddr *)&v6;
        len = sizeof v6;
    } else {
        fprintf(stderr, "nettool: %s is not an IPv4 or IPv6 address\n", host);
        exit(2);
    }
    int fd = socket(addr->sa_family, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    /* SO_SNDTIMEO also bounds connect() on Linux. */
    set_timeouts(fd);
    if (connect(fd, addr, len) < 0)
        die("connect");
    return fd;
}

static void serve_client(int fd)
{
    static char buf[CHUNK];
    char mode;
    unsigned long long total = 0;
    set_timeouts(fd);
    if (!read_all(fd, &mode, 1))
        return;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        total += (unsigned long long)n;
        if (mode == 'E')
            write_all(fd, buf, (size_t)n);
    }
    if (mode == 'S') {
        char line[32];
        int len = snprintf(line, sizeof line, "%llu\n", total);
        write_all(fd, line, (size_t)len);
    }
}

static int serve(const char *port_text)
{
    int port = (int)parse_number(port_text, 1, 65535, "PORT");
    int one = 1, zero = 0;
    /* One dual-stack socket answers IPv4 and IPv6 alike. */
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 addr = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(fd, 64) < 0)
        die("listen");
    /* Children are reaped by the kernel, so a long-lived server leaves no zombies. */
    signal(SIGCHLD, SIG_IGN);
    printf("heron-nettool serving port=%d\n", port);
    fflush(stdout);
    for (;;) {
        int client = accept(fd, NULL, NULL);
        if (client < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            die("accept");
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(fd);
            serve_client(client);
            _exit(0);
        }
        close(client);
    }
}

static int send_stream(const char *host, const char *port, const char *seconds_text)
{
    static char buf[CHUNK];
    long seconds = parse_number(seconds_text, 1, 3600, "SECONDS");
    int fd = dial(host, port);
    unsigned long long sent = 0;
    memset(buf, 'x', sizeof buf);
    write_all(fd, "S", 1);
    double start = now(), stop = start + (double)seconds;
    while (now() < stop) {
        write_all(fd, buf, sizeof buf);
        sent += sizeof buf;
    }
    shutdown(fd, SHUT_WR);
    char line[32] = {0};
    size_t got = 0;
    while (got < sizeof line - 1) {
        ssize_t n = read(fd, line + got, sizeof line - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("read the server's count");
        if (n == 0)
            break;
        got += (size_t)n;
    }
    double elapsed = now() - start;
    unsigned long long received = strtoull(line, NULL, 10);
    if (received != sent) {
        fprintf(stderr, "nettool: sent %llu bytes, the server counted %llu\n", sent, received);
        return 1;
    }
    printf("throughput_bps=%.0f bytes=%llu seconds=%.3f\n", received * 8.0 / elapsed, received,
           elapsed);
    return 0;
}

static int compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int round_trips(const char *host, const char *port, const char *count_text)
{
    long count = parse_number(count_text, 1, MAX_COUNT, "COUNT");
    double *rtt = calloc((size_t)count, sizeof *rtt);
    char out[PING_BYTES], in[PING_BYTES];
    int one = 1;
    if (!rtt)
        die("calloc");
    int fd = dial(host, port);
    /* Without it Nagle would hold each small request back behind the previous one's ACK. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    write_all(fd, "E", 1);
    for (long i = 0; i < count; i++) {
        memset(out, 'a' + (int)(i % 26), sizeof out);
        double start = now();
        write_all(fd, out, sizeof out);
        if (!read_all(fd, in, sizeof in) || memcmp(in, out, sizeof in) != 0) {
            fprintf(stderr, "nettool: round trip %ld came back wrong or not at all\n", i);
            return 1;
        }
        rtt[i] = (now() - start) * 1e6;
    }
    qsort(rtt, (size_t)count, sizeof *rtt, compare);
    double median = count % 2 ? rtt[count / 2] : (rtt[count / 2 - 1] + rtt[count / 2]) / 2;
    printf("rtt_us_median=%.0f rtt_us_min=%.0f rtt_us_max=%.0f count=%ld\n", median, rtt[0],
           rtt[count - 1], count);
    return 0;
}

int main(int argc, char **argv)
{
    /* A peer that resets mid-stream must give an error message, not a silent SIGPIPE death. */
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && strcmp(argv[1], "serve") == 0)
        return serve(argv[2]);
    if (argc == 5 && strcmp(argv[1], "send") == 0)
        return send_stream(argv[2], argv[3], argv[4]);
    if (argc == 5 && strcmp(argv[1], "rtt") == 0)
        return round_trips(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: nettool serve PORT | send HOST PORT SECONDS | rtt HOST PORT COUNT\n");
    return 2;
}
