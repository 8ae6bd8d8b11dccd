/*
 * Race results, the all-time leaderboard of each class, and the class
 * history.
 *
 * Results. A race's results are due when every rider with a sample has a
 * sample flagged final, or when the race closes idle (or at agg_close_all).
 * They rank every rider at the race's last second like a leaderboard. Once
 * published, every later change of a sample of the race (a late amendment
 * within race.amend_window_s, a record for a second still open, a new
 * rider) rebuilds them in the same call. When the message bytes, revision
 * left out, differ from the last ones sent, they are sent again with the
 * revision raised by one. Records that the late policy turns away change
 * nothing, so they republish nothing either.
 *
 * Classes. When a race's results are built, each of its riders counts in
 * the board of one class: the classId of the rider's last sample in that
 * race. A rider's entry on the board is the best total over the races
 * counted there, and a greater total wins. Between equal totals the
 * earlier race wins. Earlier means the smaller results ts (the newest
 * arrival time of the race's samples), then the smaller raceId. Both
 * derive only from the
 * samples, so the board does not depend on batch sizes, shards or the order
 * in which races closed. An amendment that lowers a total or moves a rider
 * to another class recomputes that rider's best from all the races kept
 * for it. A board is sent, revision 0 first, at the end of each agg call
 * in which its message bytes changed, boards in classId order.
 *
 * History. For each (class, rider, second) the best output at that second
 * over the same races, with the same tie rule, goes to sink->history; it is
 * stored, not published. A new race only raises cells, and an amendment
 * recomputes the rider's cells from the races kept for it.
 *
 * Restore. Only the revisions are stored (in the race and class states).
 * agg_restore_finish rebuilds boards, history and the hashes of the last
 * messages from the samples, because every change to a race with results
 * was evaluated, and its messages sent, in the call that made it.
 */
#include "aggregator/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* ---- class lookup ------------------------------------------------------- */

static const struct agg_id *class_key_at(const void *owner, uint32_t i)
{
    const struct agg *agg = owner;
    return &agg->classes[i]->id;
}

static const struct agg_id *class_rider_key_at(const void *owner, uint32_t i)
{
    const struct class_board *board = owner;
    return &board->riders[i].id;
}

/* Find or create the class board. Returns 0 or -ENOMEM. */
static int class_get(struct agg *agg, const struct agg_id *id,
                     uint32_t *position)
{
    int64_t i = id_index_find(&agg->class_index, id, class_key_at, agg);
    if (i >= 0) {
        *position = (uint32_t)i;
        return 0;
    }
    if (agg_grow((void **)&agg->classes, &agg->class_cap, agg->class_count + 1,
                 UINT32_MAX, sizeof agg->classes[0]) != 0)
        return -ENOMEM;
    struct class_board *board = calloc(1, sizeof *board);
    if (board == NULL)
        return -ENOMEM;
    board->id = *id;
    if (id_index_add(&agg->class_index, id, agg->class_count) != 0) {
        free(board);
        return -ENOMEM;
    }
    agg->classes[agg->class_count] = board;
    *position = agg->class_count++;
    return 0;
}

/* Find or create the rider on the board. Returns its position or
 * -ENOMEM. */
static int64_t class_rider_get(struct class_board *board,
                               const struct agg_id *id)
{
    int64_t i =
        id_index_find(&board->rider_index, id, class_rider_key_at, board);
    if (i >= 0)
        return i;
    if (agg_grow((void **)&board->riders, &board->rider_cap,
                 board->rider_count + 1, UINT32_MAX,
                 sizeof board->riders[0]) != 0)
        return -ENOMEM;
    struct class_rider *cr = &board->riders[board->rider_count];
    memset(cr, 0, sizeof *cr);
    cr->id = *id;
    cr->best = -1;
    if (id_index_add(&board->rider_index, id, board->rider_count) != 0)
        return -ENOMEM;
    return board->rider_count++;
}

