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
