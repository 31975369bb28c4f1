// The QMP client against a fake QEMU on the other end of a socketpair.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "error_text.h"
#include "qmp.h"

using namespace hangar;
using namespace std::chrono_literals;

TEST(QmpFramer, SplitsOnNewlinesAcrossChunks) {
  QmpFramer f;
  f.feed("{\"a\":1}\r\n{\"b\"");
  EXPECT_EQ(*f.next(), "{\"a\":1}");
  EXPECT_FALSE(f.next());
  f.feed(":2}\r\n\r\n  \n{\"c\":3}\n");
  EXPECT_EQ(*f.next(), "{\"b\":2}");
  EXPECT_EQ(*f.next(), "{\"c\":3}");
  EXPECT_FALSE(f.next());
  EXPECT_EQ(f.buffered(), 0u);
}

TEST(QmpFramer, OverflowIsAnError) {
  QmpFramer f;
  std::string big(QmpFramer::kMaxMessage + 10, 'x');
  f.feed(big);
  EXPECT_FALSE(f.next());
  EXPECT_TRUE(f.overflow());
}

TEST(QmpParse, Classifies) {
  auto g = parse_qmp_message(R"({"QMP": {"version": {}, "capabilities": []}})");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->kind, QmpMessage::Kind::Greeting);
  auto r = parse_qmp_message(R"({"return": {"actual": 5}, "id": 7})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->kind, QmpMessage::Kind::Return);
  EXPECT_EQ(*r->id, 7u);
  auto e = parse_qmp_message(
      R"({"error": {"class": "DeviceNotActive", "desc": "No balloon device"}, "id": 2})");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->error_class, "DeviceNotActive");
  auto ev =
      parse_qmp_message(R"({"event": "BALLOON_CHANGE", "data": {"actual": 1}, "timestamp": {}})");
  ASSERT_TRUE(ev);
  EXPECT_EQ(ev->event, "BALLOON_CHANGE");
  for (const char* bad :
       {"nope", "[1]", "{}", R"({"return": 1, "id": "x"})", R"({"event": 5})", R"({"error": 3})"})
    EXPECT_FALSE(parse_qmp_message(bad)) << bad;
}

class FakeQemu : public ::testing::Test {
 protected:
  void SetUp() override {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    server_ = sv[1];
    fcntl(server_, F_SETFL, fcntl(server_, F_GETFL) | O_NONBLOCK);
    QmpClient::Callbacks cb;
    cb.on_ready = [this] { ++ready_; };
    cb.on_event = [this](const std::string& ev, const json& data) {
      events_.emplace_back(ev, data);
    };
    cb.on_closed = [this](const std::string& why) { closed_ = why; };
    client_ = std::make_unique<QmpClient>(cb, 200ms);
    client_->attach(sv[0]);
  }
  void TearDown() override {
    client_.reset();
    if (server_ >= 0) close(server_);
  }
  void send(const std::string& text) {
    ASSERT_EQ(write(server_, text.data(), text.size()), static_cast<ssize_t>(text.size()));
    client_->handle_readable();
  }
  // Everything the client has written, as JSON objects.
  std::vector<json> received() {
    client_->handle_writable();
    char buf[65536];
    ssize_t n = read(server_, buf, sizeof buf);
    std::vector<json> out;
    if (n <= 0) return out;
    QmpFramer f;
    f.feed(std::string_view(buf, static_cast<size_t>(n)));
    while (auto line = f.next()) out.push_back(json::parse(*line));
    return out;
  }
  void negotiate() {
    send(R"({"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": ["oob"]}})"
         "\r\n");
    auto msgs = received();
    ASSERT_EQ(msgs.size(), 1u);
    ASSERT_EQ(msgs[0]["execute"], "qmp_capabilities");
    send(R"({"return": {}, "id": )" + msgs[0]["id"].dump() + "}\r\n");
    ASSERT_EQ(client_->state(), QmpClient::State::Ready);
  }

  int server_ = -1;
  std::unique_ptr<QmpClient> client_;
  int ready_ = 0;
  std::vector<std::pair<std::string, json>> events_;
  std::string closed_;
};

TEST_F(FakeQemu, NegotiatesThenRunsQueuedCommands) {
  QmpReply got;
  client_->execute("query-balloon", [&](const QmpReply& r) { got = r; });
  EXPECT_TRUE(received().empty());  // nothing before the greeting
  negotiate();
  EXPECT_EQ(ready_, 1);
  auto msgs = received();
  ASSERT_EQ(msgs.size(), 1u);
  EXPECT_EQ(msgs[0]["execute"], "query-balloon");
  send(R"({"return": {"actual": 268435456}, "id": )" + msgs[0]["id"].dump() + "}\r\n");
  EXPECT_TRUE(got.ok);
  EXPECT_EQ(got.value["actual"], 268435456);
}

