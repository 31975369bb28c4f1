#include "kernel/smp.h"

#include <cstring>

#include "kernel/acpi.h"
#include "kernel/acpi_madt.h"
#include "kernel/arch/apic.h"
#include "kernel/arch/descriptor_tables.h"
#include "kernel/cmdline.h"
#include "kernel/console.h"
#include "kernel/memory.h"
#include "kernel/percpu.h"
#include "kernel/threads.h"
#include "kernel/timer.h"
#include "lib/atomic.h"
#include "mm/mm.h"

extern "C" {
extern const uint8_t ap_trampoline_start[], ap_trampoline_end[], ap_trampoline_params[];
extern const uint8_t ap_trampoline_gdt_offset[], ap_trampoline_protected_offset[],
    ap_trampoline_long_offset[];
// Filled by the BSP before it sends the start-up IPIs; read by ap_trampoline.S's ap_long_mode.
uint64_t ap_stack_by_apic_id[256];
[[noreturn]] void ap_main(uint32_t apic_id);
}

namespace blimp::smp {
namespace {

// One AP's start-up. The state is the only thing an AP writes that another CPU reads; each
// transition out of Starting is a compare-and-swap, so the BSP giving up and a late AP coming up
// cannot both win:
//
//   Listed --BSP: stack allocated, INIT-SIPI-SIPI sent--> Starting
//   Starting --AP: CAS, it is running its C++ entry--> Announcing --AP: line printed--> Online
//   Starting --BSP: CAS after the timeout--> GaveUp     (an AP arriving later parks silently)
//   Listed --BSP: no memory for its stacks / APIC ID out of xAPIC reach--> Failed
//   Starting --BSP: CAS, the local APIC did not send an INIT or SIPI--> Failed
enum class ApState : uint8_t { Listed, Starting, Announcing, Online, GaveUp, Failed };

// The 32 KiB an AP gets from the page allocator (order 3), never freed: an AP the BSP gave up
// on may still arrive and use it.
constexpr unsigned kApBlockOrder = 3;
struct ApBlock {
  arch::CpuTables tables;
  alignas(4096) uint8_t nmi_stack[4096];
  uint8_t fault_stack[8192];
  uint8_t stack[16384];
};
static_assert(sizeof(ApBlock) == (kPageSize << kApBlockOrder));

struct Cpu {
  uint32_t apic_id = 0;
  ApBlock* block = nullptr;
  Atomic<ApState> state{ApState::Listed};
};

// The trampoline's parameter block (ap_trampoline.S, after tramp_gdt): far pointers are m16:32.
struct [[gnu::packed]] TrampolineParams {
  uint16_t gdt_limit;
  uint32_t gdt_base;
  uint16_t pad0;
  uint32_t protected_entry;
  uint16_t protected_selector;
  uint16_t pad1;
  uint32_t long_entry;
  uint16_t long_selector;
  uint16_t pad2;
  uint32_t cr3;
};

// SDM vol. 3A, 9.4.4.1: 10 ms after INIT, 200 us after each SIPI. An AP's own time to reach its
// C++ entry is bounded generously: under TCG on a busy host a vCPU thread may wait for a core.
constexpr uint64_t kInitDelayNs = 10'000'000, kSipiDelayNs = 200'000;
constexpr uint64_t kApTimeoutNs = 5'000'000'000;

static_assert(percpu::kMaxCpus == acpi::MadtCpus::kMax);
Cpu g_cpus[acpi::MadtCpus::kMax];
size_t g_cpu_count = 1;
size_t g_online = 1;
size_t g_test_late = 0;  // smp.test_late=N; 0: none (CPU 0 is the BSP)

void spin_ns(uint64_t ns) {
  const uint64_t end = timer::now_ns() + ns;
  while (timer::now_ns() < end) cpu_relax();
}

// A page below 1 MiB for the trampoline (a start-up IPI can only point there, and not into
// 0xa0000-0xbffff: SDM vol. 3A, 11.6.1). The memory manager never uses the first MiB, so any
// usable page there is ours; 0x8000 first, the conventional spot, else the first that fits. The
// page is never given back: an AP that comes up late still runs from it.
ErrorOr<PhysAddr> trampoline_page(const BootInfo& boot) {
  auto usable = [&](PhysAddr page) {
    if (boot.rsdp >= page && boot.rsdp < page + kPageSize) return false;
    for (size_t i = 0; i < boot.ram_count; i++) {
      if (page >= boot.ram[i].base && page + kPageSize <= boot.ram[i].end()) return true;
    }
    return false;
  };
  if (usable(0x8000)) return PhysAddr{0x8000};
  for (PhysAddr page = 0x1000; page < 0x9f000; page += kPageSize) {
    if (usable(page)) return page;
  }
  return Error::NotFound;
}

void install_trampoline(PhysAddr page) {
  auto* dst = phys_to_virt<uint8_t>(page);
  const size_t size = ap_trampoline_end - ap_trampoline_start;
  memcpy(dst, ap_trampoline_start, size);
  auto* params =
      reinterpret_cast<TrampolineParams*>(dst + (ap_trampoline_params - ap_trampoline_start));
  params->gdt_base = uint32_t(page + reinterpret_cast<uint64_t>(ap_trampoline_gdt_offset));
  params->protected_entry =
      uint32_t(page + reinterpret_cast<uint64_t>(ap_trampoline_protected_offset));
  params->long_entry = uint32_t(page + reinterpret_cast<uint64_t>(ap_trampoline_long_offset));
  uint64_t cr3;
  asm volatile("mov %%cr3, %0" : "=r"(cr3));
  params->cr3 = uint32_t(cr3);
}

// INIT, 10 ms, SIPI, 200 us, SIPI. False if the local APIC refused one (reported).
bool send_init_sipi_sipi(Cpu& cpu, size_t index, uint8_t vector) {
  // Once Starting, the AP may be running: giving up is a compare-and-swap it can win.
  auto ipi_failed = [&](const char* what) {
    ApState expected = ApState::Starting;
    if (!cpu.state.compare_exchange(expected, ApState::Failed)) return false;
    kprintf("smp: cpu %zu (apic id %u): %s\n", index, cpu.apic_id, what);
    return true;
  };
  if (arch::apic::send_init(cpu.apic_id).is_error() && ipi_failed("INIT IPI not accepted"))
    return false;
  spin_ns(kInitDelayNs);
  auto came_up = [&] {
    ApState s = cpu.state.load(MemoryOrder::Acquire);
    return s == ApState::Announcing || s == ApState::Online;
  };
  for (int sipi = 0; sipi < 2 && !came_up(); sipi++) {
    // The SDM sends two; the second is ignored by an AP already running (only the
    // wait-for-SIPI state accepts one).
    if (arch::apic::send_startup(cpu.apic_id, vector).is_error() &&
        ipi_failed("start-up IPI not accepted"))
      return false;
    spin_ns(kSipiDelayNs);
  }
  return true;
}

// Starts g_cpus[index] and waits for it, bounded. Returns whether it came online; every other
// outcome has been reported.
bool start_ap(size_t index, uint8_t vector) {
  Cpu& cpu = g_cpus[index];
  auto fail = [&](const char* what) {
    cpu.state.store(ApState::Failed);
    kprintf("smp: cpu %zu (apic id %u): %s\n", index, cpu.apic_id, what);
    return false;
  };
  if (cpu.apic_id >= 0xff) return fail("APIC ID beyond xAPIC reach (x2APIC is not supported)");
  auto block = mm::pages().alloc_pages(kApBlockOrder);
  if (block.is_error()) return fail("no memory for its stacks");
  cpu.block = phys_to_virt<ApBlock>(block.value());
  ap_stack_by_apic_id[cpu.apic_id] =
      reinterpret_cast<uint64_t>(cpu.block->stack + sizeof cpu.block->stack);
  cpu.state.store(ApState::Starting, MemoryOrder::Release);

  // smp.test_late=N (tests only): CPU N is started only after the BSP has given up on it, so
  // that the timeout report and a late AP's silent parking can be seen on any hypervisor.
  const bool late = index == g_test_late;
  if (!late && !send_init_sipi_sipi(cpu, index, vector)) return false;

  uint64_t deadline = timer::now_ns() + kApTimeoutNs;
  for (;;) {
    ApState s = cpu.state.load(MemoryOrder::Acquire);
    if (s == ApState::Online) return true;
    if (timer::now_ns() >= deadline) {
      ApState expected = ApState::Starting;
      if (cpu.state.compare_exchange(expected, ApState::GaveUp)) {
        kprintf("smp: cpu %zu (apic id %u) did not come up within %lu ms; left out\n", index,
                cpu.apic_id, kApTimeoutNs / 1000000);
        if (late) send_init_sipi_sipi(cpu, index, vector);  // it must now park, silently
        return false;
      }
      if (expected == ApState::Online) return true;
      // Announcing: it is printing its line (the console lock is bounded), wait once more.
      if (s == ApState::Announcing && timer::now_ns() >= deadline + kApTimeoutNs) {
        kprintf("smp: cpu %zu (apic id %u) started but did not finish announcing itself\n", index,
                cpu.apic_id);
        return false;
      }
    }
    cpu_relax();
  }
}

}  // namespace

void start(const BootInfo& boot) {
  // Where other CPUs send the BSP its wake-ups (deferred work, joins).
  percpu::block(0).apic_id = arch::apic::local_id();
  g_cpus[0].apic_id = percpu::block(0).apic_id;
  char value[16];
  if (cmdline::get("smp", value, sizeof value)) {
    if (strcmp(value, "off") == 0) {
      kprintf("smp: smp=off: only cpu 0\n");
      return;
    }
    kprintf("smp: smp=%s ignored (smp=off is the only setting)\n", value);
  }
  unsigned long long late = 0;
  if (cmdline::get_u64("smp.test_late", late)) g_test_late = size_t(late);
  const uint32_t bsp_apic_id = arch::apic::local_id();
  const acpi::SdtHeader* madt = acpi::find_table("APIC");
  if (!madt) {
    kprintf("smp: no ACPI MADT (no ACPI?): only cpu 0\n");
    return;
  }
  const char* why = "";
  auto parsed = acpi::parse_madt_cpus(madt, madt->length, bsp_apic_id, why);
  if (parsed.is_error()) {
    kprintf("smp: cannot use the MADT (%s: %s): only cpu 0\n", error_name(parsed.error()), why);
    return;
  }
  const acpi::MadtCpus& list = parsed.value();
  for (size_t i = 0; i < list.count; i++) g_cpus[i].apic_id = list.cpus[i].apic_id;
  g_cpus[0].state.store(ApState::Online);
  g_cpu_count = list.count;
  if (list.count > 1) {
    auto page = trampoline_page(boot);
    if (page.is_error()) {
      kprintf("smp: no free page below 1 MiB for the AP trampoline: only cpu 0\n");
      g_cpu_count = 1;
    } else if (size_t(ap_trampoline_end - ap_trampoline_start) > kPageSize) {
      kprintf("smp: the AP trampoline does not fit in a page: only cpu 0\n");
      g_cpu_count = 1;
    } else {
      install_trampoline(page.value());
      console::share_between_cpus();
      const uint8_t vector = uint8_t(page.value() >> 12);
      for (size_t i = 1; i < g_cpu_count; i++) {
        if (start_ap(i, vector)) g_online++;
      }
    }
  }
  if (list.not_enabled)
    kprintf("smp: %zu of %zu CPUs online (%zu more listed but not enabled)\n", g_online, list.count,
            list.not_enabled);
  else
    kprintf("smp: %zu of %zu CPUs online\n", g_online, list.count);
}

size_t online_count() { return g_online; }
size_t cpu_count() { return g_cpu_count; }
bool is_online(size_t index) {
  if (index == 0) return true;
  return index < g_cpu_count && g_cpus[index].state.load(MemoryOrder::Acquire) == ApState::Online;
}
uint32_t apic_id(size_t index) { return g_cpus[index].apic_id; }

}  // namespace blimp::smp

