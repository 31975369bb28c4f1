#include <gtest/gtest.h>
#include <unistd.h>
#include <filesystem>
#include <fstream>

#include <fcntl.h>
#include <sys/wait.h>
#include <algorithm>
#include <csignal>

#include "error_text.h"
#include "fleet.h"
#include "vm_process.h"

using namespace hangar;

namespace {
bool has(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}
int exited(int code) { return (code & 0xff) << 8; }  // a waitpid status for exit(code)
int signaled(int sig) { return sig; }
}  // namespace

TEST(QemuArgv, MicrovmWithBalloon) {
  VmSpec vm = parse_vm_flag("name=a,app=hello,memory=512M,args=\"x=1 y=2\"").value();
  LaunchPlan plan{"/usr/bin/qemu-system-x86_64",
                  false,
                  "/k/blimp.elf",
                  "/r/a.qmp",
                  "/r/a.serial.log",
                  "tcg",
                  KsmMode::Unchanged};
  auto a = build_qemu_argv(vm, plan);
  EXPECT_EQ(a[0], "/usr/bin/qemu-system-x86_64");
  EXPECT_TRUE(has(a, "microvm"));
  EXPECT_TRUE(has(a, "512M"));
  EXPECT_TRUE(has(a, "-S"));
  EXPECT_TRUE(has(a, "tcg"));
  EXPECT_TRUE(has(a, "app=hello x=1 y=2"));
  EXPECT_TRUE(has(a, "virtio-balloon-device,id=balloon0"));
  EXPECT_TRUE(has(a, "unix:/r/a.qmp,server=on,wait=off"));
  EXPECT_TRUE(has(a, "file:/r/a.serial.log"));
  EXPECT_TRUE(has(a, "isa-debug-exit,iobase=0xf4,iosize=0x04"));
  auto smp = std::find(a.begin(), a.end(), "-smp");
  ASSERT_NE(smp, a.end());
  EXPECT_EQ(*(smp + 1), "1");
}

TEST(QemuArgv, VcpusAndMultiThreadedTcg) {
  VmSpec vm = parse_vm_flag("name=c,vcpus=4").value();
  LaunchPlan plan{"q", true, "k", "s", "l", "tcg", KsmMode::Off};
  auto a = build_qemu_argv(vm, plan);
  auto smp = std::find(a.begin(), a.end(), "-smp");
  ASSERT_NE(smp, a.end());
  EXPECT_EQ(*(smp + 1), "4");
  EXPECT_TRUE(has(a, "tcg,thread=multi"));
  plan.accel = "kvm";
  EXPECT_TRUE(has(build_qemu_argv(vm, plan), "kvm"));
}

TEST(QemuArgv, PciMachineKsmModesAndProps) {
  VmSpec vm = parse_vm_flag("name=b,machine=q35").value();
  vm.balloon_props["coalesce-discard"] = "on";
  vm.qemu_args = {"-smp", "2"};
  LaunchPlan plan{"q", true, "k", "s", "l", "tcg", KsmMode::Targeted};
  auto a = build_qemu_argv(vm, plan);
  EXPECT_TRUE(has(a, "q35,mem-merge=off"));
  EXPECT_TRUE(has(a, "/usr/share/qemu/qboot.rom"));
  EXPECT_TRUE(has(a, "virtio-balloon-pci,id=balloon0,coalesce-discard=on,share-hints=on"));
  EXPECT_EQ(a.back(), "2");
  EXPECT_FALSE(has(a, "virtio-mmio.force-legacy=false"));  // q35: virtio-pci
  VmSpec micro = parse_vm_flag("name=m").value();
  EXPECT_TRUE(has(build_qemu_argv(micro, plan), "virtio-mmio.force-legacy=false"));
  plan.ksm = KsmMode::Blind;
  vm.balloon = false;
  a = build_qemu_argv(vm, plan);
  EXPECT_TRUE(has(a, "q35"));
  EXPECT_FALSE(std::any_of(a.begin(), a.end(), [](const std::string& s) {
    return s.find("balloon") != std::string::npos;
  }));
}

