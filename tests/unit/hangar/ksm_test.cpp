// KSM control against a fake sysfs directory.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "error_text.h"
#include "ksm_control.h"

using namespace hangar;
namespace fs = std::filesystem;

class FakeSysfs : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("hangar-ksm-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "ksm");
    fs::create_directories(dir_ / "proc" / "37");
    put("run", "0");
    put("pages_to_scan", "100");
    put("sleep_millisecs", "20");
    put("merge_across_nodes", "1");
    put("use_zero_pages", "0");
    put("advisor_mode", "[none] scan-time");
    put("pages_shared", "7");
    put("pages_sharing", "70");
    put("general_profit", "-4096");
    std::ofstream(dir_ / "proc" / "37" / "comm") << "ksmd\n";
    std::ofstream(dir_ / "proc" / "37" / "stat") << "37 (ksmd) S 2 0 0 0 -1 2097216 0 0 0 0 150 50 "
                                                    "0 0 25 5 1 0 3 0 0 18446744073709551615\n";
  }
  void TearDown() override { fs::remove_all(dir_); }
  void put(const std::string& name, const std::string& v) {
    std::ofstream(dir_ / "ksm" / name) << v << "\n";
  }
  std::string get(const std::string& name) {
    std::ifstream in(dir_ / "ksm" / name);
    std::string s;
    std::getline(in, s);
    return s;
  }
  std::string ksm() const { return (dir_ / "ksm").string(); }
  fs::path dir_;
};

TEST_F(FakeSysfs, ApplyThenRestore) {
  {
    KsmControl k(ksm());
    KsmConfig c;
    c.mode = KsmMode::Blind;
    c.pages_to_scan = 5000;
    c.sleep_millisecs = 10;
    ASSERT_EQ(error_text(k.apply(c)), "");
    EXPECT_EQ(get("run"), "1");
    EXPECT_EQ(get("pages_to_scan"), "5000");
    EXPECT_EQ(get("sleep_millisecs"), "10");
    EXPECT_EQ(k.saved().size(), 3u);
    EXPECT_TRUE(k.restore().empty());
    EXPECT_EQ(get("run"), "0");
    EXPECT_EQ(get("pages_to_scan"), "100");
    EXPECT_EQ(get("sleep_millisecs"), "20");
  }
}

TEST_F(FakeSysfs, DestructorRestores) {
  {
    KsmControl k(ksm());
    ASSERT_EQ(error_text(k.set("pages_to_scan", "1")), "");
    ASSERT_EQ(error_text(k.set("pages_to_scan", "2")), "");  // the first value is the one kept
  }
  EXPECT_EQ(get("pages_to_scan"), "100");
}

TEST_F(FakeSysfs, SelectionFilesAndUnknownKnobs) {
  KsmControl k(ksm());
  EXPECT_EQ(*k.read("advisor_mode"), "none");
  std::string err;
  ASSERT_EQ(error_text(k.set("advisor_mode", "scan-time")), "");
  EXPECT_TRUE(k.restore().empty());
  EXPECT_EQ(get("advisor_mode"), "none");
  err = error_text(k.set("pages_shared", "0"));
  EXPECT_NE(err, "");
  EXPECT_NE(err.find("not one hangar manages"), std::string::npos);
}

TEST_F(FakeSysfs, OffModeStopsKsmd) {
  put("run", "1");
  KsmControl k(ksm());
  KsmConfig c;
  c.mode = KsmMode::Off;
  ASSERT_EQ(error_text(k.apply(c)), "");
  EXPECT_EQ(get("run"), "0");
  k.restore();
  EXPECT_EQ(get("run"), "1");
}

TEST_F(FakeSysfs, UnchangedTouchesNothing) {
  KsmControl k(ksm());
  ASSERT_EQ(error_text(k.apply(KsmConfig{})), "");
  EXPECT_TRUE(k.saved().empty());
}

