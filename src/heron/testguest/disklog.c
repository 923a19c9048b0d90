/*
 * heron-disklog: the test guest writes a log of checksummed records to a disk and says which
 * writes the disk acknowledged, so that a test can prove no acknowledged write was lost
 * through whatever happened to the VM meanwhile (migrations, crashes and HA restarts, storage
 * nodes killed).
 *
 * Built by heron.testguest.build (gcc -static); the guest's /init starts it for every disk
 * prepared for it: one whose first 4 KiB begin with MAGIC (written by
 * heron.testguest.disklog.prepare on the host). Other disks are never touched.
 *
 * Layout: block 0 is the header; record N (from 0) fills block N + 1. A record holds
 * RECORD_MAGIC, its number, the id of the writer that wrote it (random per start), and a
 * CRC-32 of the whole block with the CRC field zero; the rest is a pattern derived from the
 * number. Each record is written with O_DIRECT and O_DSYNC, then fdatasync: once that returns,
 * the disk has acknowledged it.
 *
 * On start the writer finds the log's valid prefix (records 0.. whose number matches their
 * place and whose CRC holds) and goes on after it, so a guest restarted from the disk (HA, a
 * crash) continues the same log; the host checks the prefix covers every record acknowledged
 * before. Output on the serial console, one line each:
 *   heron-disklog resume dev=DEV from=N writer=W t=SECONDS   (t: the guest's realtime clock)
 *   heron-disklog ack=N writer=W     (records 0..N are acknowledged; every 10 records or 0.5 s)
 *   heron-disklog full at=N
 *   heron-disklog verified dev=DEV upto=N      (verify: the valid prefix is records 0..N-1)
 *   heron-disklog ERROR ...
 *
 * Usage: heron-disklog probe DEV | write DEV | verify DEV
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/fs.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096u
#define MAGIC "HERON-DISKLOG-V1"
#define RECORD_MAGIC 0x31474f4c4e524548ull /* "HERNLOG1" in little-endian bytes */
#define PERIOD_NS 20000000L                /* a record every 20 ms at most */
#define ACK_EVERY 10u
#define ACK_NS 500000000L

struct record {
    uint64_t magic;
    uint64_t number;
    uint64_t writer;
    uint32_t crc;
    uint32_t pad;
};

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_of(const unsigned char *data, size_t length)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < length; i++)
        c = crc_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void say(const char *line)
{
    /* One write per line: lines of several processes on the console never interleave. */
    if (write(1, line, strlen(line)) < 0)
        return;
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void fill(unsigned char *block, uint64_t number, uint64_t writer)
{
    uint64_t *words = (uint64_t *)block;
    for (size_t i = 0; i < BLOCK / 8; i++)
        words[i] = (number + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)i;
    struct record *r = (struct record *)block;
    r->magic = RECORD_MAGIC;
    r->number = number;
    r->writer = writer;
    r->crc = 0;
    r->pad = 0;
    r->crc = crc32_of(block, BLOCK);
}

static int valid(unsigned char *block, uint64_t number)
{
    struct record *r = (struct record *)block;
    if (r->magic != RECORD_MAGIC || r->number != number)
        return 0;
    uint32_t crc = r->crc;
    r->crc = 0;
    int ok = crc32_of(block, BLOCK) == crc;
    r->crc = crc;
    return ok;
}

static int open_log(const char *dev, int flags, uint64_t *capacity, unsigned char *block)
{
    int fd = open(dev, flags | O_DIRECT);
    if (fd < 0 && errno == EINVAL)
        fd = open(dev, flags); /* a file where O_DIRECT is not supported (the host's tests) */
    if (fd < 0)
        return -1;
    uint64_t bytes = 0;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
        bytes = (uint64_t)st.st_size;
    else if (ioctl(fd, BLKGETSIZE64, &bytes) != 0)
        bytes = 0;
    if (bytes < 2 * BLOCK ||
        pread(fd, block, BLOCK, 0) != (ssize_t)BLOCK || memcmp(block, MAGIC, strlen(MAGIC))) {
        close(fd);
        errno = ENOENT;
        return -1;
    }
    *capacity = bytes / BLOCK - 1;
    return fd;
}

/* The number of records at the start of the log that are whole and in their place. */
static uint64_t prefix(int fd, uint64_t capacity, unsigned char *block)
{
    uint64_t n = 0;
    while (n < capacity && pread(fd, block, BLOCK, (off_t)(n + 1) * BLOCK) == (ssize_t)BLOCK &&
           valid(block, n))
        n++;
    return n;
}

static int write_log(const char *dev, unsigned char *block)
{
    uint64_t capacity;
    int fd = open_log(dev, O_RDWR | O_DSYNC, &capacity, block);
    if (fd < 0)
        return 2;
    uint64_t next = prefix(fd, capacity, block);
    uint64_t writer;
    int random = open("/dev/urandom", O_RDONLY);
    if (random < 0 || read(random, &writer, sizeof writer) != (ssize_t)sizeof writer)
        writer = now_ns();
    if (random >= 0)
        close(random);
    char line[160];
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    snprintf(line, sizeof line, "heron-disklog resume dev=%s from=%llu writer=%016llx t=%lld.%03ld\n",
             dev, (unsigned long long)next, (unsigned long long)writer, (long long)wall.tv_sec,
             wall.tv_nsec / 1000000);
    say(line);
    uint64_t last_said = now_ns();
    uint64_t unsaid = 0;
    for (; next < capacity; next++) {
        uint64_t started = now_ns();
        fill(block, next, writer);
        if (pwrite(fd, block, BLOCK, (off_t)(next + 1) * BLOCK) != (ssize_t)BLOCK ||
            fdatasync(fd) != 0) {
            /* An I/O error reached the guest: say so, and try the same record again. */
            snprintf(line, sizeof line, "heron-disklog ERROR write at=%llu errno=%d\n",
                     (unsigned long long)next, errno);
            say(line);
            next--;
            sleep(1);
            continue;
        }
        unsaid++;
        if (unsaid >= ACK_EVERY || now_ns() - last_said >= (uint64_t)ACK_NS) {
            snprintf(line, sizeof line, "heron-disklog ack=%llu writer=%016llx\n",
                     (unsigned long long)next, (unsigned long long)writer);
            say(line);
            last_said = now_ns();
            unsaid = 0;
        }
        uint64_t spent = now_ns() - started;
        if (spent < (uint64_t)PERIOD_NS) {
            struct timespec rest = {0, (long)((uint64_t)PERIOD_NS - spent)};
            nanosleep(&rest, NULL);
        }
    }
    snprintf(line, sizeof line, "heron-disklog ack=%llu writer=%016llx\nheron-disklog full at=%llu\n",
             (unsigned long long)(capacity - 1), (unsigned long long)writer,
             (unsigned long long)capacity);
    say(line);
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        say("usage: heron-disklog probe|write|verify DEV\n");
        return 64;
    }
    crc_init();
    unsigned char *block;
    if (posix_memalign((void **)&block, BLOCK, BLOCK) != 0)
        return 1;
    const char *mode = argv[1], *dev = argv[2];
    if (!strcmp(mode, "write"))
        return write_log(dev, block);
    uint64_t capacity;
    int fd = open_log(dev, O_RDONLY, &capacity, block);
    if (fd < 0)
        return 2;
    if (!strcmp(mode, "probe"))
        return 0;
    if (!strcmp(mode, "verify")) {
        char line[160];
        snprintf(line, sizeof line, "heron-disklog verified dev=%s upto=%llu\n", dev,
                 (unsigned long long)prefix(fd, capacity, block));
        say(line);
        return 0;
    }
    return 64;
}
