// libstdc++'s headers were configured for glibc and include <features.h>; newlib has none.
// This stand-in lets the header-only parts of libstdc++ (type_traits, span, algorithm, ...)
// compile against newlib. Guest code must not use <atomic>/<mutex>/<thread>: see lib/atomic.h.
#pragma once
#define __GLIBC_PREREQ(maj, min) 0
