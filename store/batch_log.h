/*
 * The encoding of the batch logs: the samples, or the class history rows,
 * that a transaction stores, packed into one BLOB row (see the design note
 * in store.c). Internal to store/.
 */
#ifndef PODIUM_STORE_BATCH_LOG_H
#define PODIUM_STORE_BATCH_LOG_H

#include "store/store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The format number stored beside each BLOB. */
#define BATCH_LOG_FORMAT 1

struct batch_log_buf {
    unsigned char *data;
    size_t len;
    size_t cap;
    uint32_t count; /* entries in data */
};

/* Append a sample to b. Returns 0, -EINVAL when race_id or racer_id is
 * NULL, or -ENOMEM. b is unchanged on failure. */
int batch_log_put_sample(struct batch_log_buf *b, const struct store_sample *s);

/* Append a class history row to b, or the deletion of its key when deleted
 * is true (row->output4 and row->race_id are then not kept). Returns 0,
 * -EINVAL when class_id or racer_id is NULL, or -ENOMEM. */
int batch_log_put_history(struct batch_log_buf *b,
                          const struct store_history_row *row, bool deleted);

/* Empty b and keep its memory, or free it. */
void batch_log_reset(struct batch_log_buf *b);
void batch_log_free(struct batch_log_buf *b);

/*
 * Decode the entry at data[*pos] (len bytes in all) into out and move *pos
 * past it. Every text of out points into data, which keeps a NUL after each
 * text. Returns 0, or -1 with *reason set when the entry is cut short or
 * malformed.
 */
int batch_log_next_sample(const unsigned char *data, size_t len, size_t *pos,
                          struct store_sample *out, const char **reason);
int batch_log_next_history(const unsigned char *data, size_t len, size_t *pos,
                           struct store_history_row *out, bool *deleted,
                           const char **reason);

#endif