TEST(DecodeExit, GuestStatuses) {
  EXPECT_TRUE(decode_exit(exited(1), "", "", false).ok());  // status 0 through isa-debug-exit
  auto e = decode_exit(exited((3 << 1) | 1), "", "", false);
  EXPECT_EQ(e.kind, VmExit::Kind::GuestExit);
  EXPECT_EQ(e.guest_status, 3);
  EXPECT_FALSE(e.ok());
  e = decode_exit(exited((2 << 1) | 1),
                  "boot\nblimp: unknown app 'nope'. Available apps:\n  hello\n", "", false);
  EXPECT_EQ(e.kind, VmExit::Kind::UnknownApp);
  EXPECT_EQ(e.detail, "blimp: unknown app 'nope'");
  e = decode_exit(exited((125 << 1) | 1), "*** blimp: CPU exception 14 (page fault)\n", "", false);
  EXPECT_EQ(e.kind, VmExit::Kind::GuestFault);
  EXPECT_NE(e.detail.find("page fault"), std::string::npos);
}

TEST(DecodeExit, QemuErrorIsNotGuestStatusZero) {
  // QEMU's own exit(1) looks like isa-debug-exit's "status 0": only a guest that ran can say 0.
  auto e = decode_exit(exited(1), "", "qemu-system-x86_64: -foo: invalid option\n", false, false);
  EXPECT_EQ(e.kind, VmExit::Kind::QemuError);
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(decode_exit(exited(1), "", "", false, false).detail,
            "QEMU exited before the guest ran");
  EXPECT_TRUE(decode_exit(exited(1), "Hello from blimp!\n", "", false, false).ok());
  EXPECT_TRUE(decode_exit(exited(1), "", "", false, true).ok());
}

TEST(DecodeExit, QemuOutcomes) {
  auto e = decode_exit(exited(1 << 1), "", "qemu-system-x86_64: -foo: invalid option\n", false);
  EXPECT_EQ(e.kind, VmExit::Kind::QemuError);
  EXPECT_EQ(e.detail, "qemu-system-x86_64: -foo: invalid option");
  EXPECT_EQ(decode_exit(signaled(SIGKILL), "", "", false).kind, VmExit::Kind::Signaled);
  EXPECT_FALSE(decode_exit(signaled(SIGKILL), "", "", false).ok());
  EXPECT_EQ(decode_exit(signaled(SIGKILL), "", "", true).kind, VmExit::Kind::Stopped);
  EXPECT_EQ(decode_exit(exited(0), "", "", true).kind, VmExit::Kind::Stopped);
  EXPECT_EQ(decode_exit(exited(0), "", "", false).kind, VmExit::Kind::QemuExit);
  EXPECT_TRUE(decode_exit(exited(0), "", "", false).ok());
  auto term = decode_exit(
      exited(0), "", "qemu-system-x86_64: terminating on signal 15 from pid 99 (bash)\n", false);
  EXPECT_EQ(term.kind, VmExit::Kind::Signaled);
  EXPECT_EQ(term.signal, 15);
  EXPECT_FALSE(term.ok());
  EXPECT_EQ(
      decode_exit(exited(0), "", "qemu-system-x86_64: terminating on signal 15 from pid 1\n", true)
          .kind,
      VmExit::Kind::Stopped);
}

TEST(VmProcess, ExecFailureIsExact) {
  VmProcess p;
  const std::string err = error_text(p.spawn({"/nonexistent/qemu"}, "/dev/null"));
  EXPECT_NE(err.find("cannot execute /nonexistent/qemu: No such file or directory"),
            std::string::npos);
  EXPECT_FALSE(p.running());
}

TEST(VmProcess, SpawnReapAndRss) {
  VmProcess p;
  ASSERT_EQ(error_text(p.spawn({"/bin/sh", "-c", "exit 3"}, "/dev/null")), "");
  for (int i = 0; i < 500 && !p.try_reap(); ++i) usleep(10000);
  ASSERT_FALSE(p.running());
  EXPECT_EQ(WEXITSTATUS(p.wait_status()), 3);
  EXPECT_TRUE(read_rss(getpid()));
  EXPECT_FALSE(read_rss(p.pid()));
}

