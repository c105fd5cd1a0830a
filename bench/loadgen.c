/*
 * loadgen.c -- closed-loop load generator for the framed echo protocol (bench/bench_servers.py builds it).
 *
 * Wire format: a request is a frame, a 4-byte big-endian unsigned length followed by that many payload
 * bytes; the server must send back the same frame (with --upper: the same frame with every ASCII a-z byte
 * upper-cased, what `fastframe serve --upper` and bytes.upper() do: the general path of a service that
 * calls a function per frame).
 *
 * Theory of operation
 * ===================
 *
 * One thread, one level-triggered epoll set, C non-blocking connections.  Each connection keeps exactly
 * D requests of S payload bytes in flight (closed loop, pipelined depth D): when a reply completes, one
 * more request may go out.  Nothing is built per request:
 *
 *   - every request is the same 4-byte header plus a window of S bytes into one pre-built pseudo-random
 *     pattern; the window's start depends on the connection and the request's sequence number, so a reply
 *     that is duplicated, dropped, reordered or sent to the wrong connection does not match;
 *   - requests go out with writev() of (header, window) pairs, as many as the connection may send, in one
 *     call per wake-up; a short write is resumed on EPOLLOUT;
 *   - replies are recv()'d into one large buffer and checked in place, incrementally: a connection only
 *     remembers which reply it is in and how many of its bytes it has seen, and each chunk is memcmp()'d
 *     against the header or the pattern window it must equal.  Every byte of every reply is verified, at
 *     any split the kernel chooses, with no copy.
 *
 * Latency is the time from the writev() that carried a request's first byte to the recv() that completed
 * its reply, recorded in a log-linear histogram (256 sub-buckets per power of two: < 0.4 % error).
 *
 * Phases: connect everything, run --warmup seconds (not counted), then measure --duration seconds.  At the
 * two edges of the measured window the CPU time (utime + stime from /proc/PID/stat) of the server process
 * given by --pid and all of its descendants (prefork workers) is read, so the server's CPU per request
 * covers exactly the requests counted.  The load generator's own CPU time over the window is reported too:
 * a value near 100 % means it, not the server, may be the bottleneck.
 *
 * Output: one JSON object on stdout; "ok": false and an "error" string on a failure (a wrong byte, a closed
 * connection, no progress for --stall seconds, the server process gone).  Exit status 0 / 1 / 2 (usage).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE (1 << 20)
#define MAX_EVENTS 1024
#define MAX_BATCH 256 /* requests per writev (2 iovecs each, under IOV_MAX) */
#define PATTERN_SPAN 251 /* window starts; prime, so (conn, seq) spread over all of them */
#define SUB_BITS 8
#define SUB (1u << SUB_BITS)
#define HIST_BUCKETS ((64 - SUB_BITS + 1) * SUB)

typedef struct {
    int fd;
    int idx;
    int out_armed;     /* EPOLLOUT registered */
    uint32_t tx_off;   /* bytes of request tx_seq already written */
    uint64_t tx_seq;   /* next request not completely written */
    uint64_t rx_seq;   /* next reply expected */
    uint64_t limit;    /* requests with seq < limit may be written */
    uint32_t rx_pos;   /* bytes of reply rx_seq seen */
    uint64_t *sent_ns; /* ring of D send times, indexed by seq % D */
    uint64_t last_ns;  /* last completed reply (or the start) */
} conn_t;

static const char *opt_host = "127.0.0.1";
static const char *opt_unix = NULL; /* --unix PATH: a Unix stream socket instead of --host/--port */
static int opt_port = 0;
static int opt_conns = 50;
static int opt_depth = 1;
static uint32_t opt_size = 64;
static double opt_warmup = 1.0;
static double opt_duration = 5.0;
static double opt_stall = 5.0;
static long opt_pid = 0;
static int opt_upper = 0; /* --upper: the reply is the request with ASCII a-z upper-cased (fastframe serve --upper) */

static unsigned char *pattern;   /* opt_size + PATTERN_SPAN bytes */
static unsigned char *expect;    /* what a reply must hold: the pattern, or its upper-cased copy (--upper) */
static unsigned char header[4];
static uint64_t frame_len;
static unsigned char rbuf[RBUF_SIZE];
static uint64_t hist[HIST_BUCKETS];
static uint64_t hist_count, hist_sum_ns, hist_max_ns;
static uint64_t done_total;       /* replies completed since the start (progress watchdog) */
static int measuring, sending = 1;

