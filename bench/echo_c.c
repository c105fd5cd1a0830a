/*
 * echo_c.c -- the "practical ceiling" peer of bench/bench_servers.py: a framed echo server in C.
 *
 * Same protocol as fastframe's echo service: a frame is a 4-byte big-endian unsigned length plus that many
 * payload bytes, and each complete frame is sent back unchanged.  One thread, one level-triggered epoll
 * set, non-blocking sockets.  A readable connection gets one recv() into its input buffer; every complete
 * frame in it goes back in one send() (frames are parsed, not blindly echoed: a partial frame stays
 * buffered until its last byte arrives, a length above 16 MiB closes the connection).  What the kernel does
 * not take is kept, and the connection is not read again until it has been written (backpressure).
 *
 * usage: echo_c [PORT]   (0 or nothing: an ephemeral port).  Listens on 127.0.0.1, prints
 * "echo tcp 127.0.0.1:PORT" on stdout once listening, runs until killed (SIGTERM / SIGINT).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FRAME (16u << 20)
#define READ_CHUNK (64u << 10)
#define MAX_EVENTS 512

typedef struct {
    int fd;
    unsigned char *in;
    size_t in_len, in_cap;
    unsigned char *out;
    size_t out_off, out_len, out_cap;
} conn_t;

static int epfd;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void close_conn(conn_t *c) {
    close(c->fd); /* also drops it from the epoll set */
    free(c->in);
    free(c->out);
    free(c);
}

static void set_events(conn_t *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static int reserve(unsigned char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : READ_CHUNK;
    while (n < need) n *= 2;
    unsigned char *p = realloc(*buf, n);
    if (!p) return -1;
    *buf = p;
    *cap = n;
    return 0;
}

/* Send out[out_off:out_len]; returns 1 if everything went, 0 if some is left, -1 on error. */
static int drain(conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        c->out_off += (size_t)n;
    }
    c->out_off = c->out_len = 0;
    return 1;
}

static void on_readable(conn_t *c) {
    if (reserve(&c->in, &c->in_cap, c->in_len + READ_CHUNK) < 0) {
        close_conn(c);
        return;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
        close_conn(c);
        return;
    }
    c->in_len += (size_t)n;
    size_t pos = 0;
    while (c->in_len - pos >= 4) {
        const unsigned char *h = c->in + pos;
        uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
        if (len > MAX_FRAME) {
            close_conn(c);
            return;
        }
        if (c->in_len - pos - 4 < len) break;
        pos += 4 + (size_t)len;
    }
    if (!pos) return;
    size_t sent = 0;
    while (sent < pos) { /* the common case: straight from the input buffer, no copy */
        ssize_t w = send(c->fd, c->in + sent, pos - sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            close_conn(c);
            return;
        }
        sent += (size_t)w;
    }
    if (sent < pos) {
        if (reserve(&c->out, &c->out_cap, pos - sent) < 0) {
            close_conn(c);
            return;
        }
        memcpy(c->out, c->in + sent, pos - sent);
        c->out_off = 0;
        c->out_len = pos - sent;
        set_events(c, EPOLLOUT); /* stop reading until the replies are out */
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lfd, 1024) < 0) die("listen");
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev);
    printf("echo tcp 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c == NULL) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) close_conn(nc);
                }
                continue;
            }
            if (c->out_len) { /* waiting for EPOLLOUT */
                int r = drain(c);
                if (r < 0 || (events[i].events & (EPOLLERR | EPOLLHUP) && r == 0)) close_conn(c);
                else if (r == 1) set_events(c, EPOLLIN);
            } else {
                on_readable(c);
            }
        }
    }
}