TEST_F(FakeSysfs, MissingKsmIsAClearError) {
  KsmControl k((dir_ / "nope").string());
  KsmConfig c;
  c.mode = KsmMode::Blind;
  std::string err = error_text(k.apply(c));
  EXPECT_NE(err, "");
  EXPECT_NE(err.find("KSM is not available"), std::string::npos);
}

// Smart scan can keep two twins marked at different times from ever meeting (KsmConfig):
// targeted mode turns it off for its run where the kernel has the knob, and puts it back.
TEST_F(FakeSysfs, TargetedTurnsSmartScanOffAndRestoresIt) {
  put("smart_scan", "1");
  {
    KsmControl k(ksm());
    KsmConfig c;
    c.mode = KsmMode::Targeted;
    ASSERT_EQ(error_text(k.apply(c)), "");
    EXPECT_EQ(get("smart_scan"), "0");
    EXPECT_TRUE(k.restore().empty());
  }
  EXPECT_EQ(get("smart_scan"), "1");
}

TEST_F(FakeSysfs, BlindLeavesSmartScanUnlessConfigured) {
  put("smart_scan", "1");
  KsmControl k(ksm());
  KsmConfig c;
  c.mode = KsmMode::Blind;
  ASSERT_EQ(error_text(k.apply(c)), "");
  EXPECT_EQ(get("smart_scan"), "1");
  k.restore();
  c.smart_scan = 0;
  ASSERT_EQ(error_text(k.apply(c)), "");
  EXPECT_EQ(get("smart_scan"), "0");
  k.restore();
  c.mode = KsmMode::Targeted;
  c.smart_scan = 1;  // an explicit setting wins in targeted mode too
  ASSERT_EQ(error_text(k.apply(c)), "");
  EXPECT_EQ(get("smart_scan"), "1");
}

TEST_F(FakeSysfs, SmartScanOnAKernelWithoutIt) {
  KsmControl k(ksm());  // the fake sysfs has no smart_scan: a kernel before 6.7
  KsmConfig c;
  c.mode = KsmMode::Targeted;
  ASSERT_EQ(error_text(k.apply(c)), "");  // the default just has nothing to turn off
  EXPECT_FALSE(fs::exists(dir_ / "ksm" / "smart_scan"));
  k.restore();
  c.smart_scan = 0;
  std::string err = error_text(k.apply(c));
  EXPECT_NE(err.find("has no smart scan"), std::string::npos) << err;
}

TEST_F(FakeSysfs, SaveFileLetsAnotherProcessRestore) {
  const std::string save = (dir_ / "ksm-saved.json").string();
  const std::string orphan = (dir_ / "orphan.json").string();
  {
    KsmControl k(ksm());
    k.set_save_file(save);
    KsmConfig c;
    c.mode = KsmMode::Blind;
    c.pages_to_scan = 999;
    ASSERT_EQ(error_text(k.apply(c)), "");
    ASSERT_TRUE(fs::exists(save));
    // What a SIGKILLed hangar leaves behind: the file, and KSM still changed.
    fs::copy_file(save, orphan);
  }
  EXPECT_FALSE(fs::exists(save));  // a clean restore removes its file
  put("run", "1");
  put("pages_to_scan", "999");
  auto failures = KsmControl::restore_from_file(orphan, "", {}, ksm());
  EXPECT_TRUE(failures.empty());
  EXPECT_EQ(get("pages_to_scan"), "100");
  EXPECT_EQ(get("run"), "0");
  EXPECT_FALSE(fs::exists(orphan));
}

TEST_F(FakeSysfs, RestoreFileRejectsForeignSettings) {
  const std::string save = (dir_ / "evil.json").string();
  std::ofstream(save) << R"({"sysfs": ")" << ksm()
                      << R"(", "saved": [{"name": "../../etc/passwd", "value": "x"}]})";
  auto failures = KsmControl::restore_from_file(save, "", {}, ksm());
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_NE(failures[0].find("refusing"), std::string::npos);
}

