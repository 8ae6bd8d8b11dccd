# Tests of the publisher module.
podium_test(test_publisher test_publisher.c
    LIBS podium_publisher PkgConfig::MOSQUITTO TIMEOUT 120)
# The IoT transport against tests/iot-publish-server.js, which needs node
# and the npm packages of tools/peers (bash tools/peers.sh install).
podium_test(test_iot test_iot.c
    LIBS podium_publisher PkgConfig::JANSSON TIMEOUT 120)