// An AP's C++ entry, on its own stack (ap_trampoline.S), interrupts off.
extern "C" [[noreturn]] void ap_main(uint32_t apic_id) {
  using namespace blimp;
  using namespace blimp::smp;
  size_t index = 0;
  for (size_t i = 1; i < g_cpu_count; i++) {
    if (g_cpus[i].apic_id == apic_id) index = i;
  }
  if (index != 0) {
    Cpu& cpu = g_cpus[index];
    ApBlock& b = *cpu.block;
    arch::load_cpu_tables(b.tables,
                          reinterpret_cast<uint64_t>(b.fault_stack + sizeof b.fault_stack),
                          reinterpret_cast<uint64_t>(b.nmi_stack + sizeof b.nmi_stack));
    percpu::init_ap(index, apic_id);
    arch::apic::init_ap();
    ApState expected = ApState::Starting;
    if (cpu.state.compare_exchange(expected, ApState::Announcing, MemoryOrder::AcqRel)) {
      kprintf("smp: cpu %zu (apic id %u) online\n", index, apic_id);
      cpu.state.store(ApState::Online, MemoryOrder::Release);
      threads::idle_loop();
    }
  }
  // Not asked to start, or the BSP gave up on it: parked for good. No interrupts (IF clear, and
  // nobody sends it any: it is not online); only an NMI or INIT could move it, and the hlt loop
  // takes it back after an NMI.
  for (;;) asm volatile("cli; hlt" ::: "memory");
}
