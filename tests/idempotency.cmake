# Tests of the idempotency library.
podium_test(test_idem_key test_idem_key.c LIBS podium_idempotency)

podium_test(test_idempotency test_idempotency.c
    LIBS podium_idempotency PkgConfig::SQLITE3)
# Every case of test_idempotency again with the LRU cache on, as
# <case>_cached: the program reads the cache size from PODIUM_IDEM_CACHE.
file(STRINGS test_idempotency.c idem_cases REGEX "^TEST\\([a-z0-9_]+\\)")
foreach(line ${idem_cases})
    string(REGEX REPLACE "^TEST\\(([a-z0-9_]+)\\).*" "\\1" case ${line})
    add_test(NAME ${case}_cached COMMAND test_idempotency ${case})
    set_tests_properties(${case}_cached PROPERTIES TIMEOUT 60 ENVIRONMENT
        "PODIUM_IDEM_CACHE=1024;PODIUM_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endforeach()

# The example program of docs/idempotency.md (the first C block after
# "## API") is compiled with test_idempotency and run, so the documented
# usage keeps building against the header.
set(idem_doc ${PROJECT_SOURCE_DIR}/docs/idempotency.md)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${idem_doc})
file(READ ${idem_doc} idem_doc_text)
string(FIND "${idem_doc_text}" "\n## API" idem_api_at)
if(idem_api_at EQUAL -1)
    message(FATAL_ERROR "${idem_doc} has no \"## API\" section")
endif()
string(SUBSTRING "${idem_doc_text}" ${idem_api_at} -1 idem_doc_text)
string(FIND "${idem_doc_text}" "\n```c\n" idem_code_at)
string(FIND "${idem_doc_text}" "\n```\n" idem_code_end)
if(idem_code_at EQUAL -1 OR idem_code_end LESS idem_code_at)
    message(FATAL_ERROR "${idem_doc}: no C block in the \"## API\" section")
endif()
math(EXPR idem_code_at "${idem_code_at} + 6")
math(EXPR idem_code_len "${idem_code_end} - ${idem_code_at} + 1")
string(SUBSTRING "${idem_doc_text}" ${idem_code_at} ${idem_code_len}
    idem_code)
file(GENERATE OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/idem_doc_example.c
    CONTENT "${idem_code}")
add_executable(idem_doc_example ${CMAKE_CURRENT_BINARY_DIR}/idem_doc_example.c)
target_link_libraries(idem_doc_example PRIVATE podium_idempotency
    PkgConfig::LIBCRYPTO)
add_dependencies(test_idempotency idem_doc_example)
add_test(NAME idem_doc_example_runs COMMAND idem_doc_example
    ${CMAKE_CURRENT_BINARY_DIR}/idem_doc_example.db)
