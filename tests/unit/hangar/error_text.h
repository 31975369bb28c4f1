// The message of a hangar ErrorOr, or "" when it holds a value: tests compare and search it.
#pragma once

#include <string>

#include "error_or.h"

template <typename T>
std::string error_text(const hangar::ErrorOr<T>& result) {
  return result.is_error() ? result.error().message : "";
}
