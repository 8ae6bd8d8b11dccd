# Tests of the idempotency library.
podium_test(test_idem_key test_idem_key.c LIBS podium_idempotency)

podium_test(test_idempotency test_idempotency.c
    LIBS podium_idempotency PkgConfig::SQLITE3)
# Every case of test_idempotency again with the LRU cache on, as
# <case>_cached: the program reads the cache size from PODIUM_IDEM_CACHE.
file(STRINGS test_idempotency.c idem_cases REGEX "^TEST\\([a-z0-9_]+\\)")
foreach(line ${idem_cases})
    string(REGEX REPLACE "^TEST\\(([a-z0-9_]+)\\).*" "\\1" case ${line})
    add_test(NAME ${case}_cached COMMAND test_idempotency ${case})
    set_tests_properties(${case}_cached PROPERTIES TIMEOUT 60
        ENVIRONMENT "PODIUM_IDEM_CACHE=1024;PODIUM_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endforeach()
