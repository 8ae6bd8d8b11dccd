/*
 * Start-up steps that `podium run` and `podium replay` share, so that a
 * replay opens the store and publishes exactly like the daemon.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "common/log.h"
#include "publisher/publisher.h"
#include "store/idempotency.h"

void daemon_pub_config(const struct podium_config *cfg,
                       const struct aws_credentials *creds,
                       struct pub_config *out)
{
    *out = (struct pub_config){
        .transport = cfg->transport == CFG_TRANSPORT_FILE  ? PUB_FILE
                     : cfg->transport == CFG_TRANSPORT_IOT ? PUB_IOT
                                                           : PUB_MQTT,
        .file_path = cfg->publish_file,
        .mqtt_url = cfg->mqtt_url,
        .mqtt_client_id = cfg->mqtt_client_id,
        .mqtt_ca_file = cfg->mqtt_ca_file,
        .mqtt_cert_file = cfg->mqtt_cert_file,
        .mqtt_key_file = cfg->mqtt_key_file,
        .max_inflight = 100,
        .iot_endpoint = cfg->iot_endpoint,
        .iot_region = cfg->region,
        .iot_credentials = creds,
    };
}

/*
 * Make a token that distinguishes this process's idempotency claims from
 * those of earlier processes, which are dead when this one starts.
 */
static int make_owner_token(uint8_t owner[IDEM_OWNER_LEN])
{
    size_t got = 0;
    while (got < IDEM_OWNER_LEN) {
        ssize_t n = getrandom(owner + got, IDEM_OWNER_LEN - got, 0);
        if (n < 0 && errno != EINTR)
            return -1;
        if (n > 0)
            got += (size_t)n;
    }
    return 0;
}

int daemon_open_idempotency(struct store *st, const struct podium_config *cfg)
{
    char err[512];
    uint8_t owner[IDEM_OWNER_LEN];
    struct idem_options opts = {
        .expiry_s = cfg->idempotency_expiry_s,
        .in_progress_timeout_ms = cfg->idempotency_in_progress_timeout_ms,
        .cache_size = (size_t)cfg->idempotency_cache_size,
    };

    if (make_owner_token(owner) != 0) {
        log_error("main", NULL, "failed to make an owner token: getrandom: %s",
                  strerror(errno));
        return -1;
    }
    if (store_open_idempotency(st, &opts, owner, err, sizeof err)) {
        log_error("main", NULL, "failed to open the idempotency table: %s",
                  err);
        return -1;
    }
    size_t reclaimed = store_idempotency_reclaimed(st);
    if (reclaimed > 0)
        log_warn("main", NULL,
                 "released %zu idempotency claims left unfinished by an "
                 "earlier process",
                 reclaimed);
    return 0;
}
