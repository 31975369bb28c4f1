// libstdc++ was configured with POSIX threads; Blimp runs one thread, so its gthread layer
// is the single-threaded one libstdc++ itself ships.
#pragma once
#include <bits/gthr-single.h>
