// The app registry. Blimp runs exactly one app, linked into the kernel image and chosen with
// `app=NAME` on the kernel command line. An app is a main(): its return value becomes the VM's
// exit status. argv holds the command-line words meant for the app (everything except `app=` and
// the entries QEMU adds, such as virtio_mmio.device=).
#pragma once

namespace blimp {

struct App {
  const char* name;
  const char* summary;
  int (*main)(int argc, char** argv);
};

// Registered apps, in link order.
const App* const* apps_begin();
const App* const* apps_end();
const App* find_app(const char* name);

}  // namespace blimp

#define BLIMP_APP(ident, app_name, app_summary, main_fn)                                   \
  static const ::blimp::App ident##_app{app_name, app_summary, main_fn};                   \
  [[gnu::used, gnu::section("blimp_apps")]] static const ::blimp::App* const ident##_ptr = \
      &ident##_app
