// The split virtqueue against a fake device living in host memory.
#include "drivers/virtio/virtqueue.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "drivers/log.h"
#include "fake_ring.h"

namespace blimp::virtio::test {
namespace {

struct Notifies {
  int count = 0;
  int last_queue = -1;
  static void fn(void* ctx, uint16_t q) {
    auto* n = static_cast<Notifies*>(ctx);
    ++n->count;
    n->last_queue = q;
  }
};

void* tok(uintptr_t v) { return reinterpret_cast<void*>(v); }

class VirtqueueTest : public ::testing::Test {
 protected:
  void make(uint16_t size, bool event_idx = false, uint16_t max_indirect = 0, uint16_t index = 0) {
    Virtqueue::Options o;
    o.size = size;
    o.event_idx = event_idx;
    o.max_indirect = max_indirect;
    ASSERT_FALSE(vq.init(index, o, dma, &Notifies::fn, &notifies).is_error());
    dev.emplace(vq);
    drivers::clear_log();
  }
  void TearDown() override {
    while (vq.detach_unused()) {
    }
    vq.destroy();
    EXPECT_EQ(dma.live, 0);
  }
  std::pair<void*, uint32_t> pop() {
    void* t = nullptr;
    uint32_t len = 0;
    auto r = vq.pop_used(t, len);
    EXPECT_FALSE(r.is_error());
    EXPECT_TRUE(!r.is_error() && r.value());
    return {t, len};
  }
  HostDma dma;
  Notifies notifies;
  Virtqueue vq;
  std::optional<FakeRing> dev;
};

TEST_F(VirtqueueTest, RejectsBadSizes) {
  Virtqueue::Options o;
  for (uint16_t s : {0, 3, 100, 40000}) {
    o.size = s;
    EXPECT_EQ(vq.init(0, o, dma, nullptr, nullptr).error(), Error::InvalidArgument) << s;
  }
  EXPECT_EQ(dma.live, 0);
  o.size = 32768;
  EXPECT_FALSE(vq.init(0, o, dma, nullptr, nullptr).is_error());
}

TEST_F(VirtqueueTest, LayoutIsLegacyCompatible) {
  make(128);
  EXPECT_EQ(vq.desc_phys() % 4096, 0u);
  EXPECT_EQ(vq.avail_phys(), vq.desc_phys() + 128 * 16);
  EXPECT_EQ(vq.used_phys() % 4096, 0u);  // 2.7.2 legacy: used ring on a 4096 boundary
  EXPECT_GE(vq.used_phys(), vq.avail_phys() + 6 + 2 * 128);
}

TEST_F(VirtqueueTest, SingleBufferRoundTrip) {
  make(8, false, 0, 3);
  ASSERT_FALSE(vq.add_out(0x1000, 64, tok(1)).is_error());
  EXPECT_EQ(notifies.count, 0);  // nothing before kick
  EXPECT_TRUE(vq.kick());
  EXPECT_EQ(notifies.count, 1);
  EXPECT_EQ(notifies.last_queue, 3);
  EXPECT_FALSE(vq.kick());  // nothing new
  auto c = dev->pop_avail();
  ASSERT_TRUE(c);
  ASSERT_EQ(c->segs.size(), 1u);
  EXPECT_EQ(c->segs[0].addr, 0x1000u);
  EXPECT_EQ(c->segs[0].len, 64u);
  EXPECT_FALSE(c->segs[0].write);
  EXPECT_FALSE(vq.has_used());
  EXPECT_TRUE(dev->push_used(c->head, 0));
  EXPECT_TRUE(vq.has_used());
  auto [t, len] = pop();
  EXPECT_EQ(t, tok(1));
  EXPECT_EQ(len, 0u);
  void* t2;
  uint32_t l2;
  auto r = vq.pop_used(t2, l2);
  ASSERT_FALSE(r.is_error());
  EXPECT_FALSE(r.value());
  EXPECT_EQ(vq.num_free(), 8);
  EXPECT_EQ(vq.in_flight(), 0);
}

TEST_F(VirtqueueTest, SixteenBitIndicesWrapAround) {
  make(4);
  // 70000 buffers through a 4-entry queue: avail->idx and used->idx wrap past 65535, and ring
  // slots are reused thousands of times. Keep up to 3 in flight to mix positions.
  uint64_t next = 1, expect = 1;
  int notified_before = 0;
  while (expect <= 70000) {
    while (vq.in_flight() < 3 && next <= 70000) {
      ASSERT_FALSE(vq.add_in(next * 16, 16, tok(next)).is_error());
      ++next;
    }
    vq.kick();
    while (auto c = dev->pop_avail()) {
      ASSERT_EQ(c->segs[0].addr % 16, 0u);
      dev->push_used(c->head, 8);
    }
    void* t;
    uint32_t len;
    for (;;) {
      auto r = vq.pop_used(t, len);
      ASSERT_FALSE(r.is_error());
      if (!r.value()) break;
      ASSERT_EQ(t, tok(expect));
      ASSERT_EQ(len, 8u);
      ++expect;
    }
    notified_before = notifies.count;
  }
  EXPECT_GT(notified_before, 0);
  EXPECT_EQ(dev->used_idx(), uint16_t(70000));
  EXPECT_EQ(vq.num_free(), 4);
}

TEST_F(VirtqueueTest, OutOfOrderCompletions) {
  make(4);
  std::vector<Chain> chains;
  for (uintptr_t i = 1; i <= 4; ++i) ASSERT_FALSE(vq.add_in(i * 0x1000, 512, tok(i)).is_error());
  vq.kick();
  while (auto c = dev->pop_avail()) chains.push_back(*c);
  ASSERT_EQ(chains.size(), 4u);
  EXPECT_EQ(vq.add_in(0x9000, 1, tok(9)).error(), Error::Busy);
  for (int i : {2, 0, 3, 1}) dev->push_used(chains[i].head, 100 + i);
  std::vector<uintptr_t> got;
  void* t;
  uint32_t len;
  while (vq.pop_used(t, len).value()) {
    got.push_back(reinterpret_cast<uintptr_t>(t));
    EXPECT_EQ(len, 100u + (reinterpret_cast<uintptr_t>(t) - 1));
  }
  EXPECT_EQ(got, (std::vector<uintptr_t>{3, 1, 4, 2}));
  EXPECT_EQ(vq.num_free(), 4);
  // Free list survived the shuffle: the whole queue can be filled again.
  for (uintptr_t i = 1; i <= 4; ++i) ASSERT_FALSE(vq.add_out(i * 0x1000, 8, tok(i)).is_error());
}

TEST_F(VirtqueueTest, DirectChainsUseOneDescriptorPerSegment) {
  make(8);
  Segment out[] = {{0x1000, 16}, {0x2000, 32}};
  Segment in[] = {{0x3000, 100}};
  ASSERT_FALSE(vq.add(out, in, tok(7)).is_error());
  EXPECT_EQ(vq.num_free(), 5);
  vq.kick();
  auto c = dev->pop_avail();
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->indirect);
  ASSERT_EQ(c->segs.size(), 3u);
  EXPECT_EQ(c->segs[0].addr, 0x1000u);
  EXPECT_FALSE(c->segs[0].write);
  EXPECT_EQ(c->segs[1].len, 32u);
  EXPECT_FALSE(c->segs[1].write);
  EXPECT_TRUE(c->segs[2].write);
  EXPECT_EQ(c->writable(), 100u);
  dev->push_used(c->head, 100);
  auto [t, len] = pop();
  EXPECT_EQ(t, tok(7));
  EXPECT_EQ(len, 100u);
  EXPECT_EQ(vq.num_free(), 8);
}

TEST_F(VirtqueueTest, IndirectChains) {
  make(4, false, 16);
  std::vector<Segment> out, in;
  for (int i = 0; i < 10; ++i) out.push_back({0x10000u + i * 0x1000u, 4096});
  for (int i = 0; i < 3; ++i) in.push_back({0x80000u + i * 0x100u, 0x100});
  // Four 13-segment buffers in a 4-entry queue: only possible through indirect tables.
  for (uintptr_t k = 1; k <= 4; ++k) ASSERT_FALSE(vq.add(out, in, tok(k)).is_error());
  EXPECT_EQ(vq.num_free(), 0);
  vq.kick();
  std::vector<Chain> chains;
  while (auto c = dev->pop_avail()) chains.push_back(*c);
  ASSERT_EQ(chains.size(), 4u);
  for (auto& c : chains) {
    EXPECT_TRUE(c.indirect);
    ASSERT_EQ(c.segs.size(), 13u);
    EXPECT_EQ(c.segs[9].addr, 0x19000u);
    EXPECT_FALSE(c.segs[9].write);
    EXPECT_TRUE(c.segs[10].write);
    EXPECT_EQ(c.writable(), 0x300u);
  }
  // Each ring descriptor carries only the INDIRECT flag (2.7.5.3.1).
  for (int i = 0; i < 4; ++i) {
    auto* d = reinterpret_cast<VirtqDesc*>(vq.desc_phys()) + i;
    EXPECT_EQ(d->flags, desc_flag::kIndirect);
    EXPECT_EQ(d->len, 13 * 16u);
  }
  dev->push_used(chains[1].head, 0x300);
  dev->push_used(chains[3].head, 0x301);  // one byte more than writable
  auto [t, len] = pop();
  EXPECT_EQ(t, tok(2));
  EXPECT_EQ(len, 0x300u);
  void* t2;
  uint32_t l2;
  EXPECT_EQ(vq.pop_used(t2, l2).error(), Error::DeviceError);
  EXPECT_NE(std::string(drivers::last_log()).find("only 768 writable"), std::string::npos);
}

TEST_F(VirtqueueTest, IndirectFallsBackToDirectForLongChains) {
  make(8, false, 4);
  std::vector<Segment> out(6, Segment{0x1000, 8});
  ASSERT_FALSE(vq.add(out, {}, tok(1)).is_error());  // 6 > max_indirect: direct
  EXPECT_EQ(vq.num_free(), 2);
  ASSERT_FALSE(vq.add_out(0x1000, 8, tok(2)).is_error());  // single: direct
  EXPECT_EQ(vq.num_free(), 1);
  Segment two[] = {{0x1000, 8}, {0x2000, 8}};
  ASSERT_FALSE(vq.add(two, {}, tok(3)).is_error());  // indirect: one descriptor
  EXPECT_EQ(vq.num_free(), 0);
  vq.kick();
  auto a = dev->pop_avail(), b = dev->pop_avail(), c = dev->pop_avail();
  ASSERT_TRUE(a && b && c);
  EXPECT_FALSE(a->indirect);
  EXPECT_EQ(a->segs.size(), 6u);
  EXPECT_TRUE(c->indirect);
  EXPECT_EQ(c->segs.size(), 2u);
}

TEST_F(VirtqueueTest, QueueFullAndArgumentChecks) {
  make(4);
  Segment three[] = {{1, 1}, {2, 1}, {3, 1}};
  Segment five[] = {{1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 1}};
  EXPECT_EQ(vq.add(five, {}, tok(1)).error(), Error::InvalidArgument);  // can never fit
  EXPECT_EQ(vq.add_out(0x1000, 0, tok(1)).error(), Error::InvalidArgument);
  EXPECT_EQ(vq.add_out(0x1000, 8, nullptr).error(), Error::InvalidArgument);
  EXPECT_EQ(vq.add({}, {}, tok(1)).error(), Error::InvalidArgument);
  ASSERT_FALSE(vq.add(three, {}, tok(1)).is_error());
  EXPECT_EQ(vq.add(three, {}, tok(2)).error(), Error::Busy);
  ASSERT_FALSE(vq.add_out(0x1000, 8, tok(3)).is_error());
  EXPECT_EQ(vq.add_out(0x1000, 8, tok(4)).error(), Error::Busy);
  EXPECT_EQ(vq.in_flight(), 2);
}

TEST_F(VirtqueueTest, UsedIdOutOfRangeBreaksQueue) {
  make(8);
  ASSERT_FALSE(vq.add_in(0x1000, 64, tok(1)).is_error());
  vq.kick();
  dev->pop_avail();
  dev->push_used(8, 0);
  void* t;
  uint32_t len;
  EXPECT_EQ(vq.pop_used(t, len).error(), Error::DeviceError);
  EXPECT_TRUE(vq.broken());
  EXPECT_NE(std::string(drivers::last_log()).find("used id 8, out of range"), std::string::npos);
  EXPECT_EQ(vq.add_out(0x2000, 8, tok(2)).error(), Error::DeviceError);
  EXPECT_FALSE(vq.kick());
  EXPECT_EQ(drivers::log_count(), 1u);  // reported once, not per call
  // Recovery after a device reset: the in-flight buffer comes back to its owner.
  EXPECT_EQ(vq.detach_unused(), tok(1));
  EXPECT_EQ(vq.detach_unused(), nullptr);
  vq.reset_ring();
  EXPECT_FALSE(vq.broken());
  FakeRing fresh(vq);
  ASSERT_FALSE(vq.add_out(0x2000, 8, tok(2)).is_error());
  auto c = fresh.pop_avail();
  ASSERT_TRUE(c);
  fresh.push_used(c->head, 0);
  EXPECT_EQ(pop().first, tok(2));
}

TEST_F(VirtqueueTest, UsedIdNotInFlightRejected) {
  make(8);
  Segment two[] = {{0x1000, 8}, {0x2000, 8}};
  ASSERT_FALSE(vq.add(two, {}, tok(1)).is_error());
  vq.kick();
  auto c = dev->pop_avail();
  dev->push_used(uint32_t(c->head + 1), 0);  // the chain's second descriptor, not a head
  void* t;
  uint32_t len;
  EXPECT_EQ(vq.pop_used(t, len).error(), Error::DeviceError);
  EXPECT_NE(std::string(drivers::last_log()).find("not in flight"), std::string::npos);
}

TEST_F(VirtqueueTest, DoubleCompletionRejected) {
  make(8);
  ASSERT_FALSE(vq.add_out(0x1000, 8, tok(1)).is_error());
  ASSERT_FALSE(vq.add_out(0x1000, 8, tok(2)).is_error());
  vq.kick();
  auto c = dev->pop_avail();
  dev->push_used(c->head, 0);
  dev->push_used(c->head, 0);  // same id again
  EXPECT_EQ(pop().first, tok(1));
  void* t;
  uint32_t len;
  EXPECT_EQ(vq.pop_used(t, len).error(), Error::DeviceError);
  EXPECT_EQ(vq.detach_unused(), tok(2));  // the other one is still recoverable
}

TEST_F(VirtqueueTest, WriteIntoReadOnlyBufferRejected) {
  make(8);
  ASSERT_FALSE(vq.add_out(0x1000, 4096, tok(1)).is_error());
  vq.kick();
  dev->push_used(dev->pop_avail()->head, 1);
  void* t;
  uint32_t len;
  EXPECT_EQ(vq.pop_used(t, len).error(), Error::DeviceError);
}

TEST_F(VirtqueueTest, UsedIndexRunningAheadRejected) {
  make(8);
  ASSERT_FALSE(vq.add_out(0x1000, 8, tok(1)).is_error());
  vq.kick();
  dev->set_used_idx(5);
  void* t;
  uint32_t len;
  EXPECT_EQ(vq.pop_used(t, len).error(), Error::DeviceError);
  EXPECT_NE(std::string(drivers::last_log()).find("ahead"), std::string::npos);
}

TEST_F(VirtqueueTest, NoNotifyFlagSuppressesKick) {
  make(8);
  dev->set_no_notify(true);
  ASSERT_FALSE(vq.add_out(0x1000, 8, tok(1)).is_error());
  EXPECT_FALSE(vq.kick());
  EXPECT_EQ(notifies.count, 0);
  dev->set_no_notify(false);
  ASSERT_FALSE(vq.add_out(0x1000, 8, tok(2)).is_error());
  EXPECT_TRUE(vq.kick());
}

TEST_F(VirtqueueTest, InterruptSuppressionWithoutEventIdx) {
  make(8);
  for (uintptr_t i = 1; i <= 3; ++i) ASSERT_FALSE(vq.add_out(0x1000, 8, tok(i)).is_error());
  vq.kick();
  auto a = dev->pop_avail(), b = dev->pop_avail(), c = dev->pop_avail();
  vq.disable_interrupts();
  EXPECT_FALSE(dev->push_used(a->head, 0));  // device sees NO_INTERRUPT
  EXPECT_FALSE(vq.enable_interrupts());      // one used meanwhile: caller must drain
  EXPECT_EQ(pop().first, tok(1));
  EXPECT_TRUE(vq.enable_interrupts());
  EXPECT_TRUE(dev->push_used(b->head, 0));
  EXPECT_TRUE(dev->push_used(c->head, 0));
}

TEST_F(VirtqueueTest, EventIdxSuppressesNotifications) {
  make(16, true);
  dev->pin_avail_event(0);  // device: "notify me when entry 0 is made available"
  ASSERT_FALSE(vq.add_out(0x1000, 8, tok(1)).is_error());
  EXPECT_TRUE(vq.kick());  // 0 -> 1 crosses 0
  ASSERT_FALSE(vq.add_out(0x1000, 8, tok(2)).is_error());
  EXPECT_FALSE(vq.kick());  // 1 -> 2 does not cross 0 again
  dev->pin_avail_event(4);
  for (uintptr_t i = 3; i <= 4; ++i) ASSERT_FALSE(vq.add_out(0x1000, 8, tok(i)).is_error());
  EXPECT_FALSE(vq.kick());  // 2 -> 4: entry 4 not yet available
  ASSERT_FALSE(vq.add_out(0x1000, 8, tok(5)).is_error());
  EXPECT_TRUE(vq.kick());  // 4 -> 5 crosses 4
  EXPECT_EQ(notifies.count, 2);
}

TEST_F(VirtqueueTest, EventIdxSuppressesInterrupts) {
  make(16, true);
  for (uintptr_t i = 1; i <= 6; ++i) ASSERT_FALSE(vq.add_out(0x1000, 8, tok(i)).is_error());
  vq.kick();
  std::vector<Chain> cs;
  while (auto c = dev->pop_avail()) cs.push_back(*c);
  EXPECT_EQ(dev->used_event(), 0);
  EXPECT_TRUE(dev->push_used(cs[0].head, 0));   // first completion interrupts
  EXPECT_FALSE(dev->push_used(cs[1].head, 0));  // driver has not caught up: no more
  EXPECT_EQ(pop().first, tok(1));
  EXPECT_EQ(pop().first, tok(2));
  EXPECT_EQ(dev->used_event(), 2);  // "interrupt me when entry 2 is used"
  EXPECT_TRUE(dev->push_used(cs[2].head, 0));
  EXPECT_EQ(pop().first, tok(3));
  vq.disable_interrupts();
  EXPECT_FALSE(dev->push_used(cs[3].head, 0));
  EXPECT_FALSE(dev->push_used(cs[4].head, 0));
  EXPECT_EQ(pop().first, tok(4));  // popping while disabled does not re-arm
  EXPECT_FALSE(dev->push_used(cs[5].head, 0));
  EXPECT_FALSE(vq.enable_interrupts());  // two waiting
  auto n = vq.drain([](void*, uint32_t) {});
  ASSERT_FALSE(n.is_error());
  EXPECT_EQ(n.value(), 2u);
  EXPECT_TRUE(vq.enable_interrupts());
}

TEST_F(VirtqueueTest, CallbackRunsOnInterrupt) {
  make(8);
  struct Ctx {
    int calls = 0;
    std::vector<void*> tokens;
  } ctx;
  vq.set_callback(
      [](Virtqueue& q, void* p) {
        auto* c = static_cast<Ctx*>(p);
        ++c->calls;
        (void)q.drain([&](void* t, uint32_t) { c->tokens.push_back(t); });
      },
      &ctx);
  ASSERT_FALSE(vq.add_out(0x1000, 8, tok(1)).is_error());
  vq.kick();
  dev->push_used(dev->pop_avail()->head, 0);
  vq.interrupt();
  EXPECT_EQ(ctx.calls, 1);
  ASSERT_EQ(ctx.tokens.size(), 1u);
  EXPECT_EQ(ctx.tokens[0], tok(1));
}

TEST_F(VirtqueueTest, IndirectAllocationFailureFallsBack) {
  dma.fail_next = false;
  Virtqueue::Options o;
  o.size = 8;
  o.max_indirect = 8;
  // ring and slots succeed, indirect tables fail: queue still works, direct only.
  struct FailThird : HostDma {
    int n = 0;
    ErrorOr<DmaRegion> alloc(size_t s) override {
      if (++n == 3) return Error::NoMemory;
      return HostDma::alloc(s);
    }
  } d3;
  Virtqueue q;
  ASSERT_FALSE(q.init(0, o, d3, nullptr, nullptr).is_error());
  EXPECT_EQ(q.max_indirect(), 0);
  Segment two[] = {{0x1000, 8}, {0x2000, 8}};
  ASSERT_FALSE(q.add(two, {}, tok(1)).is_error());
  EXPECT_EQ(q.num_free(), 6);
  q.detach_unused();
  q.destroy();
  EXPECT_EQ(d3.live, 0);
}

}  // namespace
}  // namespace blimp::virtio::test