static void fail(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* the message goes into a JSON string: keep it printable and quote-free */
    for (char *p = msg; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '\'';
    printf("{\"ok\": false, \"error\": \"%s\"}\n", msg);
    fflush(stdout);
    fprintf(stderr, "loadgen: %s\n", msg);
    exit(1);
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline unsigned window(const conn_t *c, uint64_t seq) {
    return (unsigned)((seq * 7u + (uint64_t)c->idx * 13u) % PATTERN_SPAN);
}

/* -- histogram: bucket = (shift, mantissa), value ~ mantissa << shift with mantissa in [SUB/2, SUB) -- */

static inline unsigned bucket_of(uint64_t v) {
    if (v < SUB) return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - (SUB_BITS - 1);
    return shift * (SUB / 2) + (unsigned)(v >> shift);
}

static inline uint64_t bucket_mid(unsigned b) {
    if (b < SUB) return b;
    unsigned shift = b / (SUB / 2) - 1;
    uint64_t mant = b - shift * (SUB / 2);
    return (mant << shift) + ((1ull << shift) >> 1);
}

static double percentile_us(double q) {
    if (!hist_count) return 0.0;
    uint64_t rank = (uint64_t)(q * (double)hist_count);
    if (rank >= hist_count) rank = hist_count - 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < HIST_BUCKETS; b++) {
        seen += hist[b];
        if (seen > rank) return (double)bucket_mid(b) / 1000.0;
    }
    return (double)hist_max_ns / 1000.0;
}

/* -- CPU time of a process tree, in clock ticks ------------------------------------------------------ */

static int read_file(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = 0;
    return (int)n;
}

static long long tree_ticks(long pid, int *nprocs, int depth) {
    char path[96], buf[4096];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    if (read_file(path, buf, sizeof buf) < 0) return -1;
    char *p = strrchr(buf, ')'); /* the command name may contain spaces and parentheses */
    if (!p) return -1;
    unsigned long long utime = 0, stime = 0;
    /* after ") ": state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2) return -1;
    long long total = (long long)(utime + stime);
    (*nprocs)++;
    if (depth > 8) return total;
    snprintf(path, sizeof path, "/proc/%ld/task", pid);
    DIR *d = opendir(path);
    if (!d) return total;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char cpath[320], kids[4096];
        snprintf(cpath, sizeof cpath, "/proc/%ld/task/%s/children", pid, e->d_name);
        if (read_file(cpath, kids, sizeof kids) <= 0) continue;
        char *s = kids, *end;
        for (;;) {
            long kid = strtol(s, &end, 10);
            if (end == s) break;
            long long t = tree_ticks(kid, nprocs, depth + 1);
            if (t > 0) total += t;
            s = end;
        }
    }
    closedir(d);
    return total;
}

/* Machine-wide busy and steal ticks (first line of /proc/stat): the noise the rest of the machine made. */
static void machine_ticks(long long *busy, long long *steal) {
    char buf[512];
    unsigned long long v[8] = {0};
    *busy = *steal = 0;
    if (read_file("/proc/stat", buf, sizeof buf) < 0) return;
    if (sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
               &v[7]) < 8)
        return;
    *busy = (long long)(v[0] + v[1] + v[2] + v[5] + v[6]); /* user nice system irq softirq */
    *steal = (long long)v[7];
}

static double cpu_seconds(struct rusage *ru) {
    return (double)ru->ru_utime.tv_sec + ru->ru_utime.tv_usec / 1e6 + (double)ru->ru_stime.tv_sec +
           ru->ru_stime.tv_usec / 1e6;
}

/* -- connections ----------------------------------------------------------------------------------- */

static int epfd;

static void arm_out(conn_t *c, int on) {
    if (c->out_armed == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) fail("epoll_ctl: %s", strerror(errno));
    c->out_armed = on;
}

/* Write every request the connection may send now (one writev per batch of MAX_BATCH). */
static void flush(conn_t *c, uint64_t now) {
    struct iovec iov[2 * MAX_BATCH];
    while (c->tx_seq < c->limit) {
        int n_iov = 0;
        uint64_t seq = c->tx_seq, end = c->limit;
        if (end - seq > MAX_BATCH) end = seq + MAX_BATCH;
        for (; seq < end; seq++) {
            uint32_t start = seq == c->tx_seq ? c->tx_off : 0;
            if (start == 0) c->sent_ns[seq % (uint64_t)opt_depth] = now;
            if (start < 4) {
                iov[n_iov].iov_base = header + start;
                iov[n_iov++].iov_len = 4 - start;
                start = 4;
            }
            if (opt_size > start - 4) {
                iov[n_iov].iov_base = pattern + window(c, seq) + (start - 4);
                iov[n_iov++].iov_len = opt_size - (start - 4);
            }
        }
        ssize_t w = writev(c->fd, iov, n_iov);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            fail("connection %d: write failed: %s", c->idx, strerror(errno));
        }
        uint64_t left = (uint64_t)w;
        while (left) {
            uint64_t rest = frame_len - c->tx_off;
            if (left >= rest) {
                left -= rest;
                c->tx_seq++;
                c->tx_off = 0;
            } else {
                c->tx_off += (uint32_t)left;
                left = 0;
            }
        }
        if (c->tx_seq < end) break; /* short write: the socket buffer is full */
    }
    arm_out(c, c->tx_seq < c->limit);
}