static void touch(struct agg *agg, struct class_board *board)
{
    if (!board->touched) {
        board->touched = true;
        agg->touched_classes++;
    }
}

void classes_free(struct agg *agg)
{
    for (uint32_t i = 0; i < agg->class_count; i++) {
        struct class_board *board = agg->classes[i];
        for (uint32_t r = 0; r < board->rider_count; r++) {
            free(board->riders[r].entries);
            free(board->riders[r].history);
        }
        free(board->riders);
        id_index_free(&board->rider_index);
        free(board);
    }
    free(agg->classes);
    id_index_free(&agg->class_index);
}

/* ---- order between races ------------------------------------------------ */

/* Negative when race a counts as earlier than race b: smaller results ts,
 * then smaller raceId. */
static int race_order(const struct agg *agg, uint32_t a, uint32_t b)
{
    const struct race *ra = agg->races[a], *rb = agg->races[b];
    if (ra->class_ts != rb->class_ts)
        return ra->class_ts < rb->class_ts ? -1 : 1;
    return agg_id_cmp(&ra->id, &rb->id);
}

/* Whether (value a, race a) beats (value b, race b): more, or equal and
 * earlier. */
static bool beats(const struct agg *agg, int64_t a, uint32_t race_a, int64_t b,
                  uint32_t race_b)
{
    if (a != b)
        return a > b;
    return race_order(agg, race_a, race_b) < 0;
}

/* ---- history ------------------------------------------------------------ */

static int history_emit(struct agg *agg, const struct class_board *board,
                        const struct class_rider *cr, int32_t second)
{
    const struct history_cell *cell = &cr->history[second - 1];
    struct agg_history_row row = {
        .class_id = &board->id,
        .racer = &cr->id,
        .second = second,
        .output4 = cell->race ? cell->output4 : 0,
        .race = cell->race ? &agg->races[cell->race - 1]->id : NULL,
    };
    return agg->sink.history(agg->sink.arg, &row);
}

/* Grow the rider's history to hold second, with empty cells. */
static int history_reserve(struct class_rider *cr, int32_t second)
{
    if (second <= cr->history_len)
        return 0;
    if (agg_grow((void **)&cr->history, &cr->history_cap, (uint32_t)second,
                 INT32_MAX, sizeof cr->history[0]) != 0)
        return -ENOMEM;
    memset(cr->history + cr->history_len, 0,
           (size_t)(second - cr->history_len) * sizeof cr->history[0]);
    cr->history_len = second;
    return 0;
}

/* The rider of the class board in the race at position race. */
static struct rider *rider_in(const struct agg *agg, uint32_t race,
                              const struct agg_id *id)
{
    struct race *r = agg->races[race];
    int64_t at = race_find_rider(r, id);
    return at < 0 ? NULL : &r->riders[at];
}

/*
 * Fill cells (len entries, zeroed by the caller) with the best output of
 * the rider at each second over the races of its entries.
 */
static void history_compute(const struct agg *agg, const struct class_rider *cr,
                            struct history_cell *cells, int32_t len)
{
    for (uint32_t e = 0; e < cr->entry_count; e++) {
        uint32_t race = cr->entries[e].race;
        const struct rider *rider = rider_in(agg, race, &cr->id);
        if (rider == NULL)
            continue;
        int32_t last = rider->max_second < len ? rider->max_second : len;
        for (int32_t s = rider->min_second; s >= 1 && s <= last; s++) {
            const struct slot *slot = rider_slot(rider, s);
            struct history_cell *cell = &cells[s - 1];
            if (!(slot->flags & SLOT_PRESENT))
                continue;
            if (cell->race == 0 || beats(agg, slot->output4, race,
                                         cell->output4, cell->race - 1)) {
                cell->output4 = slot->output4;
                cell->race = race + 1;
            }
        }
    }
}

/* ---- one rider of one class --------------------------------------------- */

