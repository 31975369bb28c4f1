// Enlightened page sharing, guest side (docs/sharing.md).
//
// The guest knows which of its pages are stable and likely shared: the kernel image's read-only
// pages (text, rodata) and data an app seals (seal.h). It hashes them with XXH3-64 and sends
// SEAL hints, in batches of up to 4096 entries with runs of identical pages merged, to the patched
// virtio-balloon device (spec section 5.4), which marks the hinted runs MADV_MERGEABLE so that
// the host's KSM scans only those. Hints are advice: KSM compares full page contents before it
// merges, and breaks sharing (copy on write) on any write.
//
// Kernel command line: sharing=off|vm|all (default all):
//   off  no hint ever leaves the guest; seal()/unseal() keep their bookkeeping only. With
//        -machine mem-merge=off the host then never makes a page of this VM mergeable.
//   vm   only pages whose content occurs at least twice in this VM are hinted (a hash table of
//        the hashes seen, twin_table.h), so the host can merge them with each other. The host
//        side must do its part: hangar's ShareScope::WithinVm. KSM itself is host-wide, so a
//        hinted page may still merge with an identical page another VM hinted.
//   all  every candidate is hinted; the host decides what is worth scanning (hangar's
//        ShareScope::AcrossVms filter narrows it to hashes with a twin in another VM). Also
//        hints, as WRITABLE merge candidates, the kernel's .data/.bss and the page allocator's
//        metadata: identical across VMs but written at run time, so never sealed
//        (sharing.candidates=off leaves them out).
//
// CPUs: the BSP only. seal()/unseal() send hints through the balloon (a device: the BSP's,
// kernel/threads.h), and the registry and batch have no lock (one app context, and a nested
// call from the balloon's work returns Busy: seal.h). A thread on an AP must not call them.
#pragma once

#include <cstdint>
#include <cstring>

namespace blimp::mm {
class DeviceChannel;
}

namespace blimp::mm::sharing {

enum class Mode : uint8_t { Off, Vm, All };

inline const char* mode_name(Mode m) {
  return m == Mode::Off ? "off" : m == Mode::Vm ? "vm" : "all";
}
inline bool parse_mode(const char* text, Mode& out) {
  if (strcmp(text, "off") == 0)
    out = Mode::Off;
  else if (strcmp(text, "vm") == 0)
    out = Mode::Vm;
  else if (strcmp(text, "all") == 0)
    out = Mode::All;
  else
    return false;
  return true;
}

struct Stats {
  Mode mode;
  bool device;               // the balloon negotiated share hints
  uint64_t kernel_pages;     // read-only kernel image pages (hinted when hints are on)
  uint64_t sealed_pages;     // pages sealed now (seal() minus unseal())
  uint64_t sealed_total;     // pages ever sealed
  uint64_t unsealed_total;   // pages ever unsealed
  uint64_t hashed_pages;     // pages hashed
  uint64_t hash_ns;          // time spent hashing
  uint64_t hint_requests;    // SEAL requests answered
  uint64_t hint_entries;     // SEAL entries sent (after run merging)
  uint64_t hint_pages;       // pages covered by them
  uint64_t hint_zero_pages;  // of which zero pages
  uint64_t hint_rejected;    // entries the device rejected
  uint64_t hint_dropped;     // pages not hinted (device limit reached, request failed, wedged)
  uint64_t twin_skipped;     // sharing=vm: pages not hinted because unique in this VM
  uint64_t unseal_requests;
  uint64_t unseal_entries;
  bool limit_reached;        // the device answered ENOSPC: hints stopped
  uint64_t candidate_pages;  // merge candidates hinted WRITABLE (kernel .data/.bss, metadata)
  bool wedged;               // a request timed out: hints stopped until the device is reset
};

// Reads sharing= from the command line and, when `channel` (mm/device_channel.h: the balloon,
// which kernel_main hands in) offers share hints, hints the kernel image's read-only pages.
// Called once by kernel_main after drivers::init(), from thread context (it waits for the
// device); later calls do nothing.
void init(DeviceChannel* channel);
bool initialized();
Mode mode();
Stats stats();
// One line: "PREFIX: mode=... kernel=... sealed=... hints: ...".
void print_stats(const char* prefix);

}  // namespace blimp::mm::sharing