TEST_F(FakeSysfs, CountersAndKsmdCpu) {
  KsmControl k(ksm(), (dir_ / "proc").string());
  auto c = k.counters();
  EXPECT_EQ(c.get("pages_shared"), 7u);
  EXPECT_EQ(c.get("pages_sharing"), 70u);
  EXPECT_EQ(c.get("general_profit"), 0u);  // negative profit clamps to 0
  ASSERT_TRUE(c.ksmd_cpu_seconds);
  EXPECT_NEAR(*c.ksmd_cpu_seconds, 200.0 / static_cast<double>(sysconf(_SC_CLK_TCK)), 1e-9);
}

// The KSM lock (shared with bench/sharing/ksm_util.py and the sharing tests): a second holder is
// another open file description of the same file, so flock conflicts even inside this process.
class KsmLockTest : public FakeSysfs {
 protected:
  std::string lock_path() const { return (dir_ / "locks" / "ksm.lock").string(); }
  // Another KSM user: true if it could take the lock right now (then it holds it until release()).
  bool other_takes() {
    fs::create_directories(dir_ / "locks");
    if (other_ < 0) other_ = ::open(lock_path().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    return ::flock(other_, LOCK_EX | LOCK_NB) == 0;
  }
  void release() {
    if (other_ >= 0) ::close(other_);
    other_ = -1;
  }
  void TearDown() override {
    release();
    FakeSysfs::TearDown();
  }
  KsmLock lock(std::chrono::milliseconds wait) {
    KsmLock l;
    l.path = lock_path();
    l.wait = wait;
    l.on_wait = [this](const std::string& m) { waits_.push_back(m); };
    return l;
  }
  KsmConfig blind() const {
    KsmConfig c;
    c.mode = KsmMode::Blind;
    c.pages_to_scan = 5000;
    return c;
  }
  int other_ = -1;
  std::vector<std::string> waits_;
};

TEST_F(KsmLockTest, HeldFromFirstChangeUntilRestored) {
  KsmControl k(ksm());
  k.set_lock(lock(std::chrono::milliseconds(0)));
  EXPECT_FALSE(k.lock_held());
  ASSERT_TRUE(other_takes());  // nothing changed yet: the lock is free
  release();
  ASSERT_EQ(error_text(k.apply(blind())), "");  // creates the lock file's directory too
  EXPECT_TRUE(k.lock_held());
  EXPECT_FALSE(other_takes());
  EXPECT_TRUE(k.restore().empty());
  EXPECT_EQ(get("run"), "0");
  EXPECT_FALSE(k.lock_held());
  EXPECT_TRUE(other_takes());
  EXPECT_TRUE(waits_.empty());
}

TEST_F(KsmLockTest, UnchangedTakesNoLock) {
  KsmControl k(ksm());
  k.set_lock(lock(std::chrono::milliseconds(0)));
  ASSERT_EQ(error_text(k.apply(KsmConfig{})), "");
  EXPECT_FALSE(k.lock_held());
}

TEST_F(KsmLockTest, DestructorRestoresThenReleases) {
  {
    KsmControl k(ksm());
    k.set_lock(lock(std::chrono::milliseconds(0)));
    ASSERT_EQ(error_text(k.apply(blind())), "");
    EXPECT_FALSE(other_takes());
  }
  EXPECT_EQ(get("pages_to_scan"), "100");
  EXPECT_TRUE(other_takes());
}

TEST_F(KsmLockTest, BusyLockIsWaitedForThenAClearError) {
  ASSERT_TRUE(other_takes());
  const std::string save = (dir_ / "ksm-saved.json").string();
  KsmControl k(ksm());
  k.set_save_file(save);
  k.set_lock(lock(std::chrono::milliseconds(300)));
  std::string err;
  const auto t0 = std::chrono::steady_clock::now();
  err = error_text(k.apply(blind()));
  EXPECT_NE(err, "");
  const auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(waited, std::chrono::milliseconds(300));
  EXPECT_LT(waited, std::chrono::seconds(5));
  // Names the lock, its holder (this process, from /proc/locks) and the way out.
  EXPECT_NE(err.find("KSM is in use"), std::string::npos) << err;
  EXPECT_NE(err.find(lock_path()), std::string::npos) << err;
  EXPECT_NE(err.find("pid " + std::to_string(getpid())), std::string::npos) << err;
  EXPECT_NE(err.find("--ksm-lock-wait"), std::string::npos) << err;
  ASSERT_EQ(waits_.size(), 1u);  // told once, not on every poll
  EXPECT_NE(waits_[0].find("waiting up to 0.3 s"), std::string::npos) << waits_[0];
  // Nothing was saved, written or persisted.
  EXPECT_TRUE(k.saved().empty());
  EXPECT_EQ(get("run"), "0");
  EXPECT_EQ(get("pages_to_scan"), "100");
  EXPECT_FALSE(fs::exists(save));
  EXPECT_FALSE(k.lock_held());
}

TEST_F(KsmLockTest, NoWaitFailsAtOnce) {
  ASSERT_TRUE(other_takes());
  KsmControl k(ksm());
  k.set_lock(lock(std::chrono::milliseconds(0)));
  std::string err;
  const auto t0 = std::chrono::steady_clock::now();
  err = error_text(k.apply(blind()));
  EXPECT_NE(err, "");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
  EXPECT_NE(err.find("held by pid"), std::string::npos) << err;
  EXPECT_EQ(err.find("still after"), std::string::npos) << err;
}

TEST_F(KsmLockTest, LockReleasedDuringTheWaitIsTaken) {
  ASSERT_TRUE(other_takes());
  std::thread releaser([this] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    release();
  });
  KsmControl k(ksm());
  k.set_lock(lock(std::chrono::seconds(20)));
  std::string err = error_text(k.apply(blind()));
  const bool ok = err.empty();
  releaser.join();
  ASSERT_TRUE(ok) << err;
  EXPECT_EQ(waits_.size(), 1u);
  EXPECT_EQ(get("pages_to_scan"), "5000");
  EXPECT_FALSE(other_takes());
}

