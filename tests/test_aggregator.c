#include "aggregator/aggregator.h"
#include "aggregator/fixed.h"
#include "tests/testlib.h"

struct output_case {
    const char *name;
    const char *cadence;
    const char *resistance;
    int64_t output4;
};

static const struct output_case output_cases[] = {
    {"example record", "798e-1", "79e0", 1653120},
    {"zero inputs", "0", "0", 227500},
    {"half rounds up", "1e-3", "0", 227507},
    {"just under half rounds down",
     "999999999999999999999999999999999999999e-42", "0", 227506},
    {"subnormal resistance", "798e-1", "18011670033376514e-324", 746200},
    {"maximum values", "1e3", "1e3", 110227500},
};

TEST(agg_output_rounds_half_up)
{
    for (size_t i = 0; i < sizeof output_cases / sizeof output_cases[0]; i++) {
        const struct output_case *c = &output_cases[i];
        int64_t fast = -1, slow = -1;
        fprintf(stderr, "%s\n", c->name);
        ASSERT_EQ(agg_output4(c->cadence, c->resistance, &fast), 0);
        ASSERT_EQ(fast, c->output4);
        ASSERT_EQ(fixed_output4_big(c->cadence, c->resistance, &slow), 0);
        ASSERT_EQ(slow, c->output4);
    }
}