TEST_F(FakeQemu, EventsInterleaveWithRepliesAndOutOfOrderIds) {
  negotiate();
  QmpReply a, b;
  client_->execute("balloon", {{"value", 1 << 28}}, [&](const QmpReply& r) { a = r; });
  client_->execute("qom-get",
                   {{"path", "/machine/peripheral/balloon0"}, {"property", "guest-stats"}},
                   [&](const QmpReply& r) { b = r; });
  auto msgs = received();
  ASSERT_EQ(msgs.size(), 2u);
  EXPECT_EQ(msgs[0]["arguments"]["value"], 1 << 28);
  // One write carrying an event, the second reply, a split first reply.
  std::string chunk =
      R"({"event": "BALLOON_CHANGE", "data": {"actual": 200}, "timestamp": {"seconds": 1}})"
      "\r\n"
      R"({"error": {"class": "GenericError", "desc": "no such property"}, "id": )" +
      msgs[1]["id"].dump() +
      "}\r\n"
      R"({"return": {}, "id": )";
  send(chunk);
  EXPECT_EQ(events_.size(), 1u);
  EXPECT_EQ(events_[0].second["actual"], 200);
  EXPECT_FALSE(b.ok);
  EXPECT_EQ(b.error_class, "GenericError");
  EXPECT_EQ(b.error_desc, "no such property");
  EXPECT_EQ(a.error_class, "");
  send(msgs[0]["id"].dump() + "}\r\n");
  EXPECT_TRUE(a.ok);
  EXPECT_EQ(client_->pending(), 0u);
}

TEST_F(FakeQemu, TimeoutFailsOnlyTheLateCommand) {
  negotiate();
  QmpReply r;
  client_->execute("query-balloon", [&](const QmpReply& x) { r = x; });
  received();
  client_->check_timeouts(Clock::now() + 1s);
  EXPECT_EQ(r.error_class, "Timeout");
  EXPECT_EQ(client_->state(), QmpClient::State::Ready);
  // The late reply is ignored, not misattributed.
  send(R"({"return": {}, "id": 2})"
       "\r\n");
  EXPECT_EQ(client_->protocol_warnings(), 1u);
}

TEST_F(FakeQemu, PeerClosingFailsPendingCommands) {
  negotiate();
  QmpReply r;
  client_->execute("query-balloon", [&](const QmpReply& x) { r = x; });
  received();
  close(server_);
  server_ = -1;
  client_->handle_readable();
  EXPECT_EQ(client_->state(), QmpClient::State::Closed);
  EXPECT_EQ(r.error_class, "Disconnected");
  EXPECT_NE(closed_.find("closed by QEMU"), std::string::npos);
  // Commands after the close fail at once rather than hang.
  QmpReply late;
  client_->execute("cont", [&](const QmpReply& x) { late = x; });
  EXPECT_EQ(late.error_class, "Disconnected");
}

TEST_F(FakeQemu, GarbageIsAProtocolError) {
  negotiate();
  send("this is not json\r\n");
  EXPECT_EQ(client_->state(), QmpClient::State::Closed);
  EXPECT_NE(closed_.find("protocol error"), std::string::npos);
}

TEST_F(FakeQemu, RepliesBeforeGreetingAreRejected) {
  send(R"({"return": {}})"
       "\r\n");
  EXPECT_EQ(client_->state(), QmpClient::State::Closed);
  EXPECT_NE(closed_.find("greeting"), std::string::npos);
}

// QEMU 7.2 can write an event to a client it has not greeted yet (seen in CI: RESUME at the end of
// an incoming migration); the event is delivered and negotiation goes on.
TEST_F(FakeQemu, EventBeforeGreetingIsDeliveredAndNegotiationGoesOn) {
  send(R"({"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 0}})"
       "\r\n");
  EXPECT_EQ(client_->state(), QmpClient::State::AwaitGreeting);
  ASSERT_EQ(events_.size(), 1u);
  EXPECT_EQ(events_[0].first, "RESUME");
  negotiate();
  EXPECT_EQ(ready_, 1);
}

TEST_F(FakeQemu, NegotiationFailureCloses) {
  send(R"({"QMP": {}})"
       "\r\n");
  auto msgs = received();
  ASSERT_EQ(msgs.size(), 1u);
  send(R"({"error": {"class": "CommandNotFound", "desc": "nope"}, "id": )" + msgs[0]["id"].dump() +
       "}\r\n");
  EXPECT_EQ(client_->state(), QmpClient::State::Closed);
  EXPECT_NE(closed_.find("negotiation failed"), std::string::npos);
  EXPECT_EQ(ready_, 0);
}

TEST_F(FakeQemu, MissingGreetingTimesOut) {
  client_->check_timeouts(Clock::now() + 1s);
  EXPECT_EQ(client_->state(), QmpClient::State::Closed);
}

// --- Limits on what a (compromised) QEMU can send: issue 15 ---

