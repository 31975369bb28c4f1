// TRY for ErrorOr<void>: lib/error.h's TRY needs a value to release.
#pragma once

#include "lib/error.h"

#define VTRY(expr)                                 \
  do {                                             \
    auto _vtry_result = (expr);                    \
    if (_vtry_result.is_error()) return _vtry_result.error(); \
  } while (0)
