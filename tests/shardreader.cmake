# Tests of the shardreader module.
podium_test(test_shardreader test_shardreader.c
    LIBS podium_shardreader PkgConfig::JANSSON m TIMEOUT 120)
podium_test(test_kpl test_kpl.c LIBS podium_shardreader PkgConfig::LIBCRYPTO)