TEST(VmProcess, DestructorKillsWhatIsLeft) {
  pid_t pid;
  {
    VmProcess p;
    ASSERT_EQ(error_text(p.spawn({"/bin/sleep", "60"}, "/dev/null")), "");
    pid = p.pid();
  }
  EXPECT_NE(kill(pid, 0), 0);
}

TEST(VmProcess, CpuSecondsFromProcStat) {
  EXPECT_TRUE(read_cpu_seconds(getpid()));
  // A command name with spaces and parentheses must not shift the fields.
  char dir[] = "/tmp/hangar-proc-XXXXXX";
  ASSERT_TRUE(mkdtemp(dir));
  std::filesystem::create_directories(std::string(dir) + "/77");
  {
    std::ofstream f(std::string(dir) + "/77/stat");
    f << "77 (qemu (x) y) S 1 77 77 0 -1 4194560 100 0 0 0 " << 250 * sysconf(_SC_CLK_TCK) / 100
      << " " << 50 * sysconf(_SC_CLK_TCK) / 100 << " 0 0 20 0 3 0\n";
  }
  auto cpu = read_cpu_seconds(77, dir);
  ASSERT_TRUE(cpu);
  EXPECT_NEAR(*cpu, 3.0, 0.01);
  EXPECT_FALSE(read_cpu_seconds(78, dir));
  std::filesystem::remove_all(dir);
}

TEST(GuestStats, FromQom) {
  json v = json::parse(R"({"stats": {"stat-free-memory": 1000, "stat-available-memory": 2000,
        "stat-total-memory": 4000, "stat-major-faults": 18446744073709551615}, "last-update": 42})");
  auto g = guest_stats_from_qom(v);
  ASSERT_TRUE(g);
  EXPECT_EQ(*g->free_memory, 1000u);
  EXPECT_EQ(*g->available_memory, 2000u);
  EXPECT_FALSE(g->major_faults);  // 2^64-1: never reported
  EXPECT_EQ(g->last_update, 42u);
  EXPECT_FALSE(guest_stats_from_qom(json::parse(R"({"stats": {}, "last-update": 0})")));
  EXPECT_FALSE(guest_stats_from_qom(json::parse(R"({"stats": 5})")));
  EXPECT_FALSE(guest_stats_from_qom(json::parse("[]")));
}

