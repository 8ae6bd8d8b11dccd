# Tests of the daemon module.
podium_test(test_pipeline test_pipeline.c
    LIBS podium_daemon PkgConfig::SQLITE3)
# One generated set of races delivered in many ways must publish the same.
podium_test(test_determinism test_determinism.c
    LIBS podium_daemon PkgConfig::SQLITE3)
# The /metrics text without a running daemon.
podium_test(test_metrics test_metrics.c LIBS podium_daemon)
# Recording lines and the arrival times of aws kinesis get-records output.
podium_test(test_recording test_recording.c LIBS podium_daemon)

# End-to-end tests: the podium binary against kinesalite (or kinesis-local)
# and mosquitto, started by tools/peers.sh on loopback ports. They need
# `bash tools/peers.sh install` (tools/deps.sh runs it) and fail, never
# skip, when a peer cannot start. Work folders go to e2e-work in the build
# folder, where tools/test.sh stops any peer left by a killed test.
# Arguments after the script are passed to it.
function(podium_e2e_test name script)
    add_test(NAME ${name}
        COMMAND bash ${PROJECT_SOURCE_DIR}/tests/e2e/${script} ${ARGN})
    set_tests_properties(${name} PROPERTIES
        TIMEOUT 600
        ENVIRONMENT "PODIUM_BIN=$<TARGET_FILE:podium>;PODIUM_SOURCE_DIR=${PROJECT_SOURCE_DIR};PODIUM_E2E_WORK_ROOT=${CMAKE_BINARY_DIR}/e2e-work")
endfunction()

podium_e2e_test(e2e_live e2e_live.sh)
podium_e2e_test(e2e_crash crash.sh)
podium_e2e_test(e2e_reshard reshard.sh kinesalite)
podium_e2e_test(e2e_reshard_kinesis_local reshard.sh kinesis-local)
# publish.transport=iot against tests/iot-publish-server.js.
podium_e2e_test(e2e_iot iot.sh)
# Profiles, container and instance credentials, refresh and rotation, and
# podium check-config.
podium_e2e_test(e2e_credentials credentials.sh)
# MQTT over TLS with client certificates against the peer mosquitto-tls.
podium_e2e_test(e2e_mqtt_tls mqtt-tls.sh)
podium_e2e_test(e2e_stall stall.sh)
podium_e2e_test(e2e_throttle throttle.sh)
# /healthz, /readyz and /metrics of the HTTP server.
podium_e2e_test(e2e_metrics metrics.sh)
podium_e2e_test(e2e_query query.sh)
# outbox.max with the broker gone mid-run, then back.
podium_e2e_test(e2e_outbox outbox.sh)
# KPL aggregates, a bad aggregate as a dead letter, SIGKILL after an aggregate.
podium_e2e_test(e2e_kpl kpl.sh)
# One recording through a 1-shard and a 4-shard stream: the same messages.
podium_e2e_test(e2e_determinism determinism.sh per-second)
podium_e2e_test(e2e_determinism_shared_arrival determinism.sh shared-arrival)
# One recording replayed: same bytes at any batch size, same as run.
podium_e2e_test(e2e_replay replay.sh)
# podium record of a live 2-shard stream with a split and KPL aggregates.
podium_e2e_test(e2e_record record.sh)
# podium record --import of aws kinesis get-records output; no peers.
podium_e2e_test(e2e_record_import record-import.sh)
# Replay of records sharing arrival milliseconds, and its progress bar.
podium_e2e_test(e2e_replay_stream replay-stream.sh)
# podium replay stopped by SIGINT and SIGTERM, and log lines beside its bar.
podium_e2e_test(e2e_replay_signal replay-signal.sh)
# podium replay's report of bad lines, its input checks and output streams.
podium_e2e_test(e2e_replay_lines replay-lines.sh)
# podium replay's spool files in TMPDIR, and its failures to make or write them.
podium_e2e_test(e2e_replay_spool replay-spool.sh)
podium_e2e_test(e2e_sample_log sample-log.sh)
# tools/demo.sh interrupted by SIGINT: the reason, status 130, nothing left.
podium_e2e_test(e2e_demo_signal demo-signal.sh)
# podium simulate's malformed, late and skewed records, counted and replayed.
podium_e2e_test(e2e_simulate_faults simulate-faults.sh)
# The golden race in tests/data/golden replayed at two batch sizes.
podium_e2e_test(e2e_golden golden.sh)

# The checker's own rules on hand-computed cases; needs only node.
add_test(NAME e2e_checker_rules
    COMMAND node --test ${PROJECT_SOURCE_DIR}/tests/e2e/checker.test.mjs)
set_tests_properties(e2e_checker_rules PROPERTIES TIMEOUT 60)
# CloudWatch EMF lines on standard output against /metrics and the format.
podium_e2e_test(e2e_emf emf.sh)
# The Dockerfile and its tools/container-*.sh scripts, without an engine.
podium_e2e_test(e2e_container_static container-static.sh)
# The container's entry point, configured by PODIUM_* variables only.
podium_e2e_test(e2e_container container.sh)
# The entry point checks the store.path of PODIUM_STORE_PATH, --config and
# --set.
podium_e2e_test(e2e_container_store_path container-store-path.sh)
# The settings table of docs/operations.md against podium run --help.
podium_e2e_test(e2e_operations_doc operations-doc.sh)
# The commands of the restore steps in docs/operations.md, run on a
# database after a clean stop and after a crash.
podium_e2e_test(e2e_operations_doc_restore operations-doc-restore.sh)
