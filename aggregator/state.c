/*
 * Race state documents and the rebuild after a restart.
 *
 * A race state is one JSON object with a fixed member order, for example
 *   {"raceId":5402746,"firstSecond":1,"latestSecond":12,"publishedFrom":1,
 *    "publishedThrough":9,"activityMs":1620824050000,"revisions":[[3,1]],
 *    "resultsRevision":-1}
 * where revisions lists [second, revision] for every published second with
 * a revision above 0, in second order, and resultsRevision is the revision
 * of the last results sent, -1 before the first. A state written before
 * results existed has no resultsRevision and reads as -1. A class state is
 *   {"classId":1,"revision":3}
 * Everything else in memory (totals, interned names, arrival maxima, class
 * boards, history) is derived from the samples.
 */
#include "aggregator/internal.h"

#include <errno.h>
#include <inttypes.h>

#include "common/sjson.h"

int state_write(struct agg *agg, const struct race *race)
{
    struct strbuf *sb = &agg->doc;

    sb_reset(sb);
    sb_puts(sb, "{\"raceId\":");
    agg_id_to_json(&race->id, sb);
    sb_printf(sb,
              ",\"firstSecond\":%" PRId32 ",\"latestSecond\":%" PRId32
              ",\"publishedFrom\":%" PRId32 ",\"publishedThrough\":%" PRId32
              ",\"activityMs\":%" PRId64 ",\"revisions\":[",
              race->first_second, race->latest_second, race->published_from,
              race->published_through, race->activity_ms);
    bool first = true;
    for (int32_t s = race->published_from;
         s >= 1 && s <= race->published_through; s++) {
        int32_t revision = race->seconds[s - 1].revision;
        if (revision == 0)
            continue;
        sb_printf(sb, "%s[%" PRId32 ",%" PRId32 "]", first ? "" : ",", s,
                  revision);
        first = false;
    }
    sb_printf(sb, "],\"resultsRevision\":%" PRId32 "}",
              race->results_published ? race->results_revision : -1);
    return sb_error(sb);
}

void agg_restore_stream_time(struct agg *agg, int64_t stream_time_ms)
{
    agg->stream_time_ms = stream_time_ms;
}

static bool row_ids_valid(const struct agg_sample_row *row)
{
    const struct agg_id *ids[] = {row->race, row->racer, row->class_id};

    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        if (ids[i] == NULL)
            return false;
        if (!ids[i]->is_num &&
            agg_id_check_string(ids[i]->str, ids[i]->len) != AGG_REJECT_NONE)
            return false;
    }
    return row->name != NULL && row->uuid != NULL &&
           row->cadence_exact != NULL && row->resistance_exact != NULL;
}

/*
 * Store one sample row without deciding anything and without calling the
 * sink. Returns 0, -EINVAL for an invalid row, -ENOSPC when a cap is
 * passed, or -ENOMEM.
 */
int agg_restore_sample(struct agg *agg, const struct agg_sample_row *row)
{
    if (!row_ids_valid(row))
        return -EINVAL;
    struct sample_in in = {
        .second = row->second,
        .class_id = row->class_id,
        .name = row->name,
        .name_len = row->name_len,
        .uuid = row->uuid,
        .uuid_len = row->uuid_len,
        .device_ts_ms = row->device_ts_ms,
        .arrival_ms = row->arrival_ms,
        .cadence4 = row->cadence4,
        .resistance4 = row->resistance4,
        .output4 = row->output4,
        .cadence_exact = row->cadence_exact,
        .resistance_exact = row->resistance_exact,
        .final = row->final,
    };
    int rc = sample_in_check(agg, &in);
    if (rc != 0)
        return rc;

    struct race *race;
    rc = race_get(agg, row->race, &race);
    if (rc != 0)
        return rc;
    int64_t position = race_rider(race, row->racer);
    if (position < 0)
        return (int)position;
    rc = race_store_sample(agg, race, (uint32_t)position, &in);
    if (rc != 0)
        return rc;

    /* The race state sets the real activity time. This fallback only
     * matters for a race whose state row is missing. */
    if (race->activity_ms < row->arrival_ms || race->activity_ms == 0)
        race->activity_ms = row->arrival_ms;
    return agg_mark_open(agg, race);
}

/* The fields of a race state, read and checked before any is applied. */
struct race_state {
    struct agg_id id;
    int64_t first_second;
    int64_t latest_second;
    int64_t published_from;
    int64_t published_through;
    int64_t activity_ms;
    int64_t results_revision; /* -1: none */
    const struct sjson_value *revisions;
};

static int member_int(const struct sjson_value *root, const char *key,
                      int64_t *out)
{
    const struct sjson_value *v = sjson_object_get(root, key);
    if (v == NULL || v->type != SJSON_NUMBER)
        return -1;
    return agg_parse_int64(v->str, v->len, out);
}

static int state_read(const struct agg *agg, const struct sjson_value *root,
                      struct race_state *st)
{
    const struct sjson_value *id = sjson_object_get(root, "raceId");

