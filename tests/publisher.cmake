# Tests of the publisher module.
add_library(podium_mqtt_subscriber STATIC mqtt_subscriber.c)
target_link_libraries(podium_mqtt_subscriber
    PUBLIC podium_testlib PkgConfig::MOSQUITTO)

podium_test(test_publisher test_publisher.c
    LIBS podium_publisher podium_mqtt_subscriber TIMEOUT 120)
# The IoT transport against tests/iot-publish-server.js, which needs node
# and the npm packages of tools/peers (bash tools/peers.sh install).
podium_test(test_iot test_iot.c
    LIBS podium_publisher PkgConfig::JANSSON TIMEOUT 120)
# MQTT over TLS with client certificates against mosquitto, with
# certificates from tools/make-test-certs.sh (Debian's openssl).
podium_test(test_mqtt_tls test_mqtt_tls.c
    LIBS podium_publisher podium_config podium_mqtt_subscriber
    TIMEOUT 120)
