# Tests of the common module.
podium_test(test_common test_common.c LIBS podium_common)
podium_test(test_http test_http.c LIBS podium_common PkgConfig::LIBUV)
# The AWS credential chain, with a canned HTTP server on 127.0.0.1.
podium_test(test_awscreds test_awscreds.c LIBS podium_common PkgConfig::LIBUV)
