/*
 * Merging the shards of a stream into one processing order.
 *
 * The reader hands over at most one batch per shard and reads that shard no
 * further until the batch commits. Shards are read independently, so one
 * may deliver minutes of records while another is still on its first
 * request. Applying batches as they come would make the slower shard's
 * records late and reorder leaderboards. Instead, records wait here and
 * leave in the order of (ApproximateArrivalTimestamp, shard id, sequence),
 * and only below the watermark: the arrival time from which a shard that is
 * still behind might yet deliver a record. A shard bounds the watermark by
 * the arrival time of the newest record it has delivered, because its next
 * batch may hold more records of that same millisecond, and blocks it
 * completely before its first reply. A caught-up, finished or not yet
 * started shard does not bound it.
 *
 * A batch whose reply had fewer records than the GetRecords Limit and
 * MillisBehindLatest 0 ends at the tip of its shard, so it does not hold
 * back its newest millisecond: a live stream is not slowed by one poll
 * interval. A record put later in that same millisecond is the exception.
 *
 * Records that share one arrival millisecond thus always leave together,
 * in one job, whatever the batch boundaries and the number of shards. The
 * pipeline applies such a group in an order of its own that depends only
 * on the records' contents (daemon/pipeline.c), so which shard delivered
 * which record cannot change what is published.
 *
 * The shard that bounds the watermark holds back only records of its newest
 * millisecond. Once those are all that is left of its batch, the batch
 * counts as done for the reader, which reads on while the records stay
 * here, so the merge always makes progress. The committed checkpoint is the
 * last record that left, so the held records are read again after a
 * restart. A shard that stalls (throttled, unreachable) would hold back
 * every other shard, so a record waits at most hold_limit_ms. After that it
 * is released anyway, and the stalled shard's records, when they come, are
 * treated as late by the aggregator. Time in which the reader is paused
 * for a full outbox does not count (merge_set_paused).
 *
 * Released records are copied into segments, runs of one shard each, so the
 * reader's batch can be freed as soon as all its records have left.
 */
#include "daemon/daemon.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/seqnum.h"

struct merge_slot {
    char *shard_id;
    struct shard_batch *batch; /* held, owned; NULL when none */
    size_t next;               /* first record not yet released */
    int64_t added_ms;          /* wall time the oldest held record arrived */
    int64_t newest_arrival_ms; /* newest arrival ever delivered */
    bool delivered;            /* some record was ever delivered */
    /* The last batch reached the shard's tip or end, so no record of the
     * newest millisecond can follow. */
    bool newest_complete;
    /* The reader was notified that batch is done while records of its newest
     * millisecond are still held, so it may deliver the next batch. */
    bool handed_back;
};

struct merge {
    struct pipeline *pl;
    int64_t hold_limit_ms;
    int64_t paused_since_ms; /* -1 while the reader reads */
    struct merge_slot *slots;
    size_t count;
    size_t cap;
};

struct merge *merge_new(struct pipeline *pl, int64_t hold_limit_ms)
{
    struct merge *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    m->pl = pl;
    m->hold_limit_ms = hold_limit_ms;
    m->paused_since_ms = -1;
    return m;
}

void merge_free(struct merge *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->count; i++) {
        free(m->slots[i].shard_id);
        shard_batch_free(m->slots[i].batch);
    }
    free(m->slots);
    free(m);
}

static struct merge_slot *find_slot(struct merge *m, const char *shard_id)
{
    for (size_t i = 0; i < m->count; i++) {
        if (strcmp(m->slots[i].shard_id, shard_id) == 0)
            return &m->slots[i];
    }
    return NULL;
}

static struct merge_slot *get_slot(struct merge *m, const char *shard_id)
{
    struct merge_slot *slot = find_slot(m, shard_id);
    if (slot != NULL)
        return slot;
    if (m->count == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 8;
        struct merge_slot *p = realloc(m->slots, cap * sizeof *p);
        if (p == NULL)
            return NULL;
        m->slots = p;
        m->cap = cap;
    }
    slot = &m->slots[m->count];
    memset(slot, 0, sizeof *slot);
    slot->shard_id = strdup(shard_id);
    if (slot->shard_id == NULL)
        return NULL;
    m->count++;
    return slot;
}

/*
 * Append the records and the end of batch to the held records of a slot
 * whose previous batch was handed back. Returns 0 or -1 when out of memory.
 */
static int append_batch(struct merge_slot *slot,
                        const struct shard_batch *batch)
{
    struct shard_batch *held = slot->batch;
    for (size_t i = 0; i < batch->count; i++) {
        const struct shard_record *r = &batch->records[i];
        if (shard_batch_add(held, r->data, r->len, r->seq, r->subseq,
                            r->arrival_ms, r->partition_key) != 0)
            return -1;
    }
    if (batch->count == 0 && batch->checkpoint_seq != NULL) {
        char *seq = strdup(batch->checkpoint_seq);
        if (seq == NULL)
            return -1;
        free(held->checkpoint_seq);
        held->checkpoint_seq = seq;
        held->checkpoint_subseq = batch->checkpoint_subseq;
    }
    held->shard_end = batch->shard_end;
    held->millis_behind = batch->millis_behind;
    held->at_tip = batch->at_tip;
    return 0;
}

