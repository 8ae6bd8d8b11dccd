# Tests of the aggregator module.
podium_test(test_aggregator test_aggregator.c LIBS podium_aggregator)
podium_test(test_alleycat test_alleycat.c LIBS podium_aggregator)
podium_test(test_record_decode test_record_decode.c LIBS podium_aggregator)
