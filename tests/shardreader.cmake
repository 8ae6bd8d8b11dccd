# Tests of the shardreader module.
podium_test(test_shardreader test_shardreader.c
    LIBS podium_shardreader PkgConfig::JANSSON m TIMEOUT 120)