/*
 * Hold a batch of the reader. The reader sends no second batch for a shard
 * before the first committed or was handed back, so a slot contains at
 * most one, with the held records of a handed-back one in front.
 */
void merge_add(struct merge *m, struct shard_batch *batch, int64_t now_ms)
{
    struct merge_slot *slot = get_slot(m, batch->shard_id);
    const char *failure = NULL;

    if (slot == NULL)
        failure = "out of memory";
    else if (slot->batch != NULL && !slot->handed_back)
        failure = "a batch is already held";
    else if (slot->batch != NULL && append_batch(slot, batch) != 0)
        failure = "out of memory";
    if (failure != NULL) {
        /* Not committed, so the records are read again after a restart. */
        log_error("main", NULL, "failed to hold a batch of shard %s: %s",
                  batch->shard_id, failure);
        shard_batch_free(batch);
        return;
    }
    if (slot->batch == NULL) {
        slot->batch = batch;
        slot->next = 0;
        slot->added_ms = now_ms;
    } else {
        shard_batch_free(batch);
        batch = slot->batch;
    }
    slot->handed_back = false;
    slot->newest_complete = batch->at_tip || batch->shard_end;
    if (batch->count > slot->next) {
        slot->newest_arrival_ms = batch->records[batch->count - 1].arrival_ms;
        slot->delivered = true;
    }
}

/*
 * A paused reader delivers nothing by design, so its shards are not
 * stalled: the hold clock of every held record stops while it is paused.
 * Otherwise the records of a millisecond held for the next batch would
 * leave without it once the pause outlasted hold_limit_ms.
 */
void merge_set_paused(struct merge *m, bool paused, int64_t now_ms)
{
    if (paused && m->paused_since_ms < 0) {
        m->paused_since_ms = now_ms;
        return;
    }
    if (paused || m->paused_since_ms < 0)
        return;
    int64_t pause_ms = now_ms - m->paused_since_ms;
    for (size_t i = 0; i < m->count; i++) {
        if (m->slots[i].batch != NULL)
            m->slots[i].added_ms += pause_ms;
    }
    m->paused_since_ms = -1;
}

size_t merge_pending(const struct merge *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->count; i++) {
        if (m->slots[i].batch != NULL)
            n += m->slots[i].batch->count - m->slots[i].next;
    }
    return n;
}

/* ---- the watermark -------------------------------------------------- */

/*
 * The watermark from the reader's view of its shards: records that arrived
 * before it may leave. Returns false when a shard that is behind has
 * delivered nothing yet, so nothing may leave.
 */
static bool watermark(struct merge *m, const struct reader *rd, int64_t now_ms,
                      int64_t *out)
{
    int64_t w = INT64_MAX;
    size_t n = reader_shard_count(rd);

    for (size_t i = 0; i < n; i++) {
        struct reader_shard_info info;
        if (reader_shard_info(rd, i, &info) != 0 || !info.reading ||
            info.caught_up)
            continue;
        struct merge_slot *slot = find_slot(m, info.shard_id);
        if (slot == NULL || !slot->delivered)
            return false;
        int64_t bound = slot->newest_arrival_ms;
        if (slot->newest_complete)
            bound++;
        if (bound < w)
            w = bound;
    }
    /* Records held past the limit leave whatever a stalled shard does. */
    for (size_t i = 0; m->paused_since_ms < 0 && i < m->count; i++) {
        struct merge_slot *slot = &m->slots[i];
        if (slot->batch != NULL && slot->batch->count > slot->next &&
            now_ms - slot->added_ms >= m->hold_limit_ms &&
            slot->newest_arrival_ms >= w)
            w = slot->newest_arrival_ms + 1;
    }
    *out = w;
    return true;
}

/* The slot whose next record comes first in the merged order, or NULL. */
static struct merge_slot *first_slot(struct merge *m)
{
    struct merge_slot *best = NULL;
    const struct shard_record *best_rec = NULL;

    for (size_t i = 0; i < m->count; i++) {
        struct merge_slot *slot = &m->slots[i];
        if (slot->batch == NULL || slot->next >= slot->batch->count)
            continue;
        const struct shard_record *rec = &slot->batch->records[slot->next];
        if (best == NULL || rec->arrival_ms < best_rec->arrival_ms ||
            (rec->arrival_ms == best_rec->arrival_ms &&
             strcmp(slot->shard_id, best->shard_id) < 0)) {
            best = slot;
            best_rec = rec;
        }
    }
    return best;
}

/* ---- building the work ---------------------------------------------- */

static int work_push_segment(struct pipeline_work *work,
                             struct shard_batch *segment)
{
    struct shard_batch **p = realloc(
        work->segments, (work->segment_count + 1) * sizeof *work->segments);
    if (p == NULL)
        return -1;
    work->segments = p;
    work->segments[work->segment_count++] = segment;
    return 0;
}