static int64_t find_entry(const struct class_rider *cr, uint32_t race)
{
    for (uint32_t i = 0; i < cr->entry_count; i++) {
        if (cr->entries[i].race == race)
            return i;
    }
    return -1;
}

static void best_recompute(const struct agg *agg, struct class_rider *cr)
{
    cr->best = -1;
    for (uint32_t i = 0; i < cr->entry_count; i++) {
        const struct class_entry *e = &cr->entries[i];
        if (cr->best < 0 ||
            beats(agg, e->total4, e->race, cr->entries[cr->best].total4,
                  cr->entries[cr->best].race))
            cr->best = i;
    }
}

/*
 * Recompute the rider's best and history from all its entries, after an
 * entry lost value, moved away or changed order. Sends the cells that
 * changed, unless quiet.
 */
static int rider_rebuild(struct agg *agg, const struct class_board *board,
                         struct class_rider *cr, bool quiet)
{
    int32_t len = 0;

    best_recompute(agg, cr);
    for (uint32_t e = 0; e < cr->entry_count; e++) {
        const struct rider *rider = rider_in(agg, cr->entries[e].race, &cr->id);
        if (rider != NULL && rider->max_second > len)
            len = rider->max_second;
    }
    if (len < cr->history_len)
        len = cr->history_len;
    if (len == 0)
        return 0;

    struct history_cell *cells = calloc((size_t)len, sizeof *cells);
    if (cells == NULL)
        return -ENOMEM;
    history_compute(agg, cr, cells, len);

    int rc = history_reserve(cr, len);
    for (int32_t s = 1; rc == 0 && s <= len; s++) {
        struct history_cell *old = &cr->history[s - 1];
        if (old->race == cells[s - 1].race &&
            old->output4 == cells[s - 1].output4)
            continue;
        *old = cells[s - 1];
        if (!quiet)
            rc = history_emit(agg, board, cr, s);
    }
    free(cells);
    return rc;
}

/* Add the race to the rider's entries: a new race can only raise the
 * best and the history cells. */
static int rider_add_race(struct agg *agg, const struct class_board *board,
                          struct class_rider *cr, uint32_t race,
                          const struct rider *rider, int64_t total4, bool quiet)
{
    if (agg_grow((void **)&cr->entries, &cr->entry_cap, cr->entry_count + 1,
                 UINT32_MAX, sizeof cr->entries[0]) != 0)
        return -ENOMEM;
    struct class_entry *e = &cr->entries[cr->entry_count++];
    e->race = race;
    e->total4 = total4;
    if (cr->best < 0 || beats(agg, total4, race, cr->entries[cr->best].total4,
                              cr->entries[cr->best].race))
        cr->best = cr->entry_count - 1;

    int rc = history_reserve(cr, rider->max_second);
    for (int32_t s = rider->min_second; rc == 0 && s <= rider->max_second;
         s++) {
        const struct slot *slot = rider_slot(rider, s);
        struct history_cell *cell = &cr->history[s - 1];
        if (!(slot->flags & SLOT_PRESENT))
            continue;
        if (cell->race != 0 &&
            !beats(agg, slot->output4, race, cell->output4, cell->race - 1))
            continue;
        cell->output4 = slot->output4;
        cell->race = race + 1;
        if (!quiet)
            rc = history_emit(agg, board, cr, s);
    }
    return rc;
}

/* Remove the race from the rider's entries on a board it moved away from. */
static int rider_drop_race(struct agg *agg, struct class_board *board,
                           const struct agg_id *racer, uint32_t race,
                           bool quiet)
{
    int64_t at =
        id_index_find(&board->rider_index, racer, class_rider_key_at, board);
    if (at < 0)
        return 0;
    struct class_rider *cr = &board->riders[at];
    int64_t e = find_entry(cr, race);
    if (e < 0)
        return 0;
    cr->entries[e] = cr->entries[--cr->entry_count];
    touch(agg, board);
    return rider_rebuild(agg, board, cr, quiet);
}

