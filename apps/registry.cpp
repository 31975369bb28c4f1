#include <cstring>

#include "apps/app.h"

extern "C" const blimp::App* const __start_blimp_apps[];
extern "C" const blimp::App* const __stop_blimp_apps[];

namespace blimp {

const App* const* apps_begin() { return __start_blimp_apps; }
const App* const* apps_end() { return __stop_blimp_apps; }

const App* find_app(const char* name) {
  for (auto* a = apps_begin(); a != apps_end(); a++) {
    if (strcmp((*a)->name, name) == 0) return *a;
  }
  return nullptr;
}

}  // namespace blimp
