// kernel_main: from the 32-bit loaders' hand-off to the app's exit status.
#include <cstdint>
#include <cstring>

#include "apps/app.h"
#include "drivers/balloon/balloon.h"
#include "drivers/drivers.h"
#include "kernel/acpi.h"
#include "kernel/arch/apic.h"
#include "kernel/arch/descriptor_tables.h"
#include "kernel/boot/boot_info.h"
#include "kernel/boot/boot_protocol.h"
#include "kernel/cmdline.h"
#include "kernel/console.h"
#include "kernel/deferred_work.h"
#include "kernel/paging.h"
#include "kernel/panic.h"
#include "kernel/percpu.h"
#include "kernel/power.h"
#include "kernel/smp.h"
#include "kernel/timer.h"
#include "mm/background_churn.h"
#include "mm/mm.h"
#include "mm/page_states/page_states.h"
#include "mm/sharing/sharing.h"

extern "C" char __kernel_end[];

namespace blimp {
void run_global_constructors();
}

namespace {

using namespace blimp;

// constinit: no constructor may run (global constructors run later and would wipe it).
constinit BootInfo g_boot;

constexpr int kMaxArgs = 64;
char g_arg_storage[4096];
char* g_argv[kMaxArgs + 1];

// Words the kernel and its drivers read (docs/balloon.md, docs/page-states.md, docs/sharing.md),
// and QEMU's virtio_mmio.device=: an app that parses strictly (speedtest1) would reject them.
bool is_kernel_word(const char* word, size_t len) {
  static constexpr const char* kPrefixes[] = {
      "app=",     "virtio_mmio.", "start_after_balloon=", "balloon.", "page_states=",
      "sharing=", "sharing.",     "page_ages=",           "smp=",     "smp."};
  for (const char* prefix : kPrefixes) {
    const size_t n = strlen(prefix);
    if (len >= n && strncmp(word, prefix, n) == 0) return true;
  }
  return false;
}

// Splits the command line into the app's argv: argv[0] is the app name; QEMU's and the kernel's
// own words are left out.
int build_argv(const char* app_name) {
  int argc = 0;
  size_t used = 0;
  auto push = [&](const char* s, size_t len) {
    if (argc == kMaxArgs || used + len + 1 > sizeof g_arg_storage) return;
    memcpy(g_arg_storage + used, s, len);
    g_arg_storage[used + len] = '\0';
    g_argv[argc++] = g_arg_storage + used;
    used += len + 1;
  };
  push(app_name, strlen(app_name));
  const char* p = cmdline::raw();
  while (*p) {
    while (*p == ' ') p++;
    const char* start = p;
    while (*p && *p != ' ') p++;
    size_t len = p - start;
    if (len == 0) continue;
    if (is_kernel_word(start, len)) continue;
    push(start, len);
  }
  g_argv[argc] = nullptr;
  return argc;
}

// Hands the firmware's usable RAM to the memory manager (mm/). Everything the boot code still
// needs (command line, ACPI tables) is copied or lies in reserved ranges by now; the loader's
// structures may be reused.
void init_memory(const BootInfo& boot) {
  mm::init(boot.ram, boot.ram_count, reinterpret_cast<PhysAddr>(__kernel_end));
  auto& pages = mm::pages();
  // Per-CPU page caches (mm/page_allocator.h) unless mm.pcp=off: the old single-lock path stays
  // bootable, for tests and for benchmarks to compare.
  char pcp[8];
  const bool pcp_off = cmdline::get("mm.pcp", pcp, sizeof pcp) && strcmp(pcp, "off") == 0;
  pages.set_percpu_caches(!pcp_off);
  kprintf("mm: per-CPU page caches %s\n", pcp_off ? "off (mm.pcp=off)" : "on");
  kprintf("memory: %lu MiB managed, %lu MiB free\n", (pages.total_pages() * kPageSize) >> 20,
          (pages.free_pages_count() * kPageSize) >> 20);
}

// start_after_balloon=SIZE: the app starts only once the balloon holds at least SIZE (bytes,
// K/M/G suffixes), i.e. once the host's target has been met, so that a benchmark runs in an
// already ballooned guest (bench/experiments/ballooned_vs_born_small.py). The host sets the
// target with QMP `balloon` before or after boot; the balloon's work runs in interrupt bottom
// halves while this waits. There is no timeout (the host bounds the VM); every 5 s the wait says
// how far the balloon is. No balloon device: the app does not start (exit status 2).
bool wait_for_balloon() {
  unsigned long long want = 0;
  char raw[32];
  if (!cmdline::get("start_after_balloon", raw, sizeof raw)) return true;
  if (!cmdline::get_u64("start_after_balloon", want)) {
    kprintf("blimp: bad value for start_after_balloon: %s\n", raw);
    return false;
  }
  balloon::Balloon* b = balloon::Balloon::instance();
  if (!b) {
    kprintf("blimp: start_after_balloon=%s but no balloon device\n", raw);
    return false;
  }
  uint64_t want_pages = (want + kPageSize - 1) / kPageSize;
  uint64_t t0 = timer::now_ns(), next_say = t0 + 5000000000ull;
  while (b->actual_pages() < want_pages) {
    timer::sleep_ms(10);
    if (timer::now_ns() >= next_say) {
      kprintf("blimp: waiting for the balloon to hold %llu MiB: %lu MiB (target %lu MiB)\n",
              want >> 20, (b->actual_pages() * kPageSize) >> 20,
              (b->target_pages() * kPageSize) >> 20);
      next_say += 5000000000ull;
    }
  }
  kprintf("blimp: balloon holds %lu MiB (start_after_balloon=%s) after %lu ms\n",
          (b->actual_pages() * kPageSize) >> 20, raw, (timer::now_ns() - t0) / 1000000);
  return true;
}

[[noreturn]] void run_app() {
  char name[64];
  if (!cmdline::get("app", name, sizeof name)) strcpy(name, "hello");
  const App* app = find_app(name);
  if (!app) {
    kprintf("blimp: unknown app '%s'. Available apps:\n", name);
    for (auto* a = apps_begin(); a != apps_end(); a++)
      kprintf("  %-16s %s\n", (*a)->name, (*a)->summary);
    power::exit(2);
  }
  int argc = build_argv(app->name);
  if (!wait_for_balloon()) power::exit(2);
  kprintf("blimp: starting app '%s'\n", app->name);
  int status = app->main(argc, g_argv);
  kprintf("blimp: app '%s' exited with status %d\n", app->name, status);
  power::exit(status);
}

}  // namespace