/* ---- races into classes ------------------------------------------------- */

/* Count one rider of the race on its class board. reorder: the race's ts
 * changed, so its order against other races may have. */
static int count_rider(struct agg *agg, uint32_t race_pos, struct rider *rider,
                       bool reorder, bool quiet)
{
    const struct slot *last = rider_slot(rider, rider->max_second);
    const struct agg_id *class_id = &rider->classes[last->class_idx];
    int64_t total4;
    int32_t latest;
    uint32_t class_pos;

    rider_total_at(rider, rider->max_second, &total4, &latest);
    int rc = class_get(agg, class_id, &class_pos);
    if (rc != 0)
        return rc;
    if (rider->result_class != 0 && rider->result_class != class_pos + 1) {
        rc = rider_drop_race(agg, agg->classes[rider->result_class - 1],
                             &rider->id, race_pos, quiet);
        if (rc != 0)
            return rc;
    }
    rider->result_class = class_pos + 1;

    struct class_board *board = agg->classes[class_pos];
    int64_t at = class_rider_get(board, &rider->id);
    if (at < 0)
        return (int)at;
    struct class_rider *cr = &board->riders[at];
    /* The name shown can change without the total, so the board is
     * compared again whenever one of its races changed. */
    touch(agg, board);

    int64_t e = find_entry(cr, race_pos);
    if (e < 0)
        return rider_add_race(agg, board, cr, race_pos, rider, total4, quiet);
    /* NOTE: one agg call changes at most one sample, and every sample has
     * an output above 0, so an unchanged total means unchanged outputs. */
    if (cr->entries[e].total4 == total4 && !reorder)
        return 0;
    cr->entries[e].total4 = total4;
    return rider_rebuild(agg, board, cr, quiet);
}

