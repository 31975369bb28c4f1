# Guest (freestanding x86_64) build rules.
#
# Guest code is compiled by the host g++ with -nostdinc against newlib's headers plus the
# header-only part of libstdc++ (see libc-shim/include for the few stand-ins it needs).
# Every guest library is an OBJECT library so that nothing (app registrations, interrupt vectors)
# is dropped by the static linker.

set(BLIMP_NEWLIB_DIR ${CMAKE_BINARY_DIR}/newlib/install/x86_64-elf)
add_custom_command(
  OUTPUT ${BLIMP_NEWLIB_DIR}/lib/libc.a ${BLIMP_NEWLIB_DIR}/lib/libm.a
  COMMAND ${CMAKE_SOURCE_DIR}/libc-shim/build-newlib.sh ${CMAKE_BINARY_DIR}
  DEPENDS ${CMAKE_SOURCE_DIR}/libc-shim/build-newlib.sh
  COMMENT "Building newlib from Debian's newlib-source (once, about a minute)")
add_custom_target(newlib DEPENDS ${BLIMP_NEWLIB_DIR}/lib/libc.a)

execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=include
                OUTPUT_VARIABLE BLIMP_GCC_INCLUDE OUTPUT_STRIP_TRAILING_WHITESPACE)
execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-libgcc-file-name
                OUTPUT_VARIABLE BLIMP_LIBGCC OUTPUT_STRIP_TRAILING_WHITESPACE)
execute_process(COMMAND ${CMAKE_CXX_COMPILER} -dumpmachine
                OUTPUT_VARIABLE BLIMP_HOST_TRIPLE OUTPUT_STRIP_TRAILING_WHITESPACE)
string(REGEX MATCH "^[0-9]+" BLIMP_GCC_MAJOR ${CMAKE_CXX_COMPILER_VERSION})

add_library(blimp_guest_flags INTERFACE)
target_compile_definitions(blimp_guest_flags INTERFACE BLIMP_GUEST=1)
target_compile_options(blimp_guest_flags INTERFACE
  -nostdinc -ffreestanding -fno-pic -fno-pie -mno-red-zone -fno-stack-protector
  -fno-omit-frame-pointer -fno-builtin-malloc -Wall -Wextra -Werror
  $<$<COMPILE_LANGUAGE:CXX>:-fno-exceptions -fno-rtti -fno-threadsafe-statics -fno-use-cxa-atexit>
  "SHELL:-isystem ${CMAKE_SOURCE_DIR}/libc-shim/include"
  "$<$<COMPILE_LANGUAGE:CXX>:SHELL:-isystem /usr/include/c++/${BLIMP_GCC_MAJOR}>"
  "$<$<COMPILE_LANGUAGE:CXX>:SHELL:-isystem /usr/include/${BLIMP_HOST_TRIPLE}/c++/${BLIMP_GCC_MAJOR}>"
  "SHELL:-isystem ${BLIMP_NEWLIB_DIR}/include"
  "SHELL:-isystem ${BLIMP_GCC_INCLUDE}")
target_include_directories(blimp_guest_flags INTERFACE ${CMAKE_SOURCE_DIR})

# blimp_guest_library(NAME SOURCES ...): freestanding object library linked into blimp.elf.
function(blimp_guest_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES" ${ARGN})
  add_library(${name} OBJECT ${ARG_SOURCES})
  target_link_libraries(${name} PUBLIC blimp_guest_flags)
  add_dependencies(${name} newlib)
  set_property(GLOBAL APPEND PROPERTY BLIMP_GUEST_OBJECT_LIBS ${name})
endfunction()
