#include "mm/page_states/page_states.h"

#include "lib/irq.h"

// bool blimp_pstate_cas(volatile uint8_t* b, uint8_t expected, uint8_t desired): see guest_cas in
// protocol.h. One translation block: no branch before the ret, and 64-byte aligned so that the
// 32 bytes of code never straddle a page.
#if defined(__x86_64__)
asm(R"(
  .pushsection .text
  .globl blimp_pstate_cas
  .type blimp_pstate_cas, @function
  .balign 64
blimp_pstate_cas:
  movzbl (%rdi), %eax              # v = *b
  leaq blimp_pstate_cas_dummy(%rip), %rcx
  cmpb %sil, %al                   # v == expected ?
  cmovneq %rcx, %rdi               # no: the cmpxchg goes to the dummy byte
  sete %r8b
  lock cmpxchgb %dl, (%rdi)        # al = v
  sete %al
  andb %r8b, %al
  ret
  .size blimp_pstate_cas, . - blimp_pstate_cas
  .local blimp_pstate_cas_dummy
  .comm blimp_pstate_cas_dummy, 64, 64
  .popsection
)");
#endif

namespace blimp::mm::page_states {

const char* state_name(uint8_t v) {
  switch (v) {
    case kStable: return "STABLE";
    case kUnused: return "UNUSED";
    case kVolatile: return "VOLATILE";
    case kDiscardingUnused: return "DISCARDING_UNUSED";
    case kDiscardingVolatile: return "DISCARDING_VOLATILE";
    case kDiscardedUnused: return "DISCARDED_UNUSED";
    case kDiscardedVolatile: return "DISCARDED_VOLATILE";
    default: return "INVALID";
  }
}

void PageStateArray::attach(uint8_t* bytes, uint64_t base_pfn, uint64_t npages) {
  bytes_ = bytes;
  base_pfn_ = base_pfn;
  npages_ = npages;
}

void PageStateArray::sync_and_hook(PageAllocator& pa) {
  // Not registered yet: plain stores. Pages the allocator does not manage (holes, its metadata,
  // the image) stay STABLE.
  for (uint64_t i = 0; i < npages_; ++i) {
    PhysAddr a = (base_pfn_ + i) << kPageShift;
    bytes_[i] = pa.contains(a) ? state_for_owner(pa.owner_of(a)) : uint8_t{kStable};
  }
  memory_barrier();
  pa.set_state_hook(hook, this);
}

void PageStateArray::unhook(PageAllocator& pa) { pa.set_state_hook(nullptr, nullptr); }

void PageStateArray::attach_ages(wire::BlimpAgeHeader* header, uint32_t* stamps) {
  if (!header || !stamps) {
    stamps_ = nullptr;
    ages_ = nullptr;
    return;
  }
  for (uint64_t i = 0; i < npages_; ++i) stamps[i] = header->clock_s;
  ages_ = header;
  stamps_ = stamps;
}

void PageStateArray::set_clock(uint32_t clock_s) {
  if (ages_) __atomic_store_n(&ages_->clock_s, clock_s, __ATOMIC_RELAXED);
}

bool PageStateArray::hook(PhysAddr first_page, size_t count, Owner new_owner, void* ctx) {
  return static_cast<PageStateArray*>(ctx)->transition(first_page, count, new_owner);
}

bool PageStateArray::transition(PhysAddr first_page, size_t count, Owner new_owner) {
  ++transitions_;
  const uint8_t target = state_for_owner(new_owner);
  bool all_zero = count > 0;
  for (size_t i = 0; i < count; ++i) {
    volatile uint8_t* b = byte_of(first_page + i * kPageSize);
    if (!b) {
      all_zero = false;
      continue;
    }
    if (target == kUnused) {
      // Stamped only when the page becomes free now: one that stays free (reported, isolated)
      // has been idle since it was freed.
      uint8_t v = load_state(b);
      if (v != kUnused && v != kDiscardedUnused && v != kDiscardingUnused)
        stamp(uint64_t(b - bytes_));
      make_unused(b, &waits_locked_);
      all_zero = false;  // only consulted when pages leave the free state
      continue;
    }
    uint8_t was = make_stable(b, &waits_locked_);
    if (!is_discarded(was)) all_zero = false;
    if (target == kVolatile) {
      stamp(uint64_t(b - bytes_));
      release_stable(b, kVolatile);
    }
  }
  if (all_zero) known_zero_ += count;
  return all_zero;
}

bool PageStateArray::pin_range(PhysAddr first_page, uint64_t count, uint64_t* lost) {
  uint64_t spins = 0, gone = 0;
  for (uint64_t i = 0; i < count; ++i) {
    volatile uint8_t* b = byte_of(first_page + i * kPageSize);
    if (b && !pin(b, &spins)) ++gone;
  }
  pins_.fetch_add(count, MemoryOrder::Relaxed);
  if (gone) pins_lost_.fetch_add(gone, MemoryOrder::Relaxed);
  if (spins) waits_.fetch_add(spins, MemoryOrder::Relaxed);
  if (lost) *lost = gone;
  return gone == 0;
}

void PageStateArray::unpin_range(PhysAddr first_page, uint64_t count) {
  for (uint64_t i = 0; i < count; ++i) {
    volatile uint8_t* b = byte_of(first_page + i * kPageSize);
    if (!b) continue;
    stamp(uint64_t(b - bytes_));  // last used now: the host discards the longest unused first
    unpin(b);
  }
}

namespace {
constinit PageStateArray g_array;
PageStateArray* g_active = nullptr;
}  // namespace

PageStateArray* active() { return __atomic_load_n(&g_active, __ATOMIC_ACQUIRE); }
Stats stats() {
  PageStateArray* a = active();
  return a ? a->stats() : Stats{};
}
namespace detail {
PageStateArray& guest_array() { return g_array; }
void set_active(PageStateArray* a) { __atomic_store_n(&g_active, a, __ATOMIC_RELEASE); }
}  // namespace detail

Stats PageStateArray::stats() const {
  Stats s{};
  s.array_pages = npages_;
  s.transitions = transitions_;
  s.known_zero_pages = known_zero_;
  s.discard_waits = waits_locked_ + waits_.load(MemoryOrder::Relaxed);
  s.pins = pins_.load(MemoryOrder::Relaxed);
  s.pins_lost = pins_lost_.load(MemoryOrder::Relaxed);
  return s;
}

}  // namespace blimp::mm::page_states