TEST_F(KsmLockTest, CancelledWaitGivesUp) {
  ASSERT_TRUE(other_takes());
  KsmControl k(ksm());
  KsmLock l = lock(std::chrono::seconds(20));
  l.cancelled = [] { return true; };  // a ^C is pending
  k.set_lock(l);
  std::string err;
  const auto t0 = std::chrono::steady_clock::now();
  err = error_text(k.apply(blind()));
  EXPECT_NE(err, "");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  EXPECT_NE(err.find("interrupted"), std::string::npos) << err;
}

TEST_F(KsmLockTest, RestoreFromFileWaitsForTheLock) {
  const std::string save = (dir_ / "ksm-saved.json").string();
  std::ofstream(save) << R"({"sysfs": ")" << ksm()
                      << R"(", "saved": [{"name": "pages_to_scan", "value": "100"}]})";
  put("pages_to_scan", "777");
  ASSERT_TRUE(other_takes());  // someone else owns KSM now: do not write under their feet
  auto failures =
      KsmControl::restore_from_file(save, "", lock(std::chrono::milliseconds(100)), ksm());
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_NE(failures[0].find("KSM is in use"), std::string::npos) << failures[0];
  EXPECT_EQ(get("pages_to_scan"), "777");
  EXPECT_TRUE(fs::exists(save));  // kept for a later attempt
  release();
  failures = KsmControl::restore_from_file(save, "", lock(std::chrono::milliseconds(100)), ksm());
  EXPECT_TRUE(failures.empty());
  EXPECT_EQ(get("pages_to_scan"), "100");
  EXPECT_FALSE(fs::exists(save));
  EXPECT_TRUE(other_takes());  // released afterwards
}