int classes_update_race(struct agg *agg, struct race *race, bool quiet)
{
    uint32_t race_pos = agg_race_position(agg, race);
    int64_t ts = race_ts_at(race, race->latest_second);
    bool reorder = race->class_ts != ts;

    race->class_ts = ts;
    for (uint32_t i = 0; i < race->rider_count; i++) {
        struct rider *rider = &race->riders[i];
        if (rider->min_second == 0)
            continue;
        int rc = count_rider(agg, race_pos, rider, reorder, quiet);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- results ------------------------------------------------------------ */

int results_settle(struct agg *agg, struct race *race, bool force)
{
    bool all_final =
        race->active_riders > 0 && race->final_riders == race->active_riders;

    if (race->active_riders == 0)
        return 0;
    if (race->results_published ? !race->results_stale : !(force || all_final))
        return 0;
    race->results_stale = false;

    int rc = classes_update_race(agg, race, false);
    if (rc != 0)
        return rc;

    uint8_t hash[32];
    int32_t revision = race->results_published ? race->results_revision + 1 : 0;
    rc = results_write(agg, race, revision, hash);
    if (rc != 0)
        return rc;
    if (race->results_published && memcmp(hash, race->results_hash, 32) == 0)
        return 0;

    memcpy(race->results_hash, hash, sizeof hash);
    race->results_revision = revision;
    race->results_published = true;
    race->dirty = true;
    struct agg_message msg = {
        .kind = AGG_MSG_RACE_RESULTS,
        .race = &race->id,
        .class_id = NULL,
        .second = race->latest_second,
        .revision = revision,
        .payload = agg->doc.data,
        .payload_len = agg->doc.len,
    };
    return agg->sink.message(agg->sink.arg, &msg);
}

/* ---- class boards ------------------------------------------------------- */

struct class_rank {
    int64_t total4;
    const struct agg_id *racer;
    uint32_t race;
};

static int rank_cmp(const void *pa, const void *pb)
{
    const struct class_rank *a = pa, *b = pb;
    if (a->total4 != b->total4)
        return a->total4 > b->total4 ? -1 : 1;
    return agg_id_cmp(a->racer, b->racer);
}

static void write_class_entry(struct agg *agg, const struct class_rank *e,
                              int64_t rank)
{
    struct strbuf *sb = &agg->doc;
    const struct race *race = agg->races[e->race];
    const struct rider *rider = rider_in(agg, e->race, e->racer);
    const struct slot *last = rider_slot(rider, rider->max_second);
    const struct arena_text *name = &rider->names[last->name_idx];

    sb_printf(sb, "{\"rank\":%" PRId64 ",\"racerId\":", rank);
    agg_id_to_json(e->racer, sb);
    sb_puts(sb, ",\"name\":");
    sb_json_string(sb, rider->arena + name->at, name->len);
    sb_puts(sb, ",\"raceId\":");
    agg_id_to_json(&race->id, sb);
    sb_puts(sb, ",\"total\":");
    sb_fixed4(sb, e->total4);
    sb_putc(sb, '}');
}

/*
 * Riders by best total, descending, then racerId; equal totals share a
 * rank (1, 2, 2, 4) and the list stops after top_n entries. ts is the
 * newest results ts among the races of the listed entries, 0 for none.
 */
int class_write(struct agg *agg, struct class_board *board, int32_t revision,
                uint8_t hash[32])
{
    struct class_rank *ranks =
        malloc((board->rider_count ? board->rider_count : 1) * sizeof *ranks);
    int64_t count = 0, ts = 0, rank = 0;

    if (ranks == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < board->rider_count; i++) {
        const struct class_rider *cr = &board->riders[i];
        if (cr->best < 0)
            continue;
        ranks[count].total4 = cr->entries[cr->best].total4;
        ranks[count].racer = &cr->id;
        ranks[count].race = cr->entries[cr->best].race;
        count++;
    }
    qsort(ranks, (size_t)count, sizeof *ranks, rank_cmp);
    if (agg->cfg.top_n > 0 && count > agg->cfg.top_n)
        count = agg->cfg.top_n;
    for (int64_t i = 0; i < count; i++) {
        if (agg->races[ranks[i].race]->class_ts > ts)
            ts = agg->races[ranks[i].race]->class_ts;
    }

    struct strbuf *sb = &agg->doc;
    sb_reset(sb);
    sb_puts(sb, "{\"type\":\"class-leaderboard\",\"classId\":");
    agg_id_to_json(&board->id, sb);
    sb_puts(sb, ",\"revision\":");
    size_t revision_at = sb->len;
    sb_printf(sb, "%" PRId32, revision);
    size_t revision_len = sb->len - revision_at;
    sb_printf(sb, ",\"ts\":%" PRId64 ",\"entries\":[", ts);
    for (int64_t i = 0; i < count; i++) {
        if (i == 0 || ranks[i].total4 != ranks[i - 1].total4)
            rank = i + 1;
        if (i > 0)
            sb_putc(sb, ',');
        write_class_entry(agg, &ranks[i], rank);
    }
    sb_puts(sb, "]}");
    free(ranks);
    int rc = sb_error(sb);
    return rc != 0 ? rc : doc_hash(sb, revision_at, revision_len, hash);
}

static int board_ptr_cmp(const void *pa, const void *pb)
{
    const struct class_board *const *a = pa;
    const struct class_board *const *b = pb;
    return agg_id_cmp(&(*a)->id, &(*b)->id);
}

/* The classes with the given flag set, in classId order (owned), or NULL
 * with *count 0 when none or out of memory (*failed set then). */
static struct class_board **classes_with(const struct agg *agg, bool dirty,
                                         uint32_t *count, bool *failed)
{
    struct class_board **list = NULL;
    uint32_t n = 0;

    *failed = false;
    for (uint32_t i = 0; i < agg->class_count; i++)
        n += dirty ? agg->classes[i]->dirty : agg->classes[i]->touched;
    *count = 0;
    if (n == 0)
        return NULL;
    list = malloc(n * sizeof *list);
    if (list == NULL) {
        *failed = true;
        return NULL;
    }
    for (uint32_t i = 0; i < agg->class_count; i++) {
        struct class_board *board = agg->classes[i];
        if (dirty ? board->dirty : board->touched)
            list[(*count)++] = board;
    }
    qsort(list, *count, sizeof *list, board_ptr_cmp);
    return list;
}

int classes_publish(struct agg *agg)
{
    uint32_t count;
    bool failed;

    if (agg->touched_classes == 0)
        return 0;
    struct class_board **list = classes_with(agg, false, &count, &failed);
    if (failed)
        return -ENOMEM;

    int rc = 0;
    for (uint32_t i = 0; i < count && rc == 0; i++) {
        struct class_board *board = list[i];
        int32_t revision = board->published ? board->revision + 1 : 0;
        uint8_t hash[32];

        board->touched = false;
        agg->touched_classes--;
        rc = class_write(agg, board, revision, hash);
        if (rc != 0 ||
            (board->published && memcmp(hash, board->hash, sizeof hash) == 0))
            continue;
        memcpy(board->hash, hash, sizeof hash);
        board->revision = revision;
        board->published = true;
        board->dirty = true;
        struct agg_message msg = {
            .kind = AGG_MSG_CLASS_LEADERBOARD,
            .race = NULL,
            .class_id = &board->id,
            .second = 0,
            .revision = revision,
            .payload = agg->doc.data,
            .payload_len = agg->doc.len,
        };
        rc = agg->sink.message(agg->sink.arg, &msg);
    }
    free(list);
    return rc;
}

/* Class state: {"classId":1,"revision":3}, the revision of the last board
 * sent. Everything else is derived from the races on restore. */
int classes_flush(struct agg *agg)
{
    uint32_t count;
    bool failed;
    struct class_board **list = classes_with(agg, true, &count, &failed);

    if (failed)
        return -ENOMEM;
    int rc = 0;
    for (uint32_t i = 0; i < count && rc == 0; i++) {
        struct strbuf *sb = &agg->doc;
        sb_reset(sb);
        sb_puts(sb, "{\"classId\":");
        agg_id_to_json(&list[i]->id, sb);
        sb_printf(sb, ",\"revision\":%" PRId32 "}", list[i]->revision);
        rc = sb_error(sb);
        if (rc == 0)
            rc = agg->sink.class_state(agg->sink.arg, &list[i]->id, sb->data,
                                       sb->len);
        if (rc == 0)
            list[i]->dirty = false;
    }
    free(list);
    return rc;
}

/* ---- restore ------------------------------------------------------------ */

/* Set the revision of a class from its state document. */
int class_restore(struct agg *agg, const struct agg_id *id, int32_t revision)
{
    uint32_t position;
    int rc = class_get(agg, id, &position);
    if (rc != 0)
        return rc;
    agg->classes[position]->revision = revision;
    agg->classes[position]->published = true;
    return 0;
}

int agg_restore_finish(struct agg *agg)
{
    for (uint32_t i = 0; i < agg->race_count; i++) {
        struct race *race = agg->races[i];
        if (!race->results_published)
            continue;
        if (race->active_riders == 0)
            return -EINVAL;
        int rc = classes_update_race(agg, race, true);
        if (rc == 0)
            rc = results_write(agg, race, race->results_revision,
                               race->results_hash);
        if (rc != 0)
            return rc;
    }
    for (uint32_t i = 0; i < agg->class_count; i++) {
        struct class_board *board = agg->classes[i];
        board->touched = false;
        if (!board->published)
            continue;
        int rc = class_write(agg, board, board->revision, board->hash);
        if (rc != 0)
            return rc;
    }
    agg->touched_classes = 0;
    return 0;
}
