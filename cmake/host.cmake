# Host-side build rules: the guest's logic compiled for Linux with sanitizers, and GoogleTest.
find_package(GTest REQUIRED)
include(GoogleTest)
find_package(Threads REQUIRED)

set(BLIMP_SANITIZE "-fsanitize=address,undefined;-fno-sanitize-recover=all;-fno-omit-frame-pointer")

add_library(blimp_host_flags INTERFACE)
# Tests check the lock ranks on every SpinLock::lock() (lib/spinlock.h); bench/mm, built without
# these flags, measures the allocator without that bookkeeping, as the guest runs it.
target_compile_definitions(blimp_host_flags INTERFACE BLIMP_HOST=1 BLIMP_LOCK_ORDER_CHECK=1)
target_compile_options(blimp_host_flags INTERFACE -Wall -Wextra -Werror -g ${BLIMP_SANITIZE})
target_link_options(blimp_host_flags INTERFACE ${BLIMP_SANITIZE})
target_include_directories(blimp_host_flags INTERFACE ${CMAKE_SOURCE_DIR})
target_link_libraries(blimp_host_flags INTERFACE Threads::Threads)

# blimp_host_library(NAME SOURCES ...): guest logic built for the host, for unit tests.
function(blimp_host_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_link_libraries(${name} PUBLIC blimp_host_flags)
endfunction()

# The one host stand-in for kernel/ (console, panic, a fake clock and timers, deferred work) that
# every unit test links: tests/unit/host_shims.cpp, its knobs in tests/unit/fake_kernel.h.
add_library(blimp_test_shims OBJECT ${CMAKE_SOURCE_DIR}/tests/unit/host_shims.cpp)
target_link_libraries(blimp_test_shims PUBLIC blimp_host_flags)

# blimp_unit_test(NAME SOURCES ... [LIBS ...]): a GoogleTest binary registered with CTest.
function(blimp_unit_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE blimp_host_flags GTest::gtest_main ${ARG_LIBS}
                        blimp_test_shims)
  gtest_discover_tests(${name} TEST_PREFIX "unit." DISCOVERY_TIMEOUT 60
                       PROPERTIES LABELS unit TIMEOUT 300)
endfunction()

# ThreadSanitizer builds, for the tests that run guest code on several threads at once. TSan
# cannot share a binary with ASan, so such a test is a second executable that compiles the guest
# sources it needs (and the shims) itself with -fsanitize=thread; GoogleTest stays uninstrumented.
set(BLIMP_TSAN "-fsanitize=thread;-fno-omit-frame-pointer")
add_library(blimp_host_flags_tsan INTERFACE)
target_compile_definitions(blimp_host_flags_tsan INTERFACE BLIMP_HOST=1 BLIMP_LOCK_ORDER_CHECK=1)
target_compile_options(blimp_host_flags_tsan INTERFACE -Wall -Wextra -Werror -g -O1 ${BLIMP_TSAN})
target_link_options(blimp_host_flags_tsan INTERFACE ${BLIMP_TSAN})
target_include_directories(blimp_host_flags_tsan INTERFACE ${CMAKE_SOURCE_DIR})
target_link_libraries(blimp_host_flags_tsan INTERFACE Threads::Threads)

# blimp_tsan_unit_test(NAME SOURCES ...): SOURCES are the test and the guest sources under test;
# registered with CTest as tsan.<Suite>.<Test>, label unit-tsan (so `-L unit` and `-L tsan` both
# select it).
function(blimp_tsan_unit_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES" ${ARGN})
  add_executable(${name} ${ARG_SOURCES} ${CMAKE_SOURCE_DIR}/tests/unit/host_shims.cpp)
  target_link_libraries(${name} PRIVATE blimp_host_flags_tsan GTest::gtest_main)
  # halt_on_error: a race fails the test instead of scrolling past in its output.
  gtest_discover_tests(${name} TEST_PREFIX "tsan." DISCOVERY_TIMEOUT 60
                       PROPERTIES LABELS unit-tsan TIMEOUT 600
                       ENVIRONMENT "TSAN_OPTIONS=halt_on_error=1")
endfunction()
