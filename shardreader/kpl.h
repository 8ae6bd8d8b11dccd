/*
 * Deaggregation of Kinesis Producer Library (KPL) aggregated records, as
 * described in aggregation-format.md of awslabs/amazon-kinesis-producer:
 * the Kinesis record's Data is the magic F3 89 9A C2, a protobuf (proto2)
 * AggregatedRecord, and the 16-byte MD5 of the protobuf bytes. Internal to
 * the shard reader.
 */
#ifndef PODIUM_SHARDREADER_KPL_H
#define PODIUM_SHARDREADER_KPL_H

#include <stddef.h>
#include <stdint.h>

/* Maximum user records in one aggregate. Larger aggregates are rejected. */
#define KPL_MAX_USER_RECORDS 100000

/*
 * Kinesis limits a partition key to 256 characters, which is at most 1,024
 * bytes of UTF-8. Longer table entries cannot come from a producer, and the
 * limit bounds the copies the reader makes for each user record.
 */
#define KPL_MAX_PARTITION_KEY_BYTES 1024

/* One user record; the pointers point into the Kinesis record's Data. */
struct kpl_user_record {
    const uint8_t *data;
    size_t len;
    const char *partition_key; /* not NUL-terminated, contains no NUL */
    size_t partition_key_len;
};

enum kpl_result {
    KPL_ERROR = -1,        /* out of memory, or MD5 unavailable */
    KPL_NOT_AGGREGATE = 0, /* pass the record on unchanged */
    KPL_AGGREGATE = 1      /* user records in *records */
};

/*
 * Split data into its user records. Returns KPL_AGGREGATE with *records
 * (owned by the caller, free with free()) and *count >= 1 in wire order,
 * KPL_NOT_AGGREGATE when data is not a valid aggregate with at least one
 * user record, or KPL_ERROR.
 */
enum kpl_result kpl_deaggregate(const uint8_t *data, size_t len,
                                struct kpl_user_record **records,
                                size_t *count);

#endif
