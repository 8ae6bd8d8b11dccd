# Tests of the aggregator module.