namespace blimp::virtio::test {
namespace {

// A device running on its own thread, as a real one runs on the host's: the rings' ordering
// (fences around avail->idx and used->idx) is what keeps tokens and lengths intact.
TEST(VirtqueueThreads, ConcurrentDeviceKeepsEveryBufferIntact) {
  HostDma dma;
  Virtqueue vq;
  Virtqueue::Options o;
  o.size = 16;
  o.event_idx = true;
  o.max_indirect = 4;
  std::atomic<int> kicks{0};
  ASSERT_FALSE(
      vq.init(
            0, o, dma, [](void* c, uint16_t) { ++*static_cast<std::atomic<int>*>(c); }, &kicks)
          .is_error());
  constexpr uint64_t kBuffers = 30000;
  std::atomic<bool> stop{false};
  std::thread device([&] {
    FakeRing ring(vq);
    while (!stop.load()) {
      auto c = ring.pop_avail();
      if (!c) continue;
      // The token's number is encoded in the first segment's address; echo it as the length.
      uint32_t len = uint32_t(c->segs[0].addr >> 12) & 0xff;
      if (c->writable() < len) len = c->writable();
      ring.push_used(c->head, len);
    }
  });
  uint64_t next = 1, done = 0;
  while (done < kBuffers) {
    while (next <= kBuffers) {
      Segment out[] = {{next << 12, 8}};
      Segment in[] = {{0x100000, 0x100}, {0x200000, 0x10}};
      size_t nin = next % 3 == 0 ? 2 : next % 3 == 1 ? 1 : 0;
      auto r = vq.add(out, std::span<const Segment>(in, nin), reinterpret_cast<void*>(next));
      if (r.is_error()) {
        ASSERT_EQ(r.error(), Error::Busy);
        break;
      }
      ++next;
    }
    vq.kick();
    void* t;
    uint32_t len;
    for (;;) {
      auto r = vq.pop_used(t, len);
      ASSERT_FALSE(r.is_error());
      if (!r.value()) break;
      auto id = reinterpret_cast<uint64_t>(t);
      uint32_t writable = id % 3 == 0 ? 0x110 : id % 3 == 1 ? 0x100 : 0;
      uint32_t want = uint32_t(id & 0xff) < writable ? uint32_t(id & 0xff) : writable;
      ASSERT_EQ(len, want) << id;
      ++done;
    }
  }
  stop = true;
  device.join();
  EXPECT_EQ(vq.in_flight(), 0);
  EXPECT_EQ(vq.num_free(), 16);
  vq.destroy();
}

}  // namespace
}  // namespace blimp::virtio::test