static int work_push_completed(struct pipeline_work *work, const char *shard_id)
{
    char **p = realloc(work->completed_shards,
                       (work->completed_count + 1) * sizeof *p);
    if (p == NULL)
        return -1;
    work->completed_shards = p;
    char *copy = strdup(shard_id);
    if (copy == NULL)
        return -1;
    work->completed_shards[work->completed_count++] = copy;
    return 0;
}

/* The open segment of slot's shard at the end of work, or a new one. */
static struct shard_batch *segment_for(struct pipeline_work *work,
                                       const struct merge_slot *slot)
{
    if (work->segment_count > 0) {
        struct shard_batch *last = work->segments[work->segment_count - 1];
        if (strcmp(last->shard_id, slot->shard_id) == 0)
            return last;
    }
    struct shard_batch *segment = shard_batch_new(slot->shard_id);
    if (segment == NULL || work_push_segment(work, segment) != 0) {
        shard_batch_free(segment);
        return NULL;
    }
    return segment;
}

static int release_record(struct pipeline_work *work, struct merge_slot *slot)
{
    const struct shard_record *rec = &slot->batch->records[slot->next];
    struct shard_batch *segment = segment_for(work, slot);
    if (segment == NULL ||
        shard_batch_add(segment, rec->data, rec->len, rec->seq, rec->subseq,
                        rec->arrival_ms, rec->partition_key) != 0)
        return -1;
    slot->next++;
    return 0;
}

/*
 * Mark the end of a held batch whose records have all left: its shard-end
 * flag and, for an empty batch, its checkpoint go with the last segment of
 * the shard, and the reader goes on once the work commits.
 */
static int complete_slot(struct pipeline_work *work, struct merge_slot *slot)
{
    struct shard_batch *batch = slot->batch;
    if (batch->shard_end) {
        struct shard_batch *segment = segment_for(work, slot);
        if (segment == NULL)
            return -1;
        segment->shard_end = true;
        if (segment->count == 0 && batch->checkpoint_seq != NULL) {
            segment->checkpoint_seq = strdup(batch->checkpoint_seq);
            segment->checkpoint_subseq = batch->checkpoint_subseq;
            if (segment->checkpoint_seq == NULL)
                return -1;
        }
    }
    return work_push_completed(work, slot->shard_id);
}

static bool slot_done(const struct merge_slot *slot)
{
    return slot->batch != NULL && slot->next >= slot->batch->count;
}

/*
 * True when what is left of slot's batch are records of its newest
 * millisecond that only the slot's own shard holds back (that millisecond
 * is the watermark w), so the reader may read on while they wait.
 */
static bool tail_only(const struct merge_slot *slot, int64_t w)
{
    const struct shard_batch *batch = slot->batch;
    return batch != NULL && !slot->handed_back && !batch->shard_end &&
           slot->next < batch->count &&
           batch->records[slot->next].arrival_ms == slot->newest_arrival_ms &&
           slot->newest_arrival_ms == w;
}

/*
 * Move every record that arrived before w into work, and hand back the
 * batches that are done or hold only their newest millisecond. On failure
 * every slot is left as it was, so the same records leave on a later call.
 */
static int collect(struct merge *m, int64_t w, struct pipeline_work *work)
{
    size_t *saved = malloc((m->count ? m->count : 1) * sizeof *saved);
    bool *handing = calloc(m->count ? m->count : 1, sizeof *handing);
    struct merge_slot *slot;
    int rc = saved == NULL || handing == NULL ? -1 : 0;

    for (size_t i = 0; rc == 0 && i < m->count; i++)
        saved[i] = m->slots[i].next;
    while (rc == 0 && (slot = first_slot(m)) != NULL &&
           slot->batch->records[slot->next].arrival_ms < w)
        rc = release_record(work, slot);
    for (size_t i = 0; rc == 0 && i < m->count; i++) {
        slot = &m->slots[i];
        if (slot_done(slot) && !slot->handed_back) {
            rc = complete_slot(work, slot);
        } else if (tail_only(slot, w)) {
            handing[i] = true;
            rc = work_push_completed(work, slot->shard_id);
        }
    }

    for (size_t i = 0; saved != NULL && handing != NULL && i < m->count; i++) {
        slot = &m->slots[i];
        if (rc != 0) {
            slot->next = saved[i];
        } else if (slot_done(slot)) {
            shard_batch_free(slot->batch);
            slot->batch = NULL;
            slot->next = 0;
            slot->handed_back = false;
        } else if (handing[i]) {
            slot->handed_back = true;
        }
    }
    free(handing);
    free(saved);
    return rc;
}

void merge_release(struct merge *m, const struct reader *rd, int64_t now_ms)
{
    int64_t w;
    if (!watermark(m, rd, now_ms, &w))
        return;

    struct pipeline_work *work = calloc(1, sizeof *work);
    if (work == NULL || collect(m, w, work) != 0) {
        /* The held batches stay as they were and leave on a later call. */
        log_error("main", NULL,
                  "failed to merge shard batches: out of "
                  "memory");
        pipeline_work_free(work);
        return;
    }
    if (work->segment_count == 0 && work->completed_count == 0) {
        pipeline_work_free(work);
        return;
    }
    pipeline_submit_work(m->pl, work);
}
