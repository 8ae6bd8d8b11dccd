/*
 * Checks of the MQTT TLS files when the configuration loads. A file that
 * is missing, unreadable or not PEM, or a private key that does not belong
 * to the client certificate, is a configuration error (exit status 2)
 * rather than a connection that fails again and again once podium runs.
 * The checks read the files with libcrypto, the library that later loads
 * them for the TLS handshake.
 */
#include "config/config_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

/*
 * Passphrase callback that supplies none. Without it, OpenSSL would prompt
 * on the terminal for an encrypted key, which a daemon cannot answer.
 */
static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    (void)buf, (void)size, (void)rwflag, (void)arg;
    return -1;
}

/*
 * Open the file that setting names, for reading. Returns NULL with a
 * message in err when it cannot be opened or is not a regular file.
 */
static FILE *open_tls_file(const char *setting, const char *path, char *err,
                           size_t err_len)
{
    struct stat st;
    FILE *file;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        snprintf(err, err_len,
                 "cannot read %s %s: %s; set %s to a readable PEM file",
                 setting, path, strerror(errno), setting);
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, err_len,
                 "cannot read %s %s: not a regular file; set %s to a PEM "
                 "file",
                 setting, path, setting);
        close(fd);
        return NULL;
    }
    file = fdopen(fd, "r");
    if (file == NULL) {
        snprintf(err, err_len, "cannot read %s %s: %s", setting, path,
                 strerror(errno));
        close(fd);
    }
    return file;
}

/* Read the first PEM certificate of the file that setting names. */
static X509 *read_certificate(const char *setting, const char *path, char *err,
                              size_t err_len)
{
    FILE *file = open_tls_file(setting, path, err, err_len);
    X509 *cert;

    if (file == NULL)
        return NULL;
    cert = PEM_read_X509(file, NULL, no_passphrase, NULL);
    fclose(file);
    if (cert == NULL)
        snprintf(err, err_len,
                 "%s %s contains no PEM certificate (a \"-----BEGIN "
                 "CERTIFICATE-----\" block); set %s to a certificate file",
                 setting, path, setting);
    return cert;
}

/* Read the PEM private key of the file that setting names. */
static EVP_PKEY *read_private_key(const char *setting, const char *path,
                                  char *err, size_t err_len)
{
    FILE *file = open_tls_file(setting, path, err, err_len);
    EVP_PKEY *key;

    if (file == NULL)
        return NULL;
    key = PEM_read_PrivateKey(file, NULL, no_passphrase, NULL);
    fclose(file);
    if (key == NULL)
        snprintf(err, err_len,
                 "%s %s contains no PEM private key that podium can read; "
                 "an encrypted key is not supported, so set %s to an "
                 "unencrypted key file",
                 setting, path, setting);
    return key;
}

/* Check the client certificate and key files and that they belong together. */
static int check_client_pair(const char *cert_path, const char *key_path,
                             char *err, size_t err_len)
{
    X509 *cert = read_certificate("mqtt.cert_file", cert_path, err, err_len);
    EVP_PKEY *key = NULL;
    int rc = -1;

    if (cert == NULL)
        return -1;
    key = read_private_key("mqtt.key_file", key_path, err, err_len);
    if (key == NULL)
        goto out;
    if (X509_check_private_key(cert, key) != 1) {
        snprintf(err, err_len,
                 "mqtt.key_file %s does not match the certificate in "
                 "mqtt.cert_file %s; set mqtt.key_file to the private key "
                 "of that certificate",
                 key_path, cert_path);
        goto out;
    }
    rc = 0;
out:
    EVP_PKEY_free(key);
    X509_free(cert);
    return rc;
}

int cfg_check_mqtt_tls(const struct podium_config *cfg, char *err,
                       size_t err_len)
{
    int rc = 0;

    /* The TLS files are used only by the MQTT transport with mqtts://. */
    if (cfg->transport != CFG_TRANSPORT_MQTT ||
        strncasecmp(cfg->mqtt_url, "mqtts://", 8) != 0)
        return 0;

    /* The broker is always verified, so TLS needs the CA that signed it. */
    if (cfg->mqtt_ca_file == NULL) {
        snprintf(err, err_len,
                 "mqtt.url %s uses TLS but mqtt.ca_file is not set: set it to "
                 "the CA certificate that signed the broker's certificate "
                 "(for AWS IoT Core, Amazon Root CA 1), or use mqtt://",
                 cfg->mqtt_url);
        return -1;
    }
    X509 *ca =
        read_certificate("mqtt.ca_file", cfg->mqtt_ca_file, err, err_len);
    if (ca == NULL)
        rc = -1;
    X509_free(ca);
    if (rc == 0 && cfg->mqtt_cert_file != NULL && cfg->mqtt_key_file != NULL)
        rc = check_client_pair(cfg->mqtt_cert_file, cfg->mqtt_key_file, err,
                               err_len);

    /* Failed reads leave entries in OpenSSL's thread-local error queue. */
    ERR_clear_error();
    return rc;
}
