// The balloon's device-reset pieces that run on the host: the reset-listener list (who re-sends
// what after a reset, with retries) and RunSet::for_each (how recover() walks the held pages to
// tell the new device about them).
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "drivers/balloon/pfn_list.h"
#include "drivers/balloon/reset_listeners.h"

namespace {

using namespace blimp::balloon;
using blimp::Error;
using blimp::mm::PageRun;
using Result = ResetListeners::Result;

struct Client {
  std::vector<int>* log;
  int id;
  int retries = 0;  // answer Retry this many times first
  int calls = 0;
  ResetListeners* list = nullptr;  // reset this list during the call (another reset meanwhile)
  static Result fn(void* ctx) {
    auto* c = static_cast<Client*>(ctx);
    c->calls++;
    c->log->push_back(c->id);
    if (c->list) {
      c->list->device_reset();
      c->list = nullptr;
    }
    if (c->retries > 0) {
      c->retries--;
      return Result::Retry;
    }
    return Result::Done;
  }
};

TEST(balloon_reset, NothingRunsBeforeAReset) {
  std::vector<int> log;
  Client a{&log, 1};
  ResetListeners l;
  ASSERT_FALSE(l.add(Client::fn, &a).is_error());
  EXPECT_FALSE(l.pending());
  EXPECT_EQ(l.run(), 0u);
  EXPECT_TRUE(log.empty());
}

TEST(balloon_reset, EveryListenerRunsOncePerResetInOrder) {
  std::vector<int> log;
  Client a{&log, 1}, b{&log, 2};
  ResetListeners l;
  ASSERT_FALSE(l.add(Client::fn, &a).is_error());
  ASSERT_FALSE(l.add(Client::fn, &b).is_error());
  l.device_reset();
  EXPECT_TRUE(l.pending());
  EXPECT_EQ(l.run(), 0u);
  EXPECT_FALSE(l.pending());
  EXPECT_EQ(l.run(), 0u);
  l.device_reset();
  EXPECT_EQ(l.run(), 0u);
  EXPECT_EQ(log, (std::vector<int>{1, 2, 1, 2}));
  EXPECT_EQ(l.resets(), 2u);
  EXPECT_EQ(l.done(), 4u);
}

TEST(balloon_reset, RetryRunsAgainOnlyThatListener) {
  std::vector<int> log;
  Client a{&log, 1}, b{&log, 2};
  b.retries = 2;
  ResetListeners l;
  ASSERT_FALSE(l.add(Client::fn, &a).is_error());
  ASSERT_FALSE(l.add(Client::fn, &b).is_error());
  l.device_reset();
  EXPECT_EQ(l.run(), 1u);
  EXPECT_EQ(l.run(), 1u);
  EXPECT_EQ(l.run(), 0u);
  EXPECT_EQ(log, (std::vector<int>{1, 2, 2, 2}));
  EXPECT_EQ(l.gave_up(), 0u);
}

TEST(balloon_reset, GivesUpAfterMaxAttemptsAndANewResetStartsAfresh) {
  std::vector<int> log;
  Client a{&log, 1};
  a.retries = 1 << 30;
  ResetListeners l;
  ASSERT_FALSE(l.add(Client::fn, &a).is_error());
  l.device_reset();
  size_t rounds = 0;
  while (l.run()) rounds++;
  EXPECT_EQ(a.calls, int(ResetListeners::kMaxAttempts));
  EXPECT_EQ(rounds + 1, size_t(ResetListeners::kMaxAttempts));
  EXPECT_EQ(l.gave_up(), 1u);
  EXPECT_FALSE(l.pending());
  a.retries = 0;
  l.device_reset();
  EXPECT_EQ(l.run(), 0u);
  EXPECT_EQ(a.calls, int(ResetListeners::kMaxAttempts) + 1);
}

TEST(balloon_reset, AResetWhileAListenerRunsMakesItRunAgain) {
  // What it sent went to the device that was just reset.
  std::vector<int> log;
  ResetListeners l;
  Client a{&log, 1};
  a.list = &l;
  ASSERT_FALSE(l.add(Client::fn, &a).is_error());
  l.device_reset();
  EXPECT_EQ(l.run(), 1u);
  EXPECT_EQ(l.run(), 0u);
  EXPECT_EQ(a.calls, 2);
}

TEST(balloon_reset, AddRejectsNullDuplicatesAndOverflow) {
  std::vector<int> log;
  Client c[ResetListeners::kMax + 1] = {};
  ResetListeners l;
  EXPECT_EQ(l.add(nullptr, nullptr).error(), Error::InvalidArgument);
  for (size_t i = 0; i < ResetListeners::kMax; i++) {
    c[i] = Client{&log, int(i)};
    ASSERT_FALSE(l.add(Client::fn, &c[i]).is_error());
  }
  EXPECT_FALSE(l.add(Client::fn, &c[0]).is_error());  // already there
  EXPECT_EQ(l.size(), ResetListeners::kMax);
  EXPECT_EQ(l.add(Client::fn, &c[ResetListeners::kMax]).error(), Error::LimitReached);
  l.device_reset();
  l.run();
  EXPECT_EQ(log.size(), ResetListeners::kMax);
}

void* host_page(void*) { return calloc(1, 4096); }
void host_free(void* p, void*) { free(p); }

std::vector<PageRun> visit(const RunSet& s) {
  std::vector<PageRun> v;
  EXPECT_TRUE(s.for_each([&](const PageRun& r) {
    v.push_back(r);
    return true;
  }));
  return v;
}

TEST(balloon_reset, RunSetForEachVisitsEveryRunNewestFirstWithoutChangingIt) {
  RunSet s(host_page, host_free, nullptr);
  EXPECT_TRUE(visit(s).empty());
  // 700 non-adjacent runs: more than one storage page (255 runs each).
  std::vector<PageRun> pushed;
  for (uint64_t i = 0; i < 700; i++) {
    PageRun r{0x100000 + i * 0x10000, 1 + i % 5};
    pushed.push_back(r);
    ASSERT_TRUE(s.push(r));
  }
  std::vector<PageRun> seen = visit(s);
  ASSERT_EQ(seen.size(), pushed.size());
  uint64_t pages = 0;
  for (size_t i = 0; i < seen.size(); i++) {
    EXPECT_EQ(seen[i].base, pushed[pushed.size() - 1 - i].base);
    EXPECT_EQ(seen[i].pages, pushed[pushed.size() - 1 - i].pages);
    pages += seen[i].pages;
  }
  EXPECT_EQ(pages, s.pages());
  EXPECT_EQ(s.runs(), 700u);
  // After pops (part of a run, then whole runs across a storage page): still exact.
  PageRun out[400];
  size_t n = s.pop(2 + 300 * 3, out, 400);
  ASSERT_GT(n, 0u);
  pages = 0;
  for (const PageRun& r : visit(s)) pages += r.pages;
  EXPECT_EQ(pages, s.pages());
  EXPECT_EQ(visit(s).size(), s.runs());
}

TEST(balloon_reset, RunSetForEachStopsEarly) {
  RunSet s(host_page, host_free, nullptr);
  for (uint64_t i = 0; i < 10; i++) ASSERT_TRUE(s.push({i * 0x10000, 1}));
  int calls = 0;
  EXPECT_FALSE(s.for_each([&](const PageRun&) { return ++calls < 3; }));
  EXPECT_EQ(calls, 3);
}

}  // namespace