static void mismatch(conn_t *c, const unsigned char *got, const unsigned char *want, uint64_t k) {
    uint64_t i = 0;
    while (i < k && got[i] == want[i]) i++;
    uint64_t at = c->rx_pos + i;
    fail("connection %d: wrong byte in reply %llu at offset %llu of the frame (%s): expected 0x%02x, got 0x%02x",
         c->idx, (unsigned long long)c->rx_seq, (unsigned long long)at, at < 4 ? "length header" : "payload",
         want[i], got[i]);
}

static void on_readable(conn_t *c) {
    for (;;) {
        ssize_t n = recv(c->fd, rbuf, RBUF_SIZE, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            fail("connection %d: read failed: %s (after %llu replies)", c->idx, strerror(errno),
                 (unsigned long long)c->rx_seq);
        }
        if (n == 0)
            fail("connection %d: the server closed the connection (after %llu replies, %llu in flight)", c->idx,
                 (unsigned long long)c->rx_seq, (unsigned long long)(c->tx_seq - c->rx_seq));
        uint64_t now = now_ns();
        const unsigned char *p = rbuf;
        uint64_t left = (uint64_t)n;
        while (left) {
            /* the server cannot echo bytes it was never sent */
            uint64_t sent = c->rx_seq < c->tx_seq ? frame_len : (c->rx_seq == c->tx_seq ? c->tx_off : 0);
            if (c->rx_pos + 1 > sent)
                fail("connection %d: %llu unexpected bytes after reply %llu (more than was requested)", c->idx,
                     (unsigned long long)left, (unsigned long long)c->rx_seq);
            uint64_t k;
            if (c->rx_pos < 4) {
                k = 4 - c->rx_pos;
                if (k > left) k = left;
                if (k > sent - c->rx_pos) k = sent - c->rx_pos;
                if (memcmp(p, header + c->rx_pos, k)) mismatch(c, p, header + c->rx_pos, k);
            } else {
                uint64_t off = c->rx_pos - 4;
                k = opt_size - off;
                if (k > left) k = left;
                if (k > sent - c->rx_pos) k = sent - c->rx_pos;
                const unsigned char *want = expect + window(c, c->rx_seq) + off;
                if (memcmp(p, want, k)) mismatch(c, p, want, k);
            }
            c->rx_pos += (uint32_t)k;
            p += k;
            left -= k;
            if (c->rx_pos == frame_len) {
                if (measuring) {
                    uint64_t lat = now - c->sent_ns[c->rx_seq % (uint64_t)opt_depth];
                    hist[bucket_of(lat)]++;
                    hist_count++;
                    hist_sum_ns += lat;
                    if (lat > hist_max_ns) hist_max_ns = lat;
                }
                done_total++;
                c->last_ns = now;
                c->rx_seq++;
                c->rx_pos = 0;
                if (sending) c->limit = c->rx_seq + (uint64_t)opt_depth;
            }
        }
        if ((size_t)n < RBUF_SIZE) {
            flush(c, now);
            return;
        }
    }
    flush(c, now_ns());
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port PORT [--host 127.0.0.1] | --unix PATH  [--connections 50] [--depth 1] [--size 64]\n"
            "               [--warmup 1] [--duration 5] [--stall 5] [--pid SERVER_PID] [--upper]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"host", required_argument, 0, 'h'},     {"port", required_argument, 0, 'p'},
        {"connections", required_argument, 0, 'c'}, {"depth", required_argument, 0, 'd'},
        {"size", required_argument, 0, 's'},     {"warmup", required_argument, 0, 'w'},
        {"duration", required_argument, 0, 't'}, {"stall", required_argument, 0, 'S'},
        {"pid", required_argument, 0, 'P'},      {"upper", no_argument, 0, 'U'},
        {"unix", required_argument, 0, 'u'},
        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = atoi(optarg); break;
        case 'c': opt_conns = atoi(optarg); break;
        case 'd': opt_depth = atoi(optarg); break;
        case 's': opt_size = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'w': opt_warmup = atof(optarg); break;
        case 't': opt_duration = atof(optarg); break;
        case 'S': opt_stall = atof(optarg); break;
        case 'P': opt_pid = atol(optarg); break;
        case 'U': opt_upper = 1; break;
        case 'u': opt_unix = optarg; break;
        default: usage();
        }
    }
    if (opt_unix && !opt_port) opt_port = 1; /* (unused) */
    if (opt_port <= 0 || opt_port > 65535 || opt_conns < 1 || opt_depth < 1 || opt_depth > 1 << 16 ||
        opt_size > (1u << 30) || opt_duration <= 0 || opt_warmup < 0 || opt_stall <= 0)
        usage();
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    frame_len = 4 + (uint64_t)opt_size;
    header[0] = (unsigned char)(opt_size >> 24);
    header[1] = (unsigned char)(opt_size >> 16);
    header[2] = (unsigned char)(opt_size >> 8);
    header[3] = (unsigned char)opt_size;
    pattern = malloc(opt_size + PATTERN_SPAN);
    if (!pattern) fail("out of memory");
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (uint64_t i = 0; i < opt_size + PATTERN_SPAN; i++) { /* xorshift64*: bytes a server cannot guess */
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        pattern[i] = (unsigned char)((x * 0x2545F4914F6CDD1Dull) >> 56);
    }
    expect = pattern;
    if (opt_upper) { /* about 10% of the pattern's bytes are a-z: a server that skips the function fails */
        expect = malloc(opt_size + PATTERN_SPAN);
        if (!expect) fail("out of memory");
        for (uint64_t i = 0; i < opt_size + PATTERN_SPAN; i++)
            expect[i] = pattern[i] >= 'a' && pattern[i] <= 'z' ? (unsigned char)(pattern[i] - 32) : pattern[i];
    }

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt_port)};
    struct sockaddr_un uaddr = {.sun_family = AF_UNIX};
    if (opt_unix) {
        if (strlen(opt_unix) >= sizeof uaddr.sun_path) fail("unix path too long: %s", opt_unix);
        strcpy(uaddr.sun_path, opt_unix);
    } else if (inet_pton(AF_INET, opt_host, &addr.sin_addr) != 1)
        fail("bad IPv4 address %s", opt_host);
    epfd = epoll_create1(0);
    if (epfd < 0) fail("epoll_create1: %s", strerror(errno));
    conn_t *conns = calloc((size_t)opt_conns, sizeof *conns);
    uint64_t *rings = calloc((size_t)opt_conns * (size_t)opt_depth, sizeof *rings);
    if (!conns || !rings) fail("out of memory");
    for (int i = 0; i < opt_conns; i++) {
        conn_t *c = &conns[i];
        c->idx = i;
        c->sent_ns = rings + (size_t)i * (size_t)opt_depth;
        c->fd = socket(opt_unix ? AF_UNIX : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0) fail("socket: %s", strerror(errno));
        struct timeval tv = {.tv_sec = 10};
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* bounds a blocking connect */
        int failed = opt_unix ? connect(c->fd, (struct sockaddr *)&uaddr, sizeof uaddr)
                              : connect(c->fd, (struct sockaddr *)&addr, sizeof addr);
        if (failed < 0)
            fail("connection %d: connect to %s failed: %s", i, opt_unix ? opt_unix : opt_host, strerror(errno));
        int one = 1;
        if (!opt_unix) setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0) fail("fcntl: %s", strerror(errno));
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) fail("epoll_ctl: %s", strerror(errno));
    }

    long clk = sysconf(_SC_CLK_TCK);
    int nprocs = 0;
    if (opt_pid && tree_ticks(opt_pid, &nprocs, 0) < 0) fail("server process %ld not found", opt_pid);

    struct epoll_event events[MAX_EVENTS];
    uint64_t t_begin = now_ns();
    uint64_t warm_end = t_begin + (uint64_t)(opt_warmup * 1e9);
    uint64_t meas_end = 0, t0 = 0, t1 = 0, stall_ns = (uint64_t)(opt_stall * 1e9);
    uint64_t last_done = 0, last_progress = t_begin;
    long long ticks0 = 0, ticks1 = 0, busy0 = 0, busy1 = 0, steal0 = 0, steal1 = 0;
    struct rusage ru0, ru1;
    uint64_t next_sweep = t_begin + 100000000u;
    for (int i = 0; i < opt_conns; i++) {
        conns[i].last_ns = t_begin;
        conns[i].limit = (uint64_t)opt_depth;
        flush(&conns[i], t_begin);
    }
    for (;;) {
        uint64_t now = now_ns();
        uint64_t edge = measuring ? meas_end : warm_end;
        int timeout_ms = edge > now ? (int)((edge - now) / 1000000u) + 1 : 0;
        if (timeout_ms > 100) timeout_ms = 100;
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            uint32_t ev = events[i].events;
            if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
            else if (ev & EPOLLOUT) flush(c, now_ns());
        }
        now = now_ns();
        if (done_total != last_done) {
            last_done = done_total;
            last_progress = now;
        } else if (now - last_progress > stall_ns) {
            uint64_t inflight = 0;
            for (int i = 0; i < opt_conns; i++) inflight += conns[i].tx_seq - conns[i].rx_seq;
            fail("no reply for %.1f s (%llu requests in flight, %llu replies so far)", opt_stall,
                 (unsigned long long)inflight, (unsigned long long)done_total);
        }
        if (now >= next_sweep) { /* one stuck connection is a failure even while the others progress */
            next_sweep = now + 100000000u;
            for (int i = 0; i < opt_conns; i++) {
                conn_t *c = &conns[i];
                if (c->tx_seq + (c->tx_off > 0) > c->rx_seq && now - c->last_ns > stall_ns)
                    fail("connection %d: no reply for %.1f s (%llu requests in flight, %llu replies so far)", i,
                         opt_stall, (unsigned long long)(c->tx_seq - c->rx_seq + (c->tx_off > 0)),
                         (unsigned long long)c->rx_seq);
            }
        }
        if (!measuring && now >= warm_end) {
            nprocs = 0;
            if (opt_pid && (ticks0 = tree_ticks(opt_pid, &nprocs, 0)) < 0) fail("server process %ld is gone", opt_pid);
            getrusage(RUSAGE_SELF, &ru0);
            machine_ticks(&busy0, &steal0);
            t0 = now_ns();
            meas_end = t0 + (uint64_t)(opt_duration * 1e9);
            measuring = 1;
        } else if (measuring && now >= meas_end) {
            t1 = now_ns();
            int np1 = 0;
            if (opt_pid && (ticks1 = tree_ticks(opt_pid, &np1, 0)) < 0) fail("server process %ld is gone", opt_pid);
            getrusage(RUSAGE_SELF, &ru1);
            machine_ticks(&busy1, &steal1);
            if (np1 > nprocs) nprocs = np1;
            measuring = 0;
            sending = 0;
            break;
        }
    }

    double secs = (double)(t1 - t0) / 1e9;
    double reqs = (double)hist_count;
    double server_cpu = opt_pid ? (double)(ticks1 - ticks0) / (double)clk : -1.0;
    double lg_cpu = cpu_seconds(&ru1) - cpu_seconds(&ru0);
    /* CPU the rest of the machine used meanwhile (other processes, in cores), and time stolen by the host */
    double others = ((double)(busy1 - busy0) / (double)clk - lg_cpu - (opt_pid ? server_cpu : 0.0)) / secs;
    if (others < 0) others = 0;
    double stolen = (double)(steal1 - steal0) / (double)clk / secs;
    printf("{\"ok\": true, \"connections\": %d, \"depth\": %d, \"size\": %u, \"upper\": %s, \"warmup_s\": %.3f, \"seconds\": %.6f, "
           "\"requests\": %llu, \"req_per_s\": %.1f, \"payload_mb_per_s\": %.3f, "
           "\"latency_us\": {\"mean\": %.2f, \"p50\": %.2f, \"p90\": %.2f, \"p99\": %.2f, \"p999\": %.2f, \"max\": %.2f}, "
           "\"server_pid\": %ld, \"server_procs\": %d, \"server_cpu_s\": %.3f, \"server_cpu_util\": %.4f, "
           "\"cpu_us_per_req\": %.4f, \"clk_tck\": %ld, \"loadgen_cpu_s\": %.3f, \"loadgen_cpu_util\": %.4f, "
           "\"other_cpu_cores\": %.3f, \"steal_cores\": %.3f}\n",
           opt_conns, opt_depth, opt_size, opt_upper ? "true" : "false", opt_warmup, secs, (unsigned long long)hist_count, reqs / secs,
           reqs * opt_size / secs / 1e6, reqs ? (double)hist_sum_ns / reqs / 1000.0 : 0.0, percentile_us(0.50),
           percentile_us(0.90), percentile_us(0.99), percentile_us(0.999), (double)hist_max_ns / 1000.0, opt_pid,
           nprocs, server_cpu, opt_pid ? server_cpu / secs : -1.0,
           (opt_pid && reqs) ? server_cpu * 1e6 / reqs : -1.0, clk, lg_cpu, lg_cpu / secs, others, stolen);
    fflush(stdout);
    return 0;
}
