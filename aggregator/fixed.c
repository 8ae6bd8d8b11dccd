/* placeholder */
typedef int podium_placeholder_aggregator_fixed;
