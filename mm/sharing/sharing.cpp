// Guest side of enlightened page sharing: see sharing.h and seal.h.
#include "mm/sharing/sharing.h"

#include <cinttypes>

#include "kernel/cmdline.h"
#include "kernel/console.h"
#include "kernel/memory.h"
#include "kernel/timer.h"
#include "lib/per_boot.h"
#include "mm/device_channel.h"
#include "mm/mm.h"
#include "mm/sharing/hint_batch.h"
#include "mm/sharing/seal.h"
#include "mm/sharing/seal_registry.h"
#include "mm/sharing/twin_table.h"
#include "mm/sharing/xxh3.h"

extern "C" char __kernel_start[];
extern "C" char __init_array_start[];  // start of .data: everything below it is text/rodata
extern "C" char __kernel_end[];        // end of .bss, page aligned
extern "C" char boot_stack_top[];      // kernel/boot/entry.S: the BSP's stack, growing down
extern "C" char __per_boot_end[];      // kernel/linker.ld: end of lib/per_boot.h's pages

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

// A run of page frames.
struct PfnRun {
  uint64_t pfn;
  uint64_t pages;
};

// Merge candidates (WRITABLE hints, spec section 5.4): kernel memory that is byte-identical
// across VMs booted from the same blimp.elf with the same memory size and a similar history, but
// that the kernel keeps writing, so it cannot be sealed. Blind KSM merges these; without them the
// targeted saving stayed 5% below blind's (bench/sharing/RESULTS.md). Hinted once at init and
// again after a device reset, never unsealed: the host's copy on write handles every write.
//
// No zero-filled page may be marked among the candidates. The candidates are the lowest guest
// addresses, so they are the first nodes of KSM's unstable tree in every pass, near its root. In
// host memory backed by transparent huge pages, KSM splits a huge page to merge a page of it,
// and Linux maps the zero-filled subpages of a split huge page to the shared zero page; a tree
// node whose page went that way is no longer anonymous, and Linux 6.18's unstable-tree walk
// gives up every lookup that reaches it (mm/ksm.c unstable_tree_search_insert). One such node
// near the root lost half the data set's merges of the second pass, the same half in every VM
// (docs/experiments.md, "Why pass 3"). So zero-filled candidates are left out: the same splits
// map them to the zero page anyway, in blind KSM as here. (QEMU, which marks the pages between
// two hinted runs up to hint-merge-gap apart, leaves gaps with a zero page unmarked for the same
// reason: host/qemu patch 0015.)
constexpr size_t kMaxCandidateRuns = 5;
// Candidate pages left out as zero-filled, by their index over the candidate runs (the first
// 16384: 2 KiB of bitmap covers the metadata of a 4 GiB VM): seal() looks at them again, since
// an app's setup fills some of them (its allocations' metadata, driver state) identically in
// every VM, and blind KSM merges those.
constexpr size_t kZeroTrackPages = 16384;

struct State {
  bool initialized = false;
  bool candidates_on = true;  // sharing.candidates=off: seal()ed pages and the kernel image only
  PfnRun candidates[kMaxCandidateRuns] = {};
  size_t candidate_runs = 0;
  bool busy = false;
  Mode mode = Mode::All;
  bool device = false;
  uint64_t kernel_first_pfn = 0;
  uint64_t kernel_pages = 0;
  uint64_t sealed_total = 0;
  uint64_t unsealed_total = 0;
  uint64_t hashed_pages = 0;
  uint64_t twin_skipped = 0;
  uint64_t zero_candidates = 0;  // zero-filled candidate pages left out (see above)
  uint64_t zero_left[kZeroTrackPages / 64] = {};  // which of them (bit = candidate page index)
  uint64_t zero_hash = 0;
  SealRegistry registry;
  TwinTable twins;
  SealBatcher seals{g_seal_buf, kBatch, send_to_device, nullptr};
  UnsealBatcher unseals{g_unseal_buf, kBatch, send_to_device, nullptr};
};
State g;
// Time spent hashing: the one field of the module's state that differs between VMs booted alike,
// so it lives with the other per-boot values, not on State's first page (lib/per_boot.h).
BLIMP_PER_BOOT uint64_t g_hash_ns = 0;

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
    if (!g.seals.accepting()) {  // ENOSPC, or a device that timed out: no point hashing the rest
      g.seals.add(pfn + i, 0, false, static_cast<uint32_t>(pages - i));  // counted as dropped
      break;
    }
    hint_page(pfn + i);
  }
  g.seals.flush();
  g_hash_ns += timer::now_ns() - t0;
}