    if (root->type != SJSON_OBJECT || id == NULL ||
        agg_id_from_value(id, &st->id) != AGG_REJECT_NONE ||
        member_int(root, "firstSecond", &st->first_second) != 0 ||
        member_int(root, "latestSecond", &st->latest_second) != 0 ||
        member_int(root, "publishedFrom", &st->published_from) != 0 ||
        member_int(root, "publishedThrough", &st->published_through) != 0 ||
        member_int(root, "activityMs", &st->activity_ms) != 0)
        return -1;
    st->revisions = sjson_object_get(root, "revisions");
    if (st->revisions == NULL || st->revisions->type != SJSON_ARRAY)
        return -1;
    st->results_revision = -1;
    if (sjson_object_get(root, "resultsRevision") != NULL &&
        (member_int(root, "resultsRevision", &st->results_revision) != 0 ||
         st->results_revision < -1 || st->results_revision > INT32_MAX ||
         (st->results_revision >= 0 && st->latest_second == 0)))
        return -1;

    /* Bounds that every later index into the per-second arrays relies
     * on. */
    bool empty = st->latest_second == 0;
    bool unpublished = st->published_through == 0;
    if (st->latest_second < 0 || st->latest_second > agg->cfg.max_seconds ||
        st->first_second < (empty ? 0 : 1) ||
        st->first_second > st->latest_second || st->published_through < 0 ||
        st->published_through > st->latest_second ||
        st->published_from < (unpublished ? 0 : 1) ||
        st->published_from > st->published_through)
        return -1;
    return 0;
}

/* Check every [second, revision] pair, then store the revisions. */
static int state_set_revisions(struct race *race, const struct race_state *st)
{
    for (size_t pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < st->revisions->count; i++) {
            const struct sjson_value *pair = &st->revisions->items[i];
            int64_t second, revision;
            if (pair->type != SJSON_ARRAY || pair->count != 2 ||
                pair->items[0].type != SJSON_NUMBER ||
                pair->items[1].type != SJSON_NUMBER ||
                agg_parse_int64(pair->items[0].str, pair->items[0].len,
                                &second) != 0 ||
                agg_parse_int64(pair->items[1].str, pair->items[1].len,
                                &revision) != 0 ||
                second < st->published_from || second > st->published_through ||
                revision < 1 || revision > INT32_MAX)
                return -1;
            if (pass == 1)
                race->seconds[second - 1].revision = (int32_t)revision;
        }
    }
    return 0;
}

/*
 * Apply one race state document after the race's samples. Returns 0,
 * -EINVAL when the document is invalid or disagrees with the samples,
 * -ENOSPC past AGG_MAX_RACES, or -ENOMEM.
 */
int agg_restore_race(struct agg *agg, const char *json, size_t len)
{
    struct sjson_limits limits = {AGG_MAX_DOCUMENT_BYTES, 4};
    struct sjson_doc *doc = NULL;
    struct race_state st;
    struct race *race = NULL;

    if (sjson_parse(json, len, &limits, &doc, NULL) != 0)
        return -EINVAL;
    int rc = state_read(agg, sjson_doc_root(doc), &st) == 0 ? 0 : -EINVAL;
    if (rc == 0)
        rc = race_get(agg, &st.id, &race);
    if (rc == 0 && race->latest_second != 0 &&
        (race->first_second != st.first_second ||
         race->latest_second != st.latest_second))
        rc = -EINVAL;
    if (rc == 0 && st.latest_second > 0)
        rc = race_reserve(agg, race, NULL, (int32_t)st.latest_second);
    if (rc == 0 && state_set_revisions(race, &st) != 0)
        rc = -EINVAL;
    if (rc == 0) {
        race->first_second = (int32_t)st.first_second;
        race->latest_second = (int32_t)st.latest_second;
        race->published_from = (int32_t)st.published_from;
        race->published_through = (int32_t)st.published_through;
        race->activity_ms = st.activity_ms;
        race->results_published = st.results_revision >= 0;
        race->results_revision =
            st.results_revision >= 0 ? (int32_t)st.results_revision : 0;
        race->dirty = false;
        rc = agg_mark_open(agg, race);
    }
    sjson_doc_free(doc);
    return rc;
}

/*
 * Apply one class state document. Returns 0, -EINVAL when it is invalid,
 * or -ENOMEM.
 */
int agg_restore_class(struct agg *agg, const char *json, size_t len)
{
    struct sjson_limits limits = {AGG_MAX_DOCUMENT_BYTES, 2};
    struct sjson_doc *doc = NULL;
    struct agg_id id;
    int64_t revision;

    if (sjson_parse(json, len, &limits, &doc, NULL) != 0)
        return -EINVAL;
    const struct sjson_value *root = sjson_doc_root(doc);
    const struct sjson_value *id_value = sjson_object_get(root, "classId");
    int rc = -EINVAL;
    if (root->type == SJSON_OBJECT && id_value != NULL &&
        agg_id_from_value(id_value, &id) == AGG_REJECT_NONE &&
        member_int(root, "revision", &revision) == 0 && revision >= 0 &&
        revision <= INT32_MAX)
        rc = class_restore(agg, &id, (int32_t)revision);
    sjson_doc_free(doc);
    return rc;
}
