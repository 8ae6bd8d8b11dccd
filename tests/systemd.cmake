# Running under systemd: the notification protocol of `podium run`.
podium_test(test_notify test_notify.c
    LIBS podium_kinesis_testlib PkgConfig::SQLITE3 TIMEOUT 180)
add_dependencies(test_notify podium)
# The cases start the podium binary.
file(STRINGS test_notify.c notify_lines REGEX "^TEST\\([a-z0-9_]+\\)")
foreach(line ${notify_lines})
    string(REGEX REPLACE "^TEST\\(([a-z0-9_]+)\\).*" "\\1" case ${line})
    set_property(TEST ${case} APPEND PROPERTY ENVIRONMENT
        "PODIUM_BIN=$<TARGET_FILE:podium>")
endforeach()

# The unit in systemd/ as CMake configured it: systemd-analyze verify has no
# warnings, and its offline exposure level is at most 2.0.
add_test(NAME systemd_unit_verify
    COMMAND bash ${PROJECT_SOURCE_DIR}/tests/systemd-unit.sh verify
        ${PROJECT_BINARY_DIR}/systemd/podium.service $<TARGET_FILE:podium>)
add_test(NAME systemd_unit_security
    COMMAND bash ${PROJECT_SOURCE_DIR}/tests/systemd-unit.sh security
        ${PROJECT_BINARY_DIR}/systemd/podium.service 2.0)
set_tests_properties(systemd_unit_verify systemd_unit_security
    PROPERTIES TIMEOUT 60)

# SIGHUP: log.file reopened after a rename, log.level applied, and a broken
# configuration file kept out with one error line.
podium_e2e_test(e2e_sighup sighup.sh)

# `cmake --install --prefix` with DESTDIR: the unit and the sample
# configuration follow the prefix of the install, not of the configure step.
add_test(NAME systemd_install_prefix
    COMMAND bash ${PROJECT_SOURCE_DIR}/tests/systemd-install.sh
        ${PROJECT_BINARY_DIR})
set_tests_properties(systemd_install_prefix PROPERTIES TIMEOUT 120)
