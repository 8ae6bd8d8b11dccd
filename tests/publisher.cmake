# Tests of the publisher module.
podium_test(test_publisher test_publisher.c
    LIBS podium_publisher PkgConfig::MOSQUITTO TIMEOUT 120)
