# Tests of the shardreader module.
add_library(podium_kinesis_testlib STATIC kinesis_testlib.c)
target_link_libraries(podium_kinesis_testlib
    PUBLIC podium_testlib podium_shardreader PkgConfig::JANSSON)

podium_test(test_shardreader test_shardreader.c
    LIBS podium_kinesis_testlib m TIMEOUT 120)
podium_test(test_reader_faults test_reader_faults.c
    LIBS podium_kinesis_testlib m TIMEOUT 120)
podium_test(test_kpl test_kpl.c LIBS podium_shardreader PkgConfig::LIBCRYPTO)
podium_test(test_reader_reshard test_reader_reshard.c
    LIBS podium_kinesis_testlib m TIMEOUT 180)
podium_test(test_reader_expiry test_reader_expiry.c
    LIBS podium_kinesis_testlib m TIMEOUT 120)
