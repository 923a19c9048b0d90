/*
 * heron-memcheck: the test guest checks its own memory, so that a live migration that loses or
 * garbles a page fails the test that moved it instead of passing unnoticed.
 *
 * Built by heron.testguest.build (gcc -static) and started by the guest's /init. It claims a
 * region of memory and keeps a generation number per 4 KiB page. Every page holds, in one
 * 64-bit word of each of its eight 512-byte sectors, a value derived from (page, word,
 * generation). Each tick (10 ms) it rewrites the hot set (the first pages, written 100 times a
 * second: their TLB entries stay warm, which is where lost dirty tracking bites) and the next
 * pages of a slow sweep over the whole region, checking each page before writing it. Once a
 * second it reads the whole region back and prints a status line. A word that is not what was
 * last written is printed with its guest-physical address and the generation it looks like
 * ("stale by 1" is a lost update; garbage gives a nonsense generation), then the page is
 * repaired so each corruption is reported once. It also checks that CLOCK_MONOTONIC never goes
 * backwards; the status line every second is the proof that timers go on.
 *
 * Output on the serial console, one line each:
 *   heron-memcheck start mib=M pages=N hot=H rate=R
 *   heron-memcheck verified=V errors=E pass=P         (every second)
 *   heron-memcheck MISMATCH gpa=0x... page=N word=W expected=0x... found=0x... stale=S
 *   heron-memcheck CLOCK-BACKWARDS by=NS
 *
 * Options (from /init, which reads them off the kernel command line):
 *   heron-memcheck MIB HOT_PAGES SWEEP_PAGES_PER_SECOND
 * MIB is an upper bound: at most half of MemAvailable is taken, so a small guest still boots.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS 8u                           /* checked words per page, one per 512-byte sector */
#define STRIDE (PAGE / WORDS / 8u)         /* in 64-bit words */
#define TICK_NS 10000000L                  /* 10 ms */
#define MAX_REPORTS 200u                   /* mismatch lines printed in all, then only counted */
#define STEP 0x9E3779B97F4A7C15ull         /* odd: the value moves by it with each generation */

static uint64_t *region;
static uint32_t *generation;
static size_t pages;
static unsigned long long errors, reports, verifies;
static int pagemap = -1;

static void say(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    /* One write per line: the console never interleaves it with the shell's ticks. */
    if (write(1, line, (size_t)n) < 0)
        return;
}

static uint64_t seed(uint64_t page, uint64_t word)
{
    uint64_t z = page * WORDS + word + 0x48524F4Eull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t expected(size_t page, unsigned word, uint64_t gen)
{
    return seed(page, word) + gen * STEP;
}

/* The inverse of STEP modulo 2^64 (Newton's iteration), to tell which generation a word holds. */
static uint64_t step_inverse(void)
{
    uint64_t x = STEP;
    for (int i = 0; i < 6; i++)
        x *= 2 - STEP * x;
    return x;
}

static uint64_t guest_physical(const void *va)
{
    uint64_t entry = 0;
    off_t at = (off_t)((uintptr_t)va / PAGE) * 8;
    if (pagemap < 0 || pread(pagemap, &entry, sizeof entry, at) != sizeof entry)
        return 0;
    if (!(entry >> 63) || !(entry & ((1ull << 55) - 1)))
        return 0;
    return (entry & ((1ull << 55) - 1)) * PAGE + ((uintptr_t)va % PAGE);
}

static void write_page(size_t page, uint64_t gen)
{
    uint64_t *base = region + page * (PAGE / 8);
    for (unsigned w = 0; w < WORDS; w++)
        base[w * STRIDE] = expected(page, w, gen);
}

/* Check a page against its generation; report and repair what differs. */
static void check_page(size_t page)
{
    uint64_t gen = generation[page];
    uint64_t *base = region + page * (PAGE / 8);
    int bad = 0;
    for (unsigned w = 0; w < WORDS; w++) {
        uint64_t want = expected(page, w, gen), found = base[w * STRIDE];
        if (found == want)
            continue;
        bad = 1;
        errors++;
        if (reports++ < MAX_REPORTS) {
            /* Which generation the word holds: 1 means one write was lost. */
            int64_t stale = (int64_t)(gen - (found - seed(page, w)) * step_inverse());
            say("heron-memcheck MISMATCH gpa=0x%llx page=%zu word=%u expected=0x%016llx "
                "found=0x%016llx stale=%lld",
                (unsigned long long)guest_physical(&base[w * STRIDE]), page, w,
                (unsigned long long)want, (unsigned long long)found, (long long)stale);
        }
    }
    if (bad)
        write_page(page, gen);
}

static void rewrite(size_t page)
{
    check_page(page);
    write_page(page, ++generation[page]);
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static size_t available_bytes(void)
{
    char line[128];
    unsigned long long kib = 0;
    FILE *meminfo = fopen("/proc/meminfo", "r");
    if (!meminfo)
        return 0;
    while (fgets(line, sizeof line, meminfo))
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
            break;
    fclose(meminfo);
    return (size_t)kib * 1024;
}

int main(int argc, char **argv)
{
    size_t want = (size_t)(argc > 1 ? strtoull(argv[1], NULL, 10) : 32) << 20;
    size_t hot = argc > 2 ? strtoull(argv[2], NULL, 10) : 64;
    size_t rate = argc > 3 ? strtoull(argv[3], NULL, 10) : 256;
    size_t room = available_bytes() / 2;
    if (room && want > room)
        want = room;
    pages = want / PAGE;
    if (pages == 0) {
        say("heron-memcheck cannot run: no memory to check");
        return 1;
    }
    if (hot > pages)
        hot = pages;
    region = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    generation = calloc(pages, sizeof *generation);
    if (region == MAP_FAILED || !generation) {
        say("heron-memcheck cannot run: out of memory for %zu pages", pages);
        return 1;
    }
    mlock(region, pages * PAGE);
    pagemap = open("/proc/self/pagemap", O_RDONLY);
    for (size_t p = 0; p < pages; p++)
        write_page(p, 0);
    say("heron-memcheck start mib=%zu pages=%zu hot=%zu rate=%zu", want >> 20, pages, hot, rate);

    /* The sweep advances `rate` pages a second, in whole pages per tick with the remainder
       carried over, so slow rates still move. */
    size_t sweep = hot, carry = 0;
    unsigned long long passes = 0;
    long long last = now_ns(), next_tick = last, next_verify = last + 1000000000LL;
    for (;;) {
        next_tick += TICK_NS;
        struct timespec until = {next_tick / 1000000000LL, next_tick % 1000000000LL};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) != 0)
            ;
        long long now = now_ns();
        if (now < last)
            say("heron-memcheck CLOCK-BACKWARDS by=%lld", last - now);
        last = now;
        if (now - next_tick > 1000000000LL)
            next_tick = now; /* the guest was stopped (or starved): do not race to catch up */

        for (size_t p = 0; p < hot; p++)
            rewrite(p);
        carry += rate;
        for (; carry >= 100 && pages > hot; carry -= 100) {
            rewrite(sweep);
            if (++sweep == pages) {
                sweep = hot;
                passes++;
            }
        }
        if (now >= next_verify) {
            for (size_t p = 0; p < pages; p++)
                check_page(p);
            verifies++;
            say("heron-memcheck verified=%llu errors=%llu pass=%llu", verifies, errors, passes);
            next_verify = now + 1000000000LL;
        }
    }
}