TEST(QmpLimits, NestingDepthScanIgnoresStrings) {
  EXPECT_EQ(json_nesting_depth(R"({"a": [1, {"b": []}]})", 32), 4u);
  EXPECT_EQ(json_nesting_depth(R"({"a": "[[[[[[\"[[[[{{{{"})", 32), 1u);
  EXPECT_EQ(json_nesting_depth(R"(["\\", [[]]])", 32), 3u);
  EXPECT_EQ(json_nesting_depth("]]]]{", 32), 1u);
  EXPECT_EQ(json_nesting_depth(std::string(1000, '['), 32), 33u);  // stops at limit + 1
}

TEST(QmpLimits, DeepNestingIsRejectedWithoutACrash) {
  // 10 million levels: a DOM of this would overflow the stack when copied, dumped or destroyed.
  std::string line = "{\"return\":" + std::string(10'000'000, '[');
  std::string err = error_text(parse_qmp_message(line));
  EXPECT_NE(err, "");
  EXPECT_NE(err.find("nested deeper than"), std::string::npos) << err;
  // Balanced (and under the size cap): still refused before a DOM exists.
  line = "{\"return\":" + std::string(5'000'000, '[') + std::string(5'000'000, ']') + "}";
  err = error_text(parse_qmp_message(line));
  EXPECT_NE(err, "");
  EXPECT_NE(err.find("nested deeper than"), std::string::npos) << err;
  // At the limit is fine; one more is not.
  std::string ok = "{\"return\":" + std::string(kQmpMaxDepth - 1, '[') +
                   std::string(kQmpMaxDepth - 1, ']') + "}";
  EXPECT_EQ(error_text(parse_qmp_message(ok)), "");
  std::string deep =
      "{\"return\":" + std::string(kQmpMaxDepth, '[') + std::string(kQmpMaxDepth, ']') + "}";
  err = error_text(parse_qmp_message(deep));
  EXPECT_NE(err, "");
}

TEST(QmpLimits, LargestRealReplyFitsWithMargin) {
  // One full page of x-blimp-balloon-query-hints (kHintPageMax = 65536 hints) at its widest:
  // every number 20 digits, as QEMU prints it (", " and ": " separators).
  std::string hint =
      R"({"pfn": 18446744073709551615, "npages": 18446744073709551615, "hash": "9c2d1e0f00aa7b31", "zero": false, "marked": false})";
  std::string reply = R"({"return": {"total": 18446744073709551615, "hints": [)";
  for (int i = 0; i < 65536; ++i) reply += (i ? ", " : "") + hint;
  reply += R"(]}, "id": 18446744073709551615})";
  EXPECT_LE(reply.size() * 2, kQmpMaxMessage)
      << "worst-case hints page is " << reply.size() << " bytes";
  auto m = parse_qmp_message(reply);
  ASSERT_TRUE(m) << error_text(m);
  EXPECT_EQ(m->value["hints"].size(), 65536u);
  EXPECT_LE(json_nesting_depth(reply, kQmpMaxDepth), 4u);
}

TEST(QmpLimits, OverlongLineIsAnError) {
  std::string err;
  std::string line = "{\"return\": \"" + std::string(kQmpMaxMessage, 'x') + "\"}";
  err = error_text(parse_qmp_message(line));
  EXPECT_NE(err, "");
  EXPECT_NE(err.find("limit"), std::string::npos) << err;
  QmpFramer f;
  f.feed(line + "\r\n");
  EXPECT_FALSE(f.next());
  EXPECT_TRUE(f.overflow());
}

class FakeQemuStream : public FakeQemu {
 protected:
  // Writes a large stream in pieces the socket can hold, letting the client read in between.
  void stream(const std::string& text) {
    size_t off = 0;
    while (off < text.size() && client_->state() != QmpClient::State::Closed) {
      ssize_t n = write(server_, text.data() + off, std::min<size_t>(65536, text.size() - off));
      if (n > 0) off += static_cast<size_t>(n);
      client_->handle_readable();
    }
  }
};

TEST_F(FakeQemuStream, DeeplyNestedReplyClosesOnlyThisConnection) {
  negotiate();
  QmpReply got;
  client_->execute("query-balloon", [&](const QmpReply& r) { got = r; });
  received();
  stream("{\"return\": " + std::string(10'000'000, '[') + "\r\n");
  EXPECT_EQ(client_->state(), QmpClient::State::Closed);
  EXPECT_NE(closed_.find("nested deeper"), std::string::npos) << closed_;
  EXPECT_EQ(got.error_class, "Disconnected");
}

TEST_F(FakeQemuStream, OverlongReplyClosesOnlyThisConnection) {
  negotiate();
  QmpReply got;
  client_->execute("query-balloon", [&](const QmpReply& r) { got = r; });
  received();
  stream("{\"return\": \"" + std::string(kQmpMaxMessage + 100000, 'x'));
  EXPECT_EQ(client_->state(), QmpClient::State::Closed);
  EXPECT_NE(closed_.find("larger than"), std::string::npos) << closed_;
  EXPECT_EQ(got.error_class, "Disconnected");
}
