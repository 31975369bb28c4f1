// Guest side of enlightened page sharing: see sharing.h and seal.h.
#include "mm/sharing/sharing.h"

#include <cinttypes>

#include "kernel/cmdline.h"
#include "kernel/console.h"
#include "kernel/memory.h"
#include "kernel/timer.h"
#include "mm/device_channel.h"
#include "mm/mm.h"
#include "mm/sharing/hint_batch.h"
#include "mm/sharing/seal.h"
#include "mm/sharing/seal_registry.h"
#include "mm/sharing/twin_table.h"
#include "mm/sharing/xxh3.h"

extern "C" char __kernel_start[];
extern "C" char __init_array_start[];  // start of .data: everything below it is text/rodata

namespace blimp::mm::sharing {

namespace {

constexpr uint32_t kBatch = wire::kBlimpMaxEntries;

// Request buffers: in the kernel's bss (identity mapped, so the device reads them directly).
alignas(4096) BlimpSealEntry g_seal_buf[kBatch];
alignas(4096) BlimpUnsealEntry g_unseal_buf[kBatch];

// The device channel init() was handed (the balloon), or nullptr.
DeviceChannel* g_channel = nullptr;

ErrorOr<BlimpResponse> send_to_device(uint16_t type, const void* entries, uint32_t count,
                                      size_t entry_size, void*) {
  DeviceChannel* ch = g_channel;
  if (!ch || !ch->has_share_hints()) return Error::Unsupported;
  return ch->send(type, entries, count, entry_size);
}

struct State {
  bool initialized = false;
  bool busy = false;
  Mode mode = Mode::All;
  bool device = false;
  uint64_t kernel_first_pfn = 0;
  uint64_t kernel_pages = 0;
  uint64_t sealed_total = 0;
  uint64_t unsealed_total = 0;
  uint64_t hashed_pages = 0;
  uint64_t hash_ns = 0;
  uint64_t twin_skipped = 0;
  uint64_t zero_hash = 0;
  SealRegistry registry;
  TwinTable twins;
  SealBatcher seals{g_seal_buf, kBatch, send_to_device, nullptr};
  UnsealBatcher unseals{g_unseal_buf, kBatch, send_to_device, nullptr};
};
State g;

bool hints_on() { return g.device && g.mode != Mode::Off; }

bool stable_pfn(uint64_t pfn) {
  return (pfn >= g.kernel_first_pfn && pfn < g.kernel_first_pfn + g.kernel_pages) ||
         g.registry.contains(pfn);
}

// Hashes one stable page and queues its hint according to the mode.
void hint_page(uint64_t pfn) {
  const void* page = phys_to_virt<const void>(pfn << kPageShift);
  uint64_t hash = page_hash(page);
  g.hashed_pages++;
  bool zero = hash == g.zero_hash && page_is_zero(page);
  if (g.mode == Mode::All) {
    g.seals.add(pfn, hash, zero);
    return;
  }
  uint64_t first = 0;
  switch (g.twins.add(hash, pfn, first)) {
    case TwinTable::Seen::Second:
      if (stable_pfn(first)) g.seals.add(first, hash, zero);
      g.seals.add(pfn, hash, zero);
      break;
    case TwinTable::Seen::More: g.seals.add(pfn, hash, zero); break;
    case TwinTable::Seen::First:
    case TwinTable::Seen::Full: g.twin_skipped++; break;
  }
}

void hint_range(uint64_t pfn, uint64_t pages) {
  uint64_t t0 = timer::now_ns();
  for (uint64_t i = 0; i < pages; i++) {
    if (g.seals.stats().limit_reached) {  // the device said ENOSPC: no point hashing the rest
      g.seals.add(pfn + i, 0, false, static_cast<uint32_t>(pages - i));  // counted as dropped
      break;
    }
    hint_page(pfn + i);
  }
  g.seals.flush();
  g.hash_ns += timer::now_ns() - t0;
}

void setup_twin_table() {
  // Room for a distinct hash per page of RAM at 3/4 load: capacity >= RAM pages * 4/3, but at
  // most 2^20 slots (24 MiB); beyond that, sharing=vm stops recording new hashes (Seen::Full).
  uint64_t want = pages().total_pages() * 4 / 3 + 1;
  uint64_t slots = 1;
  while (slots < want && slots < (uint64_t{1} << 20)) slots <<= 1;
  uint64_t bytes = slots * sizeof(TwinTable::Slot);
  uint64_t npages = (bytes + kPageSize - 1) / kPageSize;
  auto r = pages().alloc_run(npages, Owner::Kernel);
  if (r.is_error()) {
    kprintf("sharing: no memory for the twin table (%" PRIu64 " KiB); sharing=vm hints nothing\n",
            bytes >> 10);
    return;
  }
  g.twins.init(phys_to_virt<TwinTable::Slot>(r.value()), slots);
}

void unseal_piece(uint64_t pfn, uint64_t npages, void*) {
  g.unsealed_total += npages;
  if (hints_on()) g.unseals.add(pfn, npages);
}

// Device reset listener: a reset device forgot every hint (and unmarked the pages), so hint the
// kernel image and every sealed range again, as init() and seal() did (spec section 10). Runs
// from the balloon's work, which may have interrupted the app inside seal()/unseal(): then it
// waits for them (Retry).
ResetListenerResult resend_hints(void*) {
  if (g.busy) return ResetListenerResult::Retry;
  if (!hints_on()) return ResetListenerResult::Done;
  g.busy = true;
  const BatchStats before = g.seals.stats();
  g.seals.device_reset();
  if (g.mode == Mode::Vm) g.twins.clear();  // else every page would count as its own twin
  hint_range(g.kernel_first_pfn, g.kernel_pages);
  for (size_t i = 0; i < g.registry.range_count(); i++)
    hint_range(g.registry.range(i).pfn, g.registry.range(i).pages);
  const BatchStats& s = g.seals.stats();
  kprintf("sharing: re-sent hints after the device reset: %" PRIu64 " pages in %" PRIu64
          " entries (%" PRIu64 " sealed ranges, status %u)\n",
          s.pages - before.pages, s.entries - before.entries,
          static_cast<uint64_t>(g.registry.range_count()), s.last_status);
  g.busy = false;
  return ResetListenerResult::Done;
}

bool allocated(PhysAddr a) {
  Owner o = pages().owner_of(a);
  return o == Owner::Kernel || o == Owner::App || o == Owner::Volatile;
}

}  // namespace

void init(DeviceChannel* channel) {
  if (g.initialized) return;
  g.initialized = true;
  g_channel = channel;
  g.zero_hash = zero_page_hash();
  char buf[16];
  if (cmdline::get("sharing", buf, sizeof buf)) {
    if (!parse_mode(buf, g.mode)) {
      kprintf("sharing: unknown mode '%s' (off|vm|all): using off\n", buf);
      g.mode = Mode::Off;
    }
  }
  DeviceChannel* b = channel;
  g.device = b && b->has_share_hints();
  uint64_t start = virt_to_phys(__kernel_start);
  uint64_t end = virt_to_phys(__init_array_start) & ~(kPageSize - 1);
  g.kernel_first_pfn = start >> kPageShift;
  g.kernel_pages = end > start ? (end - start) >> kPageShift : 0;
  if (g.mode == Mode::Vm) setup_twin_table();
  if (!hints_on()) {
    kprintf("sharing: mode=%s, %s: no hints are sent (seal() keeps bookkeeping only)\n",
            mode_name(g.mode), g.device ? "device has share-hints" : "no share-hints device");
    return;
  }
  hint_range(g.kernel_first_pfn, g.kernel_pages);
  if (b->add_reset_listener(resend_hints, nullptr).is_error())
    kprintf("sharing: no room for a balloon reset listener: hints are not re-sent after a reset\n");
  const BatchStats& s = g.seals.stats();
  kprintf("sharing: mode=%s, kernel image %#" PRIx64 "-%#" PRIx64 ": %" PRIu64
          " read-only pages hashed, %" PRIu64 " hinted in %" PRIu64 " entries (status %u)\n",
          mode_name(g.mode), start, end, g.kernel_pages, s.pages, s.entries, s.last_status);
}

bool initialized() { return g.initialized; }
Mode mode() { return g.mode; }

Stats stats() {
  const BatchStats& s = g.seals.stats();
  const BatchStats& u = g.unseals.stats();
  return Stats{g.mode,         g.device,         g.kernel_pages, g.registry.sealed_pages(),
               g.sealed_total, g.unsealed_total, g.hashed_pages, g.hash_ns,
               s.requests,     s.entries,        s.pages,        s.zero_pages,
               s.rejected,     s.dropped_pages,  g.twin_skipped, u.requests,
               u.entries,      s.limit_reached};
}

void print_stats(const char* prefix) {
  Stats s = stats();
  kprintf("%s: mode=%s device=%s kernel=%" PRIu64 " sealed=%" PRIu64 " hashed=%" PRIu64
          " hash_ms=%" PRIu64 " hints: requests=%" PRIu64 " entries=%" PRIu64 " pages=%" PRIu64
          " zero=%" PRIu64 " rejected=%" PRIu64 " dropped=%" PRIu64 " twin_skipped=%" PRIu64
          " unseal_requests=%" PRIu64 " unseal_entries=%" PRIu64 "%s\n",
          prefix, mode_name(s.mode), s.device ? "yes" : "no", s.kernel_pages, s.sealed_pages,
          s.hashed_pages, s.hash_ns / 1000000, s.hint_requests, s.hint_entries, s.hint_pages,
          s.hint_zero_pages, s.hint_rejected, s.hint_dropped, s.twin_skipped, s.unseal_requests,
          s.unseal_entries, s.limit_reached ? " LIMIT-REACHED" : "");
}

ErrorOr<uint64_t> seal(const void* ptr, size_t bytes) {
  // kernel_main runs init(channel) at boot, before any app: this call only matters in a kernel
  // that did not, and then sets sharing up without a device (bookkeeping only).
  init(nullptr);
  uint64_t a = virt_to_phys(ptr);
  uint64_t first = (a + kPageSize - 1) >> kPageShift;
  uint64_t last = (a + bytes) >> kPageShift;  // exclusive
  if (bytes == 0 || last <= first) return uint64_t{0};
  if (g.busy) return Error::Busy;
  if (!allocated(first << kPageShift) || !allocated((last - 1) << kPageShift))
    return Error::InvalidArgument;
  g.busy = true;
  uint64_t n = last - first;
  auto r = g.registry.insert(first, n);
  if (r.is_error()) {
    g.busy = false;
    return r.error();
  }
  g.sealed_total += n;
  if (hints_on()) hint_range(first, n);
  g.busy = false;
  return n;
}

ErrorOr<uint64_t> unseal(const void* ptr, size_t bytes) {
  if (!g.initialized || bytes == 0) return uint64_t{0};
  if (g.busy) return Error::Busy;
  g.busy = true;
  uint64_t a = virt_to_phys(ptr);
  uint64_t first = a >> kPageShift;
  uint64_t last = (a + bytes + kPageSize - 1) >> kPageShift;
  auto r = g.registry.remove(first, last - first, unseal_piece, nullptr);
  if (!r.is_error()) g.unseals.flush();
  g.busy = false;
  return r;
}

bool is_sealed(const void* ptr) {
  return g.initialized && g.registry.contains(virt_to_phys(ptr) >> kPageShift);
}

}  // namespace blimp::mm::sharing
