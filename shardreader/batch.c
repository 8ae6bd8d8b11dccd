/*
 * Batches of records and the memory of their blocks. shard_batch_add
 * copies records into chunks of RECORD_CHUNK_BYTES that a batch fills one
 * after the other, rather than making one allocation per record, because
 * a replay adds hundreds of thousands of small records. A chunk counts its
 * references: the batch that fills it, plus each record in it not yet
 * freed. Records move between batches (shard_batch_move) and their
 * batches are freed on any thread, so the count is atomic, and the last
 * release frees the chunk.
 *
 * NOTE: one live record keeps its whole chunk allocated, so a consumer
 * that keeps a few records of each chunk for long holds up to 64 KiB for
 * each of them.
 */
#include "shardreader/batch.h"

#include <errno.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shardreader/shardreader.h"

#define RECORD_CHUNK_BYTES (64 * 1024)
/* Blocks larger than this get an allocation of their own, so that a large
 * record never leaves most of a chunk unused. */
#define RECORD_CHUNK_BLOCK_MAX (RECORD_CHUNK_BYTES / 8)
/* Length of the records array of a batch after its first growth. */
#define RECORDS_MIN_CAP 16

struct record_chunk {
    atomic_size_t refs;
    size_t used; /* bytes handed out; changed only by the filling batch */
    unsigned char data[];
};

/* The header before each block: its chunk, or NULL when the block is an
 * allocation of its own. */
struct block_head {
    struct record_chunk *chunk;
};

#define BLOCK_ALIGN alignof(struct block_head)

char *record_block_new(size_t n)
{
    if (n > SIZE_MAX - sizeof(struct block_head))
        return NULL;
    struct block_head *head = malloc(sizeof *head + n);
    if (head == NULL)
        return NULL;
    head->chunk = NULL;
    return (char *)(head + 1);
}

static void chunk_release(struct record_chunk *chunk)
{
    if (atomic_fetch_sub_explicit(&chunk->refs, 1, memory_order_acq_rel) == 1)
        free(chunk);
}

void record_block_free(const char *seq)
{
    if (seq == NULL)
        return;
    struct block_head *head =
        (struct block_head *)(uintptr_t)(seq - sizeof(struct block_head));
    if (head->chunk == NULL)
        free(head);
    else
        chunk_release(head->chunk);
}

/* A block of n bytes for a record of batch, in the chunk it fills when
 * the block is small. Returns where seq goes, or NULL when out of
 * memory. */
static char *batch_block_new(struct shard_batch *batch, size_t n)
{
    if (n > RECORD_CHUNK_BLOCK_MAX)
        return record_block_new(n);

    size_t need = sizeof(struct block_head) +
                  (n + BLOCK_ALIGN - 1) / BLOCK_ALIGN * BLOCK_ALIGN;
    struct record_chunk *chunk = batch->chunk;
    if (chunk == NULL || RECORD_CHUNK_BYTES - chunk->used < need) {
        struct record_chunk *fresh = malloc(sizeof *fresh + RECORD_CHUNK_BYTES);
        if (fresh == NULL)
            return NULL;
        atomic_init(&fresh->refs, 1);
        fresh->used = 0;
        if (chunk != NULL)
            chunk_release(chunk);
        batch->chunk = chunk = fresh;
    }
    struct block_head *head =
        (struct block_head *)(void *)(chunk->data + chunk->used);
    chunk->used += need;
    head->chunk = chunk;
    atomic_fetch_add_explicit(&chunk->refs, 1, memory_order_relaxed);
    return (char *)(head + 1);
}

/* Make room in the records array of batch for one more. Returns 0 or
 * -ENOMEM. */
static int reserve_record(struct shard_batch *batch)
{
    if (batch->count < batch->records_cap)
        return 0;
    size_t cap = batch->records_cap >= RECORDS_MIN_CAP ? batch->records_cap * 2
                                                       : RECORDS_MIN_CAP;
    if (cap <= batch->count)
        cap = batch->count + 1;
    if (cap > SIZE_MAX / sizeof *batch->records)
        return -ENOMEM;
    struct shard_record *records =
        realloc(batch->records, cap * sizeof *records);
    if (records == NULL)
        return -ENOMEM;
    batch->records = records;
    batch->records_cap = cap;
    return 0;
}

