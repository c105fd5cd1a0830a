/* Portable loads and stores of frame-length headers.
 *
 * Byte-by-byte shifts instead of casts: no alignment or aliasing assumptions, and gcc/clang turn each
 * function into a single (possibly byte-swapped) load or store. */
#ifndef FASTFRAME_HTON_H
#define FASTFRAME_HTON_H

#include <stdint.h>

static inline uint64_t ff_load(const char *p, int width, int little)
{
    const unsigned char *u = (const unsigned char *)p;
    uint64_t v = 0;
    int i;
    if (little) {
        for (i = width - 1; i >= 0; i--)
            v = (v << 8) | u[i];
    } else {
        for (i = 0; i < width; i++)
            v = (v << 8) | u[i];
    }
    return v;
}

static inline uint64_t ff_load_be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return ((uint64_t)u[0] << 24) | ((uint64_t)u[1] << 16) | ((uint64_t)u[2] << 8) | (uint64_t)u[3];
}

static inline uint64_t ff_load24(const char *p, int little)
{
    const unsigned char *u = (const unsigned char *)p;
    if (little)
        return (uint64_t)u[0] | ((uint64_t)u[1] << 8) | ((uint64_t)u[2] << 16);
    return ((uint64_t)u[0] << 16) | ((uint64_t)u[1] << 8) | (uint64_t)u[2];
}

static inline void ff_store(char *p, uint64_t v, int width, int little)
{
    unsigned char *u = (unsigned char *)p;
    int i;
    if (little) {
        for (i = 0; i < width; i++, v >>= 8)
            u[i] = (unsigned char)(v & 0xff);
    } else {
        for (i = width - 1; i >= 0; i--, v >>= 8)
            u[i] = (unsigned char)(v & 0xff);
    }
}

/* Unsigned LEB128: 7 bits per byte, least significant group first, high bit set on all but the last. */
static inline int ff_varint_len(uint64_t v)
{
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline int ff_varint_store(char *p, uint64_t v)
{
    unsigned char *u = (unsigned char *)p;
    int n = 0;
    while (v >= 0x80) {
        u[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    u[n++] = (unsigned char)v;
    return n;
}

#endif