TEST_F(KsmLockTest, LockPathResolution) {
  EXPECT_EQ(resolve_ksm_lock_path("auto", "/sys/kernel/mm/ksm"), kKsmLockPath);
  EXPECT_EQ(resolve_ksm_lock_path("auto", "/sys/kernel/mm/ksm/"), kKsmLockPath);
  EXPECT_EQ(resolve_ksm_lock_path("auto", ksm()), "");  // a fake sysfs is private
  EXPECT_EQ(resolve_ksm_lock_path("none", "/sys/kernel/mm/ksm"), "");
  EXPECT_EQ(resolve_ksm_lock_path("", "/sys/kernel/mm/ksm"), "");
  EXPECT_EQ(resolve_ksm_lock_path("/tmp/x.lock", ksm()), "/tmp/x.lock");
}

TEST_F(KsmLockTest, HolderFromProcLocks) {
  EXPECT_EQ(describe_lock_holder((dir_ / "nope").string()), "");
  ASSERT_TRUE(other_takes());
  const std::string who = describe_lock_holder(lock_path());
  EXPECT_EQ(who.rfind("pid " + std::to_string(getpid()) + " (", 0), 0u) << who;
  release();
  EXPECT_EQ(describe_lock_holder(lock_path()), "");
}

// --- Stale saves, the real-sysfs-only restore, and the save file's safety (issue 15) ---

namespace {
// A pid that no longer runs: a child that exited and was reaped.
int dead_pid() {
  pid_t p = fork();
  if (p == 0) _exit(0);
  int ws;
  waitpid(p, &ws, 0);
  return p;
}
}  // namespace

class StaleSave : public KsmLockTest {
 protected:
  std::string save() const { return (dir_ / "ksm-saved.json").string(); }
  void write_save(int pid, const std::string& entries) {
    std::ofstream(save()) << R"({"sysfs": ")" << ksm() << R"(", "owner": "hangar", "pid": )" << pid
                          << R"(, "saved": [)" << entries << "]}";
  }
};

TEST_F(StaleSave, RestoredBeforeTheFirstChange) {
  // A hangar SIGKILLed with pages_to_scan 777 and run 1 in place (it found 100 and 0).
  put("pages_to_scan", "777");
  put("run", "1");
  write_save(dead_pid(),
             R"({"name": "pages_to_scan", "value": "100"}, {"name": "run", "value": "0"})");
  std::vector<std::string> notes;
  {
    KsmControl k(ksm());
    k.set_save_file(save());
    KsmLock l = lock(std::chrono::milliseconds(0));
    l.on_note = [&](const std::string& m) { notes.push_back(m); };
    k.set_lock(l);
    ASSERT_EQ(error_text(k.apply(blind())), "");
    EXPECT_EQ(get("pages_to_scan"), "5000");
    // What this run saved are the values from before the killed run, not its leftovers.
    ASSERT_FALSE(k.saved().empty());
    for (const auto& [name, value] : k.saved()) {
      if (name == "pages_to_scan") {
        EXPECT_EQ(value, "100");
      }
    }
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_NE(notes[0].find("no longer running"), std::string::npos) << notes[0];
    EXPECT_NE(notes[0].find("pages_to_scan=100"), std::string::npos) << notes[0];
  }
  EXPECT_EQ(get("pages_to_scan"), "100");
  EXPECT_EQ(get("run"), "0");
  EXPECT_FALSE(fs::exists(save()));
}

TEST_F(StaleSave, UnchangedRunRecoversToo) {
  put("pages_to_scan", "777");
  write_save(dead_pid(), R"({"name": "pages_to_scan", "value": "100"})");
  KsmControl k(ksm());
  k.set_save_file(save());
  k.set_lock(lock(std::chrono::milliseconds(0)));
  ASSERT_EQ(error_text(k.recover_stale()), "");
  EXPECT_EQ(get("pages_to_scan"), "100");
  EXPECT_FALSE(fs::exists(save()));
  EXPECT_FALSE(k.lock_held());  // nothing of ours to guard
  EXPECT_TRUE(other_takes());
}

