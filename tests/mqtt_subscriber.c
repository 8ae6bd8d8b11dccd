#include "tests/mqtt_subscriber.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/testlib.h"

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void sub_on_connect(struct mosquitto *mosq, void *obj, int rc)
{
    (void)obj;
    if (rc == 0)
        mosquitto_subscribe(mosq, NULL, "#", 1);
}

static void sub_on_subscribe(struct mosquitto *mosq, void *obj, int mid,
                             int qos_count, const int *granted)
{
    struct subscriber *sub = obj;
    (void)mosq, (void)mid, (void)qos_count, (void)granted;
    pthread_mutex_lock(&sub->mutex);
    sub->subscribed = true;
    pthread_mutex_unlock(&sub->mutex);
}

static void sub_on_message(struct mosquitto *mosq, void *obj,
                           const struct mosquitto_message *m)
{
    struct subscriber *sub = obj;
    struct received *r;
    (void)mosq;

    pthread_mutex_lock(&sub->mutex);
    if (sub->count == sub->cap) {
        sub->cap = sub->cap ? sub->cap * 2 : 256;
        sub->msgs = realloc(sub->msgs, sub->cap * sizeof *sub->msgs);
    }
    r = &sub->msgs[sub->count++];
    r->topic = strdup(m->topic);
    r->len = (size_t)m->payloadlen;
    r->payload = malloc(r->len + 1);
    memcpy(r->payload, m->payload, r->len);
    r->payload[r->len] = '\0';
    pthread_mutex_unlock(&sub->mutex);
}

void sub_start(struct subscriber *sub, int port,
               const struct subscriber_tls *tls)
{
    memset(sub, 0, sizeof *sub);
    pthread_mutex_init(&sub->mutex, NULL);
    mosquitto_lib_init();
    sub->mosq = mosquitto_new(NULL, true, sub);
    ASSERT_TRUE(sub->mosq != NULL);
    if (tls != NULL) {
        ASSERT_EQ(mosquitto_tls_set(sub->mosq, tls->ca_file, NULL,
                                    tls->cert_file, tls->key_file, NULL),
                  MOSQ_ERR_SUCCESS);
        ASSERT_EQ(mosquitto_tls_insecure_set(sub->mosq, !tls->check_host),
                  MOSQ_ERR_SUCCESS);
    }
    mosquitto_connect_callback_set(sub->mosq, sub_on_connect);
    mosquitto_subscribe_callback_set(sub->mosq, sub_on_subscribe);
    mosquitto_message_callback_set(sub->mosq, sub_on_message);
    ASSERT_EQ(mosquitto_connect(sub->mosq, "127.0.0.1", port, 30), 0);
    ASSERT_EQ(mosquitto_loop_start(sub->mosq), 0);
    for (int i = 0; i < 250; i++) {
        pthread_mutex_lock(&sub->mutex);
        bool done = sub->subscribed;
        pthread_mutex_unlock(&sub->mutex);
        if (done)
            return;
        sleep_ms(20);
    }
    test_fail(__FILE__, __LINE__, "%s subscriber got no SUBACK within 5 s",
              tls != NULL ? "TLS" : "plain");
}

size_t sub_count(struct subscriber *sub)
{
    pthread_mutex_lock(&sub->mutex);
    size_t n = sub->count;
    pthread_mutex_unlock(&sub->mutex);
    return n;
}

void sub_stop(struct subscriber *sub)
{
    mosquitto_disconnect(sub->mosq);
    mosquitto_loop_stop(sub->mosq, true);
    mosquitto_destroy(sub->mosq);
    sub->mosq = NULL;
}

void sub_free(struct subscriber *sub)
{
    for (size_t i = 0; i < sub->count; i++) {
        free(sub->msgs[i].topic);
        free(sub->msgs[i].payload);
    }
    free(sub->msgs);
    pthread_mutex_destroy(&sub->mutex);
}