TEST(WorkingSet, FromQmp) {
  // The shape of QEMU patch 0012's BlimpWorkingSet.
  json v = json::parse(R"({"ages": true, "clock-s": 40, "stable": 5000, "discarded": 7,
        "in-flight": 1, "invalid": 0, "buckets": [{"min-age-s": 0, "unused": 3, "volatile": 0},
        {"min-age-s": 32, "unused": 900, "volatile": 64}]})");
  auto ws = working_set_from_qmp(v);
  ASSERT_TRUE(ws);
  EXPECT_TRUE(ws->ages);
  EXPECT_EQ(ws->clock_s, 40u);
  EXPECT_EQ(ws->stable, 5000u);
  EXPECT_EQ(ws->discarded, 7u);
  EXPECT_EQ(ws->in_flight, 1u);
  ASSERT_EQ(ws->buckets.size(), 2u);
  EXPECT_EQ(ws->buckets[1].min_age_s, 32u);
  EXPECT_EQ(ws->buckets[1].unused, 900u);
  EXPECT_EQ(ws->buckets[1].volatile_pages, 64u);
  // Nothing registered: all zero, and still an answer (the policy then finds no ages in it).
  auto none = working_set_from_qmp(json::parse(R"({"ages": false, "clock-s": 0, "stable": 0,
        "discarded": 0, "in-flight": 0, "invalid": 0, "buckets": []})"));
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->ages);
  // Malformed: a field missing, a negative count, a bucket age past 32 bits.
  EXPECT_FALSE(working_set_from_qmp(json::parse(R"({"ages": true, "buckets": []})")));
  EXPECT_FALSE(working_set_from_qmp(json::parse(R"({"ages": true, "clock-s": 1, "stable": -1,
        "discarded": 0, "in-flight": 0, "invalid": 0, "buckets": []})")));
  EXPECT_FALSE(working_set_from_qmp(json::parse(R"({"ages": true, "clock-s": 1, "stable": 1,
        "discarded": 0, "in-flight": 0, "invalid": 0,
        "buckets": [{"min-age-s": 4294967296, "unused": 1, "volatile": 0}]})")));
  EXPECT_FALSE(working_set_from_qmp(json::parse("[]")));
}

// --- Unprivileged, sandboxed QEMUs that get their files as descriptors (issue 15) ---

TEST(QemuArgv, PassedDescriptorsAndSandbox) {
  VmSpec vm = parse_vm_flag("name=a").value();
  LaunchPlan plan{"/usr/bin/qemu-system-x86_64",
                  false,
                  "/k/blimp.elf",
                  "/r/a.qmp",
                  "/r/a.serial.log",
                  "tcg",
                  KsmMode::Unchanged};
  plan.pass_fds = true;
  plan.sandbox = true;
  auto a = build_qemu_argv(vm, plan);
  EXPECT_TRUE(has(a, "socket,id=qmp0,fd=3,server=on,wait=off"));
  EXPECT_TRUE(has(a, "chardev=qmp0,mode=control"));
  EXPECT_TRUE(has(a, "fd=4,set=1"));
  EXPECT_TRUE(has(a, "file:/dev/fdset/1"));
  EXPECT_FALSE(has(a, "-qmp"));
  EXPECT_FALSE(
      has(a, "-runas"));  // hangar drops privileges itself (elevateprivileges=deny forbids setuid)
  auto s = std::find(a.begin(), a.end(), "-sandbox");
  ASSERT_NE(s, a.end());
  EXPECT_EQ(*(s + 1), "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
  plan.sandbox = false;
  EXPECT_FALSE(has(build_qemu_argv(vm, plan), "-sandbox"));
}

TEST(VmProcess, DropsPrivilegesAndPassesDescriptors) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to drop privileges";
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("hangar-spawn-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directory(dir);
  fs::permissions(dir, fs::perms::owner_all);
  const std::string log = (dir / "out.log").string();
  int a = ::open((dir / "a").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  int b = ::open((dir / "b").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  SpawnOptions o;
  o.uid = 65534;
  o.gid = 65534;
  // Swapped on purpose: a source may sit on another's target number.
  o.fds = {{b, a}, {a, b}};
  VmProcess p;
  ASSERT_EQ(
      error_text(p.spawn({"/bin/sh", "-c",
                          "id -u; id -G; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status; umask; "
                          "echo A >&" +
                              std::to_string(b) + "; echo B >&" + std::to_string(a) + "; ls " +
                              dir.string() + " 2>&1 | head -1"},
                         log, o)),
      "");
  for (int i = 0; i < 500 && !p.try_reap(); ++i) usleep(10000);
  ::close(a);
  ::close(b);
  std::ifstream in(log);
  std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(out.rfind("65534\n65534\n", 0), 0u) << out;  // uid, and no supplementary root groups
  EXPECT_NE(out.find("CapEff:\t0000000000000000"), std::string::npos) << out;
  EXPECT_NE(out.find("0077"), std::string::npos) << out;
  EXPECT_NE(out.find("Permission denied"), std::string::npos)
      << out;  // the 0700 directory is closed to it
  auto slurp = [](const fs::path& f) {
    std::ifstream i(f);
    std::string s;
    std::getline(i, s);
    return s;
  };
  EXPECT_EQ(slurp(dir / "a"), "A");
  EXPECT_EQ(slurp(dir / "b"), "B");
  fs::remove_all(dir);
}