TEST_F(StaleSave, LiveOwnerIsLeftAlone) {
  pid_t child = fork();
  if (child == 0) {
    pause();
    _exit(0);
  }
  put("pages_to_scan", "777");
  write_save(child, R"({"name": "pages_to_scan", "value": "100"})");
  KsmControl k(ksm());
  k.set_save_file(save());
  k.set_lock(lock(std::chrono::milliseconds(0)));
  std::string err = error_text(k.apply(blind()));
  EXPECT_NE(err, "");
  EXPECT_NE(err.find("still runs"), std::string::npos) << err;
  EXPECT_EQ(get("pages_to_scan"), "777");
  EXPECT_TRUE(fs::exists(save()));
  EXPECT_FALSE(k.lock_held());
  auto failures = KsmControl::restore_from_file(save(), "", {}, ksm());
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_NE(failures[0].find("still running"), std::string::npos) << failures[0];
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  // Once it is gone, the same file is stale.
  EXPECT_TRUE(KsmControl::restore_from_file(save(), "", {}, ksm()).empty());
  EXPECT_EQ(get("pages_to_scan"), "100");
}

TEST_F(StaleSave, RestoreWritesOnlyToTheKsmDirectory) {
  // A save file that names another directory (or a command line that does) steers nothing.
  fs::create_directories(dir_ / "elsewhere");
  std::ofstream(dir_ / "elsewhere" / "run") << "keep\n";
  std::ofstream(save()) << R"({"sysfs": ")" << (dir_ / "elsewhere").string()
                        << R"(", "saved": [{"name": "run", "value": "0"}]})";
  auto failures = KsmControl::restore_from_file(save(), "", {}, ksm());
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_NE(failures[0].find("refusing to write"), std::string::npos) << failures[0];
  // The command's own default: only the kernel's directory.
  failures = KsmControl::restore_from_file(save(), (dir_ / "elsewhere").string());
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_NE(failures[0].find("only /sys/kernel/mm/ksm"), std::string::npos) << failures[0];
  std::ifstream in(dir_ / "elsewhere" / "run");
  std::string v;
  std::getline(in, v);
  EXPECT_EQ(v, "keep");
  // Values are knob words, nothing else.
  write_save(dead_pid(), R"({"name": "run", "value": "1\n2"})");
  failures = KsmControl::restore_from_file(save(), "", {}, ksm());
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_NE(failures[0].find("refusing"), std::string::npos) << failures[0];
}

TEST_F(StaleSave, SaveFileIsPrivateAndNamesItsOwner) {
  // A symlink planted where the save file goes is replaced, never written through.
  const fs::path victim = dir_ / "victim";
  std::ofstream(victim) << "keep\n";
  fs::create_symlink(victim, save());
  KsmControl k(ksm());
  k.set_save_file(save());
  std::string err;
  // The planted link is not a save file: the stale check refuses it rather than follow it.
  err = error_text(k.apply(blind()));
  EXPECT_NE(err, "");
  fs::remove(save());
  ASSERT_EQ(error_text(k.apply(blind())), "");
  struct stat st {};
  ASSERT_EQ(::lstat(save().c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::ifstream in(save());
  auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["pid"], getpid());
  EXPECT_TRUE(j.contains("pid_start"));
  std::ifstream v(victim);
  std::string line;
  std::getline(v, line);
  EXPECT_EQ(line, "keep");
}

TEST(KsmPaths, StateIsRootsOwn) {
  EXPECT_EQ(std::string(kKsmLockPath), "/run/blimp/ksm.lock");
  EXPECT_EQ(std::string(kKsmSaveFile), "/run/blimp/ksm-saved.json");
  EXPECT_EQ(ksm_save_path("/sys/kernel/mm/ksm", "/r"), kKsmSaveFile);
  EXPECT_EQ(ksm_save_path("/tmp/fake", "/r"), "/r/ksm-saved.json");
  EXPECT_TRUE(process_start_time(getpid()).has_value());
  EXPECT_FALSE(process_start_time(dead_pid()).has_value());
}
