/*
 * Record blocks and batches, shared by the files of the shard reader. A
 * record's block holds, in order, its sequence number, its partition key
 * and its data, and shard_record.seq points at its start. A hidden header
 * before seq records whether the block has its own allocation or lies in
 * a chunk shared with other records of a batch.
 */
#ifndef PODIUM_SHARDREADER_BATCH_H
#define PODIUM_SHARDREADER_BATCH_H

#include <stddef.h>

/* A block of n bytes with its own allocation, for a record whose size is
 * known only while it is decoded. Returns where seq goes, or NULL when out
 * of memory. */
char *record_block_new(size_t n);

/* Free the block that starts at seq, which may be NULL. */
void record_block_free(const char *seq);

#endif
