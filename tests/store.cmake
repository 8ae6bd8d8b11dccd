# Tests of the store module.
podium_test(test_store test_store.c LIBS podium_store PkgConfig::SQLITE3)
