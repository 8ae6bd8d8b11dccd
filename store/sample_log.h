/*
 * The encoding of the sample log: the samples a transaction stores, packed
 * into one BLOB row (see the design note in store.c). Internal to store/.
 */
#ifndef PODIUM_STORE_SAMPLE_LOG_H
#define PODIUM_STORE_SAMPLE_LOG_H

#include "store/store.h"

#include <stddef.h>
#include <stdint.h>

/* The format number stored beside each BLOB. */
#define SAMPLE_LOG_FORMAT 1

struct sample_log_buf {
    unsigned char *data;
    size_t len;
    size_t cap;
    uint32_t count; /* entries in data */
};

/* Append s to b. Returns 0, -EINVAL when race_id or racer_id is NULL, or
 * -ENOMEM. b is unchanged on failure. */
int sample_log_append(struct sample_log_buf *b, const struct store_sample *s);

/* Empty b and keep its memory, or free it. */
void sample_log_reset(struct sample_log_buf *b);
void sample_log_free(struct sample_log_buf *b);

/*
 * Decode the entry at data[*pos] (len bytes in all) into out and move *pos
 * past it. Every text of out points into data, which keeps a NUL after each
 * text. Returns 0, or -1 with *reason set when the entry is cut short or
 * malformed.
 */
int sample_log_next(const unsigned char *data, size_t len, size_t *pos,
                    struct store_sample *out, const char **reason);

#endif