/* Copy seq (seq_size bytes with its NUL) to the checkpoint of batch, in
 * the old checkpoint's memory when that is long enough. Returns 0 or
 * -ENOMEM. */
static int set_checkpoint(struct shard_batch *batch, const char *seq,
                          size_t seq_size)
{
    char *old = batch->checkpoint_seq;
    if (old != NULL && strlen(old) + 1 >= seq_size) {
        memcpy(old, seq, seq_size);
        return 0;
    }
    char *copy = malloc(seq_size);
    if (copy == NULL)
        return -ENOMEM;
    memcpy(copy, seq, seq_size);
    free(old);
    batch->checkpoint_seq = copy;
    return 0;
}

void shard_batch_free(struct shard_batch *batch)
{
    if (batch == NULL)
        return;
    for (size_t i = 0; i < batch->count; i++)
        record_block_free(batch->records[i].seq);
    if (batch->chunk != NULL)
        chunk_release(batch->chunk);
    free(batch->records);
    free(batch->shard_id);
    free(batch->checkpoint_seq);
    free(batch);
}

/*
 * Create an empty batch of shard_id (owned by the caller), for sources other
 * than GetRecords, such as a replay or a test. Returns NULL when out of
 * memory.
 */
struct shard_batch *shard_batch_new(const char *shard_id)
{
    struct shard_batch *batch = calloc(1, sizeof *batch);
    if (batch == NULL)
        return NULL;
    batch->shard_id = strdup(shard_id);
    batch->millis_behind = -1;
    if (batch->shard_id == NULL) {
        free(batch);
        return NULL;
    }
    return batch;
}

/*
 * Append a copy of one record to batch and make it the batch's checkpoint.
 * Like a decoded GetRecords record, its sequence number, partition key and
 * data share one block that starts at seq. Returns 0 or -ENOMEM.
 */
int shard_batch_add(struct shard_batch *batch, const void *data, size_t len,
                    const char *seq, int64_t subseq, int64_t arrival_ms,
                    const char *partition_key)
{
    size_t seq_len = strlen(seq) + 1, key_len = strlen(partition_key) + 1;
    if (reserve_record(batch) != 0)
        return -ENOMEM;

    char *block = batch_block_new(batch, seq_len + key_len + len + 1);
    if (block == NULL || set_checkpoint(batch, seq, seq_len) != 0) {
        record_block_free(block);
        return -ENOMEM;
    }
    memcpy(block, seq, seq_len);
    memcpy(block + seq_len, partition_key, key_len);
    memcpy(block + seq_len + key_len, data, len);
    block[seq_len + key_len + len] = '\0';

    struct shard_record *rec = &batch->records[batch->count++];
    rec->seq = block;
    rec->partition_key = block + seq_len;
    rec->data = (const uint8_t *)block + seq_len + key_len;
    rec->len = len;
    rec->subseq = subseq;
    rec->arrival_ms = arrival_ms;
    batch->checkpoint_subseq = subseq;
    return 0;
}

/*
 * Move record index of from to the end of to without copying it. to owns
 * the record's block from now on, and the record left in from is empty
 * (NULL pointers), which shard_batch_free and shard_batch_clear skip.
 * Unlike shard_batch_add, it leaves the checkpoint of to as it is.
 * Returns 0, or -ENOMEM with nothing moved.
 */
int shard_batch_move(struct shard_batch *to, struct shard_batch *from,
                     size_t index)
{
    if (reserve_record(to) != 0)
        return -ENOMEM;
    to->records[to->count++] = from->records[index];
    memset(&from->records[index], 0, sizeof from->records[index]);
    return 0;
}

/*
 * Free the records of batch and leave it empty, keeping its shard id,
 * checkpoint, record array and chunk for the next shard_batch_add.
 */
void shard_batch_clear(struct shard_batch *batch)
{
    for (size_t i = 0; i < batch->count; i++)
        record_block_free(batch->records[i].seq);
    batch->count = 0;
}
