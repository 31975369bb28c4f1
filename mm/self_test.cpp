#include "mm/self_test.h"

#include "kernel/console.h"

namespace blimp::mm {

namespace {

uint64_t pattern(uint64_t addr) { return addr * 0x9e3779b97f4a7c15ull ^ 0x5a5a5a5a5a5a5a5aull; }

// The blocks under test are chained through their own first word, so the test needs no memory
// beyond what it tests; the rest of each block carries the pattern.
struct Block {
  PhysAddr next;
  uint64_t order;
};

}  // namespace

SelfTestResult self_test(PageAllocator& pa, uint64_t max_bytes) {
  SelfTestResult r = {true, 0, 0, 0};
  uint64_t free_before = pa.free_pages_count();
  PhysAddr head = 0;
  // Largest blocks first, then whatever smaller ones are left, so every order is exercised.
  for (int o = kMaxOrder; o >= 0; --o) {
    while (r.bytes_tested + bytes_of_order(o) <= max_bytes) {
      auto a = pa.alloc_pages(static_cast<unsigned>(o), Owner::Kernel, kAllocNoReclaim);
      if (a.is_error()) break;
      auto* w = phys_to_virt<uint64_t>(a.value());
      uint64_t words = bytes_of_order(o) / 8;
      for (uint64_t i = 2; i < words; ++i) w[i] = pattern(a.value() + i * 8);
      auto* b = phys_to_virt<Block>(a.value());
      b->next = head;
      b->order = static_cast<uint64_t>(o);
      head = a.value();
      r.bytes_tested += bytes_of_order(o);
      ++r.blocks;
    }
  }
  while (head) {
    auto* b = phys_to_virt<Block>(head);
    PhysAddr next = b->next;
    unsigned o = static_cast<unsigned>(b->order);
    auto* w = phys_to_virt<uint64_t>(head);
    uint64_t words = bytes_of_order(o) / 8;
    for (uint64_t i = 2; i < words; ++i) {
      if (w[i] != pattern(head + i * 8)) {
        if (r.bad_words++ < 8)
          kprintf("mm self-test: %#llx reads %#llx\n", (unsigned long long)(head + i * 8),
                  (unsigned long long)w[i]);
      }
    }
    pa.free_pages(head, o);
    head = next;
  }
  if (r.bad_words) r.ok = false;
  if (pa.free_pages_count() != free_before) {
    kprintf("mm self-test: %llu free pages before, %llu after\n", (unsigned long long)free_before,
            (unsigned long long)pa.free_pages_count());
    r.ok = false;
  }
  if (!pa.check_invariants()) r.ok = false;
  kprintf("mm self-test: %llu MiB in %llu blocks: %s\n", (unsigned long long)(r.bytes_tested >> 20),
          (unsigned long long)r.blocks, r.ok ? "ok" : "FAILED");
  return r;
}

}  // namespace blimp::mm
