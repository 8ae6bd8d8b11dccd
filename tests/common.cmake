# Tests of the common module.
podium_test(test_common test_common.c LIBS podium_common)
podium_test(test_http test_http.c LIBS podium_common PkgConfig::LIBUV)