// Hashes each page of a candidate run and queues it as a WRITABLE hint; zero-filled pages are
// left out (see kMaxCandidateRuns).
void hint_candidates() {
  uint64_t t0 = timer::now_ns();
  g.zero_candidates = 0;
  for (auto& w : g.zero_left) w = 0;
  uint64_t index = 0;
  for (size_t r = 0; r < g.candidate_runs; r++) {
    for (uint64_t i = 0; i < g.candidates[r].pages; i++, index++) {
      uint64_t pfn = g.candidates[r].pfn + i;
      if (!g.seals.accepting()) {  // ENOSPC, or a device that timed out: stop hashing
        uint32_t rest = static_cast<uint32_t>(g.candidates[r].pages - i);
        g.seals.add_candidate(pfn, 0, false, rest);  // counted as dropped
        break;
      }
      const void* page = phys_to_virt<const void>(pfn << kPageShift);
      uint64_t hash = page_hash(page);
      g.hashed_pages++;
      if (hash == g.zero_hash && page_is_zero(page)) {
        g.zero_candidates++;
        if (index < kZeroTrackPages) g.zero_left[index / 64] |= uint64_t{1} << (index % 64);
        continue;
      }
      g.seals.add_candidate(pfn, hash, false);
    }
  }
  g.seals.flush();
  g_hash_ns += timer::now_ns() - t0;
}

// Hints the candidates hint_candidates() left out as zero-filled that are not any more.
void hint_filled_candidates() {
  uint64_t t0 = timer::now_ns();
  uint64_t index = 0;
  for (size_t r = 0; r < g.candidate_runs && index < kZeroTrackPages; r++) {
    for (uint64_t i = 0; i < g.candidates[r].pages && index < kZeroTrackPages; i++, index++) {
      uint64_t bit = uint64_t{1} << (index % 64);
      if (!(g.zero_left[index / 64] & bit) || !g.seals.accepting()) continue;
      uint64_t pfn = g.candidates[r].pfn + i;
      const void* page = phys_to_virt<const void>(pfn << kPageShift);
      if (page_is_zero(page)) continue;
      g.zero_left[index / 64] &= ~bit;
      g.zero_candidates--;
      g.hashed_pages++;
      g.seals.add_candidate(pfn, page_hash(page), false);
    }
  }
  g.seals.flush();
  g_hash_ns += timer::now_ns() - t0;
}

void add_candidate_run(uint64_t pfn, uint64_t pages) {
  if (pages && g.candidate_runs < kMaxCandidateRuns)
    g.candidates[g.candidate_runs++] = {pfn, pages};
}

