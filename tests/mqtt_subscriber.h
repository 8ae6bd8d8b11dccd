/*
 * A test MQTT subscriber on its own libmosquitto thread: it subscribes to
 * '#' at QoS 1 and keeps every message it receives, so tests can compare
 * what the broker delivered with what podium published.
 */
#ifndef PODIUM_TESTS_MQTT_SUBSCRIBER_H
#define PODIUM_TESTS_MQTT_SUBSCRIBER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include <mosquitto.h>

struct received {
    char *topic;
    char *payload; /* NUL-terminated copy */
    size_t len;
};

struct subscriber {
    struct mosquitto *mosq;
    pthread_mutex_t mutex;
    bool subscribed;
    struct received *msgs; /* read under mutex while the thread runs */
    size_t count;
    size_t cap;
};

/* TLS files of a subscriber; check_host false accepts a broker
 * certificate for another host name. */
struct subscriber_tls {
    const char *ca_file;
    const char *cert_file;
    const char *key_file;
    bool check_host;
};

/* Connect to 127.0.0.1:port (over TLS when tls is not NULL), subscribe to
 * '#' at QoS 1 and wait for the SUBACK; the case fails after 5 s. */
void sub_start(struct subscriber *sub, int port,
               const struct subscriber_tls *tls);

/* Number of messages received so far. */
size_t sub_count(struct subscriber *sub);

/* Stop the subscriber's thread; the received messages stay readable. */
void sub_stop(struct subscriber *sub);

/* Free the received messages. */
void sub_free(struct subscriber *sub);

#endif
