// Feature negotiation, the status handshake, queue setup, config access, interrupt dispatch and
// reset handling: virtio::Device over the real transports, against fake register files.
#include "drivers/virtio/device.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "drivers/log.h"
#include "drivers/virtio/mmio_transport.h"
#include "drivers/virtio/pci_transport.h"
#include "fake_ring.h"
#include "fake_transport.h"

namespace blimp::virtio::test {
namespace {

using feature::bit;

constexpr uint64_t kBalloonStats = bit(1);
constexpr uint64_t kBalloonOom = bit(2);
constexpr uint64_t kDeviceBit40 = bit(41);  // a device-specific high bit

bool contains(const std::string& hay, const char* needle) {
  return hay.find(needle) != std::string::npos;
}

struct QueueLog {
  int calls = 0;
  std::vector<void*> tokens;
  static void cb(Virtqueue& vq, void* ctx) {
    auto* l = static_cast<QueueLog*>(ctx);
    ++l->calls;
    (void)vq.drain([&](void* t, uint32_t) { l->tokens.push_back(t); });
  }
};

class MmioDeviceTest : public ::testing::TestWithParam<uint32_t> {
 protected:
  MmioDeviceTest() : regs(state, GetParam()), transport(regs, 0xfeb00e00, 12), dev(transport, dma) {
    state.features = bit(feature::kVersion1) | bit(feature::kEventIdx) |
                     bit(feature::kIndirectDesc) | kBalloonStats | bit(3) |
                     bit(feature::kRingPacked);
    if (!modern()) state.features &= 0xffffffffull;
    drivers::clear_log();
  }
  bool modern() const { return GetParam() == 2; }
  FakeDeviceState state;
  FakeMmio regs;
  MmioTransport transport;
  HostDma dma;
  Device dev;
};

TEST_P(MmioDeviceTest, InitReadsIdentity) {
  ASSERT_FALSE(transport.init().is_error());
  EXPECT_EQ(transport.device_id(), 5);
  EXPECT_EQ(transport.modern(), modern());
  EXPECT_STREQ(transport.location(), "mmio 0xfeb00e00");
}

TEST_P(MmioDeviceTest, EmptySlotAndBadMagic) {
  state.device_id = 0;
  EXPECT_EQ(transport.init().error(), Error::NotFound);
  regs.magic = 0x12345678;
  EXPECT_EQ(transport.init().error(), Error::DeviceError);
  EXPECT_TRUE(contains(drivers::last_log(), "bad magic"));
}

TEST_P(MmioDeviceTest, NegotiatesDeviceAndCoreFeatures) {
  ASSERT_FALSE(transport.init().is_error());
  auto r = dev.negotiate(kBalloonStats | kBalloonOom | bit(feature::kRingPacked));
  ASSERT_FALSE(r.is_error());
  // Offered & wanted device bits, plus the ring features the core implements; never bits the
  // driver asked for in the transport range (RING_PACKED), never unoffered ones (bit 2).
  uint64_t expect = kBalloonStats | bit(feature::kEventIdx) | bit(feature::kIndirectDesc);
  if (modern()) expect |= bit(feature::kVersion1);
  EXPECT_EQ(r.value(), expect);
  EXPECT_EQ(state.driver_features, expect);
  EXPECT_TRUE(dev.has_feature(feature::kEventIdx));
  std::vector<uint8_t> want = {0, status::kAcknowledge, status::kAcknowledge | status::kDriver};
  if (modern()) want.push_back(status::kAcknowledge | status::kDriver | status::kFeaturesOk);
  EXPECT_EQ(state.status_writes, want);
}

TEST_P(MmioDeviceTest, FullBringUpAndInterruptDrivenCompletion) {
  ASSERT_FALSE(transport.init().is_error());
  ASSERT_FALSE(dev.negotiate(kBalloonStats).is_error());
  QueueLog inflate_log, deflate_log;
  state.q[0].num_max = 1024;
  state.q[1].num_max = 100;  // not a power of two: we use 64
  auto q0 = dev.add_queue(0, &QueueLog::cb, &inflate_log);
  auto q1 = dev.add_queue(1, &QueueLog::cb, &deflate_log, QueueOptions{.max_size = 512});
  ASSERT_FALSE(q0.is_error());
  ASSERT_FALSE(q1.is_error());
  EXPECT_EQ(q0.value()->size(), 256);  // default cap
  EXPECT_EQ(q1.value()->size(), 64);
  EXPECT_EQ(dev.add_queue(5, nullptr, nullptr).error(), Error::NotFound);  // num_queues = 3
  EXPECT_EQ(dev.add_queue(0, nullptr, nullptr).error(), Error::Busy);
  ASSERT_FALSE(dev.start().is_error());
  EXPECT_TRUE(state.status & status::kDriverOk);
  EXPECT_EQ(state.q[0].num, 256u);
  if (modern()) {
    EXPECT_EQ(state.q[0].ready, 1u);
    EXPECT_EQ(state.q[0].desc, q0.value()->desc_phys());
    EXPECT_EQ(state.q[0].driver, q0.value()->avail_phys());
    EXPECT_EQ(state.q[0].device, q0.value()->used_phys());
  } else {
    EXPECT_EQ(regs.guest_page_size, 4096u);
    EXPECT_EQ(state.q[1].align, 4096u);
    EXPECT_EQ(uint64_t(state.q[1].pfn) << 12, q1.value()->desc_phys());
  }
  // A buffer through queue 1, completed by the "device", delivered by an interrupt.
  Virtqueue* vq = q1.value();
  ASSERT_FALSE(vq->add_out(0x5000, 4, reinterpret_cast<void*>(0x77)).is_error());
  EXPECT_TRUE(vq->kick());
  ASSERT_EQ(state.notifies.size(), 1u);
  EXPECT_EQ(state.notifies[0], 1u);
  FakeRing ring(*vq);
  auto c = ring.pop_avail();
  ASSERT_TRUE(c);
  ring.push_used(c->head, 0);
  state.isr = kIsrQueue;
  dev.irq_shared();
  EXPECT_EQ(state.isr, 0);  // acknowledged
  EXPECT_EQ(deflate_log.calls, 1);
  ASSERT_EQ(deflate_log.tokens.size(), 1u);
  EXPECT_EQ(deflate_log.tokens[0], reinterpret_cast<void*>(0x77));
  EXPECT_EQ(inflate_log.calls, 1);  // every queue looks; nothing there
  EXPECT_TRUE(inflate_log.tokens.empty());
  char line[200];
  dev.describe(line, sizeof line);
  EXPECT_TRUE(contains(line, "queues=2 sizes=256/64")) << line;
}

TEST_P(MmioDeviceTest, ConfigChangeCallback) {
  ASSERT_FALSE(transport.init().is_error());
  ASSERT_FALSE(dev.negotiate(0).is_error());
  int changes = 0;
  dev.set_config_callback([](Device&, void* c) { ++*static_cast<int*>(c); }, &changes);
  ASSERT_FALSE(dev.start().is_error());
  state.isr = kIsrConfig;
  dev.irq_shared();
  EXPECT_EQ(changes, 1);
  dev.irq_shared();  // nothing pending: spurious, ignored
  EXPECT_EQ(changes, 1);
}

TEST_P(MmioDeviceTest, DeviceResetUnderUsIsReported) {
  ASSERT_FALSE(transport.init().is_error());
  ASSERT_FALSE(dev.negotiate(0).is_error());
  auto q = dev.add_queue(0, nullptr, nullptr);
  ASSERT_FALSE(q.is_error());
  int errors = 0;
  dev.set_error_callback([](Device&, void* c) { ++*static_cast<int*>(c); }, &errors);
  ASSERT_FALSE(dev.start().is_error());
  ASSERT_FALSE(q.value()->add_out(0x1000, 8, reinterpret_cast<void*>(1)).is_error());
  state.write_status(0);  // the device resets itself
  state.isr = kIsrConfig;
  dev.irq_shared();
  EXPECT_EQ(errors, 1);
  EXPECT_TRUE(dev.failed());
  EXPECT_TRUE(q.value()->broken());
  EXPECT_TRUE(contains(drivers::last_log(), "reset itself")) << drivers::last_log();
  EXPECT_EQ(dev.check_alive().error(), Error::DeviceError);
  EXPECT_EQ(q.value()->add_out(0x1000, 8, reinterpret_cast<void*>(2)).error(), Error::DeviceError);
  // Recovery: the in-flight buffer comes back, the handshake is redone, the queue works again.
  std::vector<void*> reclaimed;
  auto r = dev.recover(
      [](uint16_t, void* t, void* c) { static_cast<std::vector<void*>*>(c)->push_back(t); },
      &reclaimed);
  ASSERT_FALSE(r.is_error());
  ASSERT_EQ(reclaimed.size(), 1u);
  EXPECT_EQ(reclaimed[0], reinterpret_cast<void*>(1));
  EXPECT_FALSE(dev.failed());
  EXPECT_TRUE(state.status & status::kDriverOk);
  EXPECT_FALSE(q.value()->add_out(0x1000, 8, reinterpret_cast<void*>(3)).is_error());
}

TEST_P(MmioDeviceTest, NeedsResetIsReported) {
  ASSERT_FALSE(transport.init().is_error());
  ASSERT_FALSE(dev.negotiate(0).is_error());
  ASSERT_FALSE(dev.start().is_error());
  state.status |= status::kDeviceNeedsReset;
  state.isr = kIsrConfig;
  dev.irq_shared();
  EXPECT_TRUE(dev.failed());
  EXPECT_TRUE(contains(drivers::last_log(), "DEVICE_NEEDS_RESET"));
}

TEST_P(MmioDeviceTest, ConfigReadsRetryWhileTheDeviceChangesIt) {
  ASSERT_FALSE(transport.init().is_error());
  state.config[0] = 0x10;
  state.config[4] = 0xaa;
  EXPECT_EQ(dev.config_read<uint32_t>(4), 0xaau);
  state.tear_reads = 3;  // the next three reads see a generation bump and a changed byte 0
  uint32_t v = dev.config_read<uint32_t>(0);
  EXPECT_EQ(state.tear_reads, 0);
  EXPECT_EQ(v, 0x13u);  // the value after the device settled, never a torn mix
  dev.config_write<uint32_t>(8, 0x01020304);
  EXPECT_EQ(state.config[8], 0x04);
  EXPECT_EQ(state.config[11], 0x01);
  EXPECT_EQ(dev.config_read<uint64_t>(8), 0x01020304ull);
}

TEST_P(MmioDeviceTest, QueueAlreadyLiveIsNotOffered) {
  ASSERT_FALSE(transport.init().is_error());
  ASSERT_FALSE(dev.negotiate(0).is_error());
  state.q[0].ready = 1;
  state.q[0].pfn = 1;
  EXPECT_EQ(dev.add_queue(0, nullptr, nullptr).error(), Error::NotFound);
}

TEST_P(MmioDeviceTest, BogusUsedIdFromTheDeviceIsContained) {
  ASSERT_FALSE(transport.init().is_error());
  ASSERT_FALSE(dev.negotiate(0).is_error());
  QueueLog log;
  auto q = dev.add_queue(0, &QueueLog::cb, &log);
  ASSERT_FALSE(q.is_error());
  ASSERT_FALSE(dev.start().is_error());
  ASSERT_FALSE(q.value()->add_in(0x3000, 16, reinterpret_cast<void*>(5)).is_error());
  q.value()->kick();
  FakeRing ring(*q.value());
  ring.pop_avail();
  ring.push_used(4000, 16);  // id far outside the ring
  state.isr = kIsrQueue;
  dev.irq_shared();
  EXPECT_TRUE(log.tokens.empty());
  EXPECT_TRUE(q.value()->broken());
  EXPECT_TRUE(
      contains(drivers::last_log(), "virtio: balloon queue 0: device returned used id 4000"))
      << drivers::last_log();
  state.isr = kIsrQueue;
  dev.irq_shared();  // later interrupts do not touch the broken queue
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(q.value()->detach_unused(), reinterpret_cast<void*>(5));
}

INSTANTIATE_TEST_SUITE_P(Versions, MmioDeviceTest, ::testing::Values(1u, 2u),
                         [](const auto& info) { return info.param == 1 ? "Legacy" : "Modern"; });

TEST(DeviceNegotiation, ModernWithoutVersion1IsRefused) {
  FakeDeviceState state;
  FakeMmio regs(state, 2);
  MmioTransport t(regs, 0x1000, 5);
  HostDma dma;
  Device dev(t, dma);
  ASSERT_FALSE(t.init().is_error());
  state.features = kBalloonStats;
  EXPECT_EQ(dev.negotiate(kBalloonStats).error(), Error::Unsupported);
  EXPECT_TRUE(state.status & status::kFailed);
  EXPECT_TRUE(contains(drivers::last_log(), "VERSION_1"));
}

TEST(DeviceNegotiation, FeaturesOkRefused) {
  FakeDeviceState state;
  FakeMmio regs(state, 2);
  MmioTransport t(regs, 0x1000, 5);
  HostDma dma;
  Device dev(t, dma);
  ASSERT_FALSE(t.init().is_error());
  state.features = bit(feature::kVersion1) | kDeviceBit40;
  state.accept_features = false;
  EXPECT_EQ(dev.negotiate(kDeviceBit40).error(), Error::Unsupported);
  EXPECT_TRUE(state.status & status::kFailed);
}

TEST(DeviceNegotiation, HighDeviceBitsOnModern) {
  FakeDeviceState state;
  FakeMmio regs(state, 2);
  MmioTransport t(regs, 0x1000, 5);
  HostDma dma;
  Device dev(t, dma);
  ASSERT_FALSE(t.init().is_error());
  state.features = bit(feature::kVersion1) | kDeviceBit40;
  auto r = dev.negotiate(kDeviceBit40);
  ASSERT_FALSE(r.is_error());
  EXPECT_EQ(r.value(), bit(feature::kVersion1) | kDeviceBit40);
  EXPECT_EQ(state.driver_features, r.value());
}

TEST(DeviceNegotiation, CallsOutOfOrderAreRejected) {
  FakeDeviceState state;
  FakeMmio regs(state, 2);
  MmioTransport t(regs, 0x1000, 5);
  HostDma dma;
  Device dev(t, dma);
  ASSERT_FALSE(t.init().is_error());
  EXPECT_EQ(dev.add_queue(0, nullptr, nullptr).error(), Error::InvalidArgument);
  EXPECT_EQ(dev.start().error(), Error::InvalidArgument);
}

// ---- legacy PCI ----

class LegacyPciTest : public ::testing::Test {
 protected:
  LegacyPciTest() : io(state), transport(0, 3, 0, 5, io), dev(transport, dma) {
    state.features = bit(feature::kEventIdx) | kBalloonStats;
    drivers::clear_log();
  }
  FakeDeviceState state;
  FakeLegacyPci io;
  PciLegacyTransport transport;
  HostDma dma;
  Device dev;
};

TEST_F(LegacyPciTest, DeviceDictatesQueueSize) {
  EXPECT_STREQ(transport.location(), "pci 00:03.0");
  ASSERT_FALSE(dev.negotiate(kBalloonStats).is_error());
  EXPECT_EQ(dev.features(), kBalloonStats | bit(feature::kEventIdx));
  state.q[0].num_max = 128;
  auto q = dev.add_queue(0, nullptr, nullptr, QueueOptions{.max_size = 16});
  ASSERT_FALSE(q.is_error());
  EXPECT_EQ(q.value()->size(), 128);  // legacy: no size register to lower it
  ASSERT_FALSE(dev.start().is_error());
  EXPECT_EQ(uint64_t(state.q[0].pfn) << 12, q.value()->desc_phys());
  ASSERT_FALSE(q.value()->add_out(0x1000, 8, reinterpret_cast<void*>(1)).is_error());
  q.value()->kick();
  ASSERT_EQ(state.notifies.size(), 1u);
}

TEST_F(LegacyPciTest, BogusQueueSizesRejected) {
  ASSERT_FALSE(dev.negotiate(0).is_error());
  state.q[0].num_max = 96;
  EXPECT_EQ(dev.add_queue(0, nullptr, nullptr).error(), Error::DeviceError);
  EXPECT_TRUE(contains(drivers::log_history(), "not a power of two"));
  ASSERT_FALSE(dev.negotiate(0).is_error());
  state.q[1].num_max = 32768;
  EXPECT_EQ(dev.add_queue(1, nullptr, nullptr).error(), Error::DeviceError);
  EXPECT_TRUE(contains(drivers::log_history(), "larger than"));
  ASSERT_FALSE(dev.negotiate(0).is_error());
  state.q[2].num_max = 0;
  EXPECT_EQ(dev.add_queue(2, nullptr, nullptr).error(), Error::NotFound);
}

TEST_F(LegacyPciTest, ConfigMovesWithMsix) {
  state.config[0] = 0x42;
  EXPECT_EQ(dev.config_read<uint8_t>(0), 0x42);
  EXPECT_EQ(transport.config_read8(0), 0x42);
  io.msix = true;
  transport.test_set_msix(true);
  EXPECT_EQ(dev.config_read<uint8_t>(0), 0x42);  // at offset 24 now, still found
}

TEST_F(LegacyPciTest, IsrReadClears) {
  ASSERT_FALSE(dev.negotiate(0).is_error());
  int changes = 0;
  dev.set_config_callback([](Device&, void* c) { ++*static_cast<int*>(c); }, &changes);
  ASSERT_FALSE(dev.start().is_error());
  state.isr = kIsrConfig | kIsrQueue;
  dev.irq_shared();
  EXPECT_EQ(changes, 1);
  EXPECT_EQ(state.isr, 0);
}

// ---- modern PCI ----

class ModernPciTest : public ::testing::Test {
 protected:
  ModernPciTest()
      : pci((drivers::clear_log(), state)),
        transport(0, 4, 0, 5, pci.common, pci.notify, 4, 0x1000, pci.isr, &pci.device),
        dev(transport, dma) {
    state.features = bit(feature::kVersion1) | bit(feature::kIndirectDesc) | kBalloonStats;
  }
  FakeDeviceState state;
  FakeModernPci pci;
  PciModernTransport transport;
  HostDma dma;
  Device dev;
};

TEST_F(ModernPciTest, NotifyOffsetsUseTheMultiplier) {
  ASSERT_FALSE(dev.negotiate(kBalloonStats).is_error());
  EXPECT_EQ(transport.num_queues(), 3);
  state.q[0].notify_off = 0;
  state.q[1].notify_off = 5;
  auto q0 = dev.add_queue(0, nullptr, nullptr, QueueOptions{.max_size = 64, .max_indirect = 8});
  auto q1 = dev.add_queue(1, nullptr, nullptr);
  ASSERT_FALSE(q0.is_error());
  ASSERT_FALSE(q1.is_error());
  EXPECT_EQ(q0.value()->max_indirect(), 8);
  EXPECT_EQ(state.q[0].num, 0u);  // nothing written before start
  ASSERT_FALSE(dev.start().is_error());
  EXPECT_EQ(state.q[0].num, 64u);
  EXPECT_EQ(state.q[0].ready, 1u);
  EXPECT_EQ(state.q[1].desc, q1.value()->desc_phys());
  ASSERT_FALSE(q1.value()->add_out(0x1000, 8, reinterpret_cast<void*>(1)).is_error());
  q1.value()->kick();
  ASSERT_EQ(pci.notify.offsets.size(), 1u);
  EXPECT_EQ(pci.notify.offsets[0], 20u);  // 5 * multiplier 4
  EXPECT_EQ(state.notifies[0], 1u);
}

TEST_F(ModernPciTest, NotifyOffsetOutsideRegionRejected) {
  ASSERT_FALSE(dev.negotiate(0).is_error());
  state.q[0].notify_off = 0x1000;  // * 4 = far outside the 4 KiB notify region
  ASSERT_FALSE(dev.add_queue(0, nullptr, nullptr).is_error());
  EXPECT_EQ(dev.start().error(), Error::DeviceError);
  EXPECT_TRUE(contains(drivers::log_history(), "notify offset"));
  EXPECT_TRUE(state.status & status::kFailed);
}

TEST_F(ModernPciTest, ConfigGenerationCounter) {
  state.config[0] = 7;
  state.tear_reads = 2;
  EXPECT_EQ(dev.config_read<uint8_t>(0), 9);
}

TEST_F(ModernPciTest, MsixVectorsAreDelivered) {
  ASSERT_FALSE(dev.negotiate(0).is_error());
  QueueLog log;
  auto q = dev.add_queue(0, &QueueLog::cb, &log);
  ASSERT_FALSE(q.is_error());
  ASSERT_FALSE(dev.start().is_error());
  FakeRing ring(*q.value());
  ASSERT_FALSE(q.value()->add_in(0x2000, 64, reinterpret_cast<void*>(9)).is_error());
  q.value()->kick();
  ring.push_used(ring.pop_avail()->head, 64);
  dev.irq_queue(0);  // what the queue's MSI-X vector handler calls
  ASSERT_EQ(log.tokens.size(), 1u);
  EXPECT_EQ(log.tokens[0], reinterpret_cast<void*>(9));
  dev.irq_queue(7);  // no such queue: ignored
}

// ---- registry ----

TEST(DriverRegistry, RegisterFindReplace) {
  auto probe_a = [](Device&) -> ErrorOr<void> { return {}; };
  auto probe_b = [](Device&) -> ErrorOr<void> { return Error::Unsupported; };
  ASSERT_FALSE(register_driver(Driver{"a", 200, +probe_a}).is_error());
  ASSERT_NE(find_driver(200), nullptr);
  EXPECT_STREQ(find_driver(200)->name, "a");
  ASSERT_FALSE(register_driver(Driver{"b", 200, +probe_b}).is_error());
  EXPECT_STREQ(find_driver(200)->name, "b");
  EXPECT_EQ(find_driver(201), nullptr);
  EXPECT_EQ(register_driver(Driver{"c", 202, nullptr}).error(), Error::InvalidArgument);
}

}  // namespace
}  // namespace blimp::virtio::test