// The kernel's writable image (.data, .bss: boot page tables, static buffers, the hint buffers
// themselves), the page allocator's metadata array (one PageInfo per page: the entries of
// blocks with the same allocation history are identical across VMs) and the RAM below 1 MiB the
// kernel leaves to the firmware (BIOS data, the firmware's tables and shadowed code), minus the
// legacy VGA window [0xa0000, 0xc0000), which is not RAM, and page 0 (the real-mode IVT, which
// the null guard leaves unmapped). These are the pages blind KSM merged and the hints did not
// cover, found by a pagemap scan of blind VMs (docs/experiments.md, experiment 4). Left out of the
// image: the boot stack's top page, which the idle loop and interrupts keep writing, and the
// per-boot values right above it (lib/per_boot.h). Both change every second and differ in every VM,
// so no mode can merge them.
void find_candidates() {
  add_candidate_run(1, (0xa0000 >> kPageShift) - 1);
  add_candidate_run(0xc0000 >> kPageShift, (0x100000 - 0xc0000) >> kPageShift);
  uint64_t data = virt_to_phys(__init_array_start) & ~(kPageSize - 1);
  uint64_t end = (virt_to_phys(__kernel_end) + kPageSize - 1) & ~(kPageSize - 1);
  uint64_t live = virt_to_phys(boot_stack_top) - kPageSize;  // kernel/linker.ld: then per-boot
  uint64_t live_end = virt_to_phys(__per_boot_end);
  if (live > data) add_candidate_run(data >> kPageShift, (live - data) >> kPageShift);
  if (end > live_end) add_candidate_run(live_end >> kPageShift, (end - live_end) >> kPageShift);
  add_candidate_run(pages().metadata_first_pfn(), pages().metadata_pages());
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
  g.unseals.device_reset();
  if (g.mode == Mode::Vm) g.twins.clear();  // else every page would count as its own twin
  hint_range(g.kernel_first_pfn, g.kernel_pages);
  hint_candidates();
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
  if (cmdline::get("sharing.candidates", buf, sizeof buf) && strcmp(buf, "off") == 0)
    g.candidates_on = false;
  DeviceChannel* b = channel;
  g.device = b && b->has_share_hints();
  uint64_t start = virt_to_phys(__kernel_start);
  uint64_t end = virt_to_phys(__init_array_start) & ~(kPageSize - 1);
  g.kernel_first_pfn = start >> kPageShift;
  g.kernel_pages = end > start ? (end - start) >> kPageShift : 0;
  if (g.mode == Mode::Vm) setup_twin_table();
  // Candidates are cross-VM content by nature; sharing=vm asks for within-VM twins only.
  if (g.candidates_on && g.mode == Mode::All) find_candidates();
  if (!hints_on()) {
    kprintf("sharing: mode=%s, %s: no hints are sent (seal() keeps bookkeeping only)\n",
            mode_name(g.mode), g.device ? "device has share-hints" : "no share-hints device");
    return;
  }
  hint_range(g.kernel_first_pfn, g.kernel_pages);
  const uint64_t kernel_hinted = g.seals.stats().pages;
  hint_candidates();
  if (b->add_reset_listener(resend_hints, nullptr).is_error())
    kprintf("sharing: no room for a balloon reset listener: hints are not re-sent after a reset\n");
  const BatchStats& s = g.seals.stats();
  kprintf("sharing: mode=%s, kernel image %#" PRIx64 "-%#" PRIx64 ": %" PRIu64
          " read-only pages hashed, %" PRIu64 " hinted; merge candidates (WRITABLE): %" PRIu64
          " pages in %zu runs, %" PRIu64 " zero-filled left out; %" PRIu64 " entries (status %u)\n",
          mode_name(g.mode), start, end, g.kernel_pages, kernel_hinted, s.writable_pages,
          g.candidate_runs, g.zero_candidates, s.entries, s.last_status);
  for (size_t r = 0; r < g.candidate_runs; r++)
    kprintf("sharing: candidate run %#" PRIx64 "-%#" PRIx64 " (%" PRIu64 " pages)\n",
            g.candidates[r].pfn << kPageShift,
            (g.candidates[r].pfn + g.candidates[r].pages) << kPageShift, g.candidates[r].pages);
}

bool initialized() { return g.initialized; }
Mode mode() { return g.mode; }

Stats stats() {
  const BatchStats& s = g.seals.stats();
  const BatchStats& u = g.unseals.stats();
  return Stats{g.mode,         g.device,         g.kernel_pages,   g.registry.sealed_pages(),
               g.sealed_total, g.unsealed_total, g.hashed_pages,   g_hash_ns,
               s.requests,     s.entries,        s.pages,          s.zero_pages,
               s.rejected,     s.dropped_pages,  g.twin_skipped,   u.requests,
               u.entries,      s.limit_reached,  s.writable_pages, s.wedged || u.wedged};
}

void print_stats(const char* prefix) {
  Stats s = stats();
  kprintf("%s: mode=%s device=%s kernel=%" PRIu64 " candidates=%" PRIu64 " sealed=%" PRIu64
          " hashed=%" PRIu64 " hash_ms=%" PRIu64 " hints: requests=%" PRIu64 " entries=%" PRIu64
          " pages=%" PRIu64 " zero=%" PRIu64 " rejected=%" PRIu64 " dropped=%" PRIu64
          " twin_skipped=%" PRIu64 " unseal_requests=%" PRIu64 " unseal_entries=%" PRIu64 "%s%s\n",
          prefix, mode_name(s.mode), s.device ? "yes" : "no", s.kernel_pages, s.candidate_pages,
          s.sealed_pages, s.hashed_pages, s.hash_ns / 1000000, s.hint_requests, s.hint_entries,
          s.hint_pages, s.hint_zero_pages, s.hint_rejected, s.hint_dropped, s.twin_skipped,
          s.unseal_requests, s.unseal_entries, s.limit_reached ? " LIMIT-REACHED" : "",
          s.wedged ? " WEDGED" : "");
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
  if (hints_on()) {
    hint_range(first, n);
    hint_filled_candidates();
  }
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
