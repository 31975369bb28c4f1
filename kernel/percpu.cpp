#include "kernel/percpu.h"

#include "kernel/arch/cpu.h"

namespace blimp::percpu {
namespace {

constexpr uint32_t kMsrGsBase = 0xc0000101;  // IA32_GS_BASE (SDM vol. 4, table 2-2)

// Constant-initialised: the BSP's block is usable before global constructors run.
constinit Cpu g_cpus[kMaxCpus];

void load(size_t index, uint32_t apic_id) {
  Cpu& c = g_cpus[index];
  c.self = &c;
  c.index = uint32_t(index);
  c.apic_id = apic_id;
  arch::wrmsr(kMsrGsBase, reinterpret_cast<uint64_t>(&c));
}

}  // namespace

void init_bsp() { load(0, 0); }
void init_ap(size_t index, uint32_t apic_id) { load(index, apic_id); }
Cpu& block(size_t index) { return g_cpus[index]; }

}  // namespace blimp::percpu