extern "C" [[noreturn]] void kernel_main(uint32_t protocol, uint32_t info_phys) {
  percpu::init_bsp();  // before anything asks which CPU it runs on
  console::init();
  arch::init_descriptor_tables();
  // First thing after the IDT: globals with constructors (default member initialisers count)
  // must be initialised before any code uses them. Constructors must not allocate: the heap
  // comes later.
  run_global_constructors();
  const char* error = nullptr;
  if (!parse_boot_info(static_cast<int>(protocol), info_phys, g_boot, error))
    panic("cannot boot: %s", error);
  cmdline::init(g_boot.cmdline);
  kprintf("blimp: booted via %s, %lu MiB RAM in %zu ranges, command line: %s\n",
          protocol == BOOT_PROTOCOL_PVH ? "PVH" : "multiboot2", g_boot.total_ram() >> 20,
          g_boot.ram_count, g_boot.cmdline);
  for (size_t i = 0; i < g_boot.ram_count; i++) {
    if (g_boot.ram[i].end() > (4ull << 30) &&
        !paging::map_ram(g_boot.ram[i].base, g_boot.ram[i].size))
      kprintf("blimp: RAM at %#lx is not mapped and will not be used\n", g_boot.ram[i].base);
  }
  acpi::init(g_boot.rsdp);  // before protect_null_page: the RSDP scan reads the BIOS data area
  paging::protect_null_page();
  const auto& platform = acpi::platform();
  arch::apic::init(platform.lapic_base);
  for (int i = 0; i < platform.ioapic_count; i++)
    arch::apic::add_ioapic(platform.ioapics[i].base, platform.ioapics[i].gsi_base);
  init_memory(g_boot);
  timer::init();
  // Before interrupts are enabled: the APs are started with the BSP's interrupts off and wait in
  // their idle loops for threads (kernel/threads.h), which only apps start.
  smp::start(g_boot);
  mm::start_background_load();  // smp.background=: idle work for the APs (tests)
  asm volatile("sti");
  // The composition root registers the drivers this image carries, then discovery binds them.
  balloon::Balloon::register_driver();
  drivers::init();
  // Cooperative memory on top of the balloon device (each does nothing on a stock device, or
  // with no balloon bound): mm reaches the device only through the channel handed in here.
  mm::DeviceChannel* channel = balloon::Balloon::instance();
  mm::page_states::init(channel);
  mm::sharing::init(channel);
  // Work the drivers queued at probe (the balloon's first stats buffer and target check) runs
  // now, not at whatever interrupt happens to come next.
  work::run_pending();
  run_app();
}
