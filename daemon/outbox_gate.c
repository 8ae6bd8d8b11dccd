/*
 * The outbox bound. Every message waits in the outbox table until the
 * publisher reports it delivered, so a publisher that is down would let the
 * table grow without end while podium keeps reading. Instead, once the
 * table contains outbox.max rows, the pipeline starts no job that may add
 * messages (batches, stream-time ticks, closing all races) and runs only
 * the jobs that delete delivered rows. The jobs held back keep their shards'
 * batches uncommitted, so the reader reads those shards no further, and
 * run.c also pauses the reader's GetRecords calls. Nothing is dropped:
 * the held records commit later, or are read again after a restart.
 *
 * Reading resumes once the table is below 90% of outbox.max, so a
 * publisher that delivers slowly does not flip the state with every
 * message. The depth is only checked when a job starts, and one job can
 * add any number of messages, so the table contains at most outbox.max - 1
 * rows plus the messages of one job.
 */
#include "daemon/daemon.h"

#include <inttypes.h>

#include "common/log.h"

void outbox_gate_init(struct outbox_gate *g, uint64_t max, uint64_t depth)
{
    g->max = max;
    g->low_water = max - max / 10;
    g->depth = depth;
    g->full = false;
}

static void log_full(const struct outbox_gate *g)
{
    log_warn("main", NULL,
             "the outbox contains %" PRIu64 " undelivered messages, at its "
             "limit outbox.max = %" PRIu64 ": reading is paused until the "
             "publisher has delivered enough of them to bring the outbox "
             "below %" PRIu64 "; if the publisher is up and this repeats, "
             "raise outbox.max",
             g->depth, g->max, g->low_water);
}

bool outbox_gate_update(struct outbox_gate *g)
{
    if (!g->full && g->depth >= g->max) {
        g->full = true;
        log_full(g);
        return true;
    }
    if (g->full && g->depth < g->low_water) {
        g->full = false;
        log_info("main", NULL,
                 "the outbox is down to %" PRIu64 " undelivered messages, "
                 "below %" PRIu64 " (90%% of outbox.max): reading resumes",
                 g->depth, g->low_water);
        return true;
    }
    return false;
}

bool outbox_gate_commit(struct outbox_gate *g, uint64_t added, uint64_t deleted)
{
    g->depth += added;
    g->depth = deleted < g->depth ? g->depth - deleted : 0;
    return outbox_gate_update(g);
}
