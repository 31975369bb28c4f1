// Run-directory rules and symlink-proof writes (issue 15: hangar writes as root).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <filesystem>
#include <fstream>

#include "error_text.h"
#include "safe_fs.h"

using namespace hangar;
namespace fs = std::filesystem;

class SafeFs : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = fs::temp_directory_path() /
            ("hangar-safefs-" + std::to_string(getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(base_);
    ASSERT_EQ(::mkdir(base_.c_str(), 0700), 0);
    target_ = base_ / "precious";
    std::ofstream(target_) << "keep me\n";
  }
  void TearDown() override { fs::remove_all(base_); }
  std::string slurp(const fs::path& p) {
    std::ifstream in(p);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  fs::path base_, target_;
};

TEST_F(SafeFs, PrivateDirectoryIsAccepted) {
  EXPECT_EQ(error_text(check_private_dir(base_.string())), "");
  const std::string run = (base_ / "a" / "run").string();
  EXPECT_EQ(error_text(make_private_dir(run)), "");
  struct stat st {};
  ASSERT_EQ(::stat(run.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ(error_text(make_private_dir(run)), "");  // an existing safe one is fine too
}

TEST_F(SafeFs, SymlinkIsRefused) {
  fs::create_directory(base_ / "real");
  ::chmod((base_ / "real").c_str(), 0700);
  fs::create_directory_symlink(base_ / "real", base_ / "link");
  std::string why = error_text(check_private_dir((base_ / "link").string()));
  EXPECT_NE(why.find("symlink"), std::string::npos) << why;
  why = error_text(make_private_dir((base_ / "link").string()));
  EXPECT_NE(why.find("symlink"), std::string::npos) << why;
}

TEST_F(SafeFs, GroupOrWorldWritableIsRefused) {
  const fs::path d = base_ / "open";
  fs::create_directory(d);
  ::chmod(d.c_str(), 0777);
  std::string why = error_text(check_private_dir(d.string()));
  EXPECT_NE(why.find("writable by everyone"), std::string::npos) << why;
  ::chmod(d.c_str(), 0770);
  why = error_text(check_private_dir(d.string()));
  EXPECT_NE(why.find("writable by its group"), std::string::npos) << why;
  ::chmod(d.c_str(), 01777);  // sticky does not make a run directory safe
  EXPECT_NE(error_text(check_private_dir(d.string())), "");
  ::chmod(d.c_str(), 0755);
  EXPECT_EQ(error_text(check_private_dir(d.string())), "");
}

TEST_F(SafeFs, ParentOthersCanRenameInIsRefused) {
  const fs::path parent = base_ / "shared";
  fs::create_directory(parent);
  ::chmod(parent.c_str(), 0777);  // no sticky bit: anyone may rename our directory away
  const fs::path d = parent / "run";
  ASSERT_EQ(::mkdir(d.c_str(), 0700), 0);
  std::string why = error_text(check_private_dir(d.string()));
  EXPECT_NE(why.find("sticky"), std::string::npos) << why;
  ::chmod(parent.c_str(), 01777);  // like /tmp: fine
  EXPECT_EQ(error_text(check_private_dir(d.string())), "");
}

TEST_F(SafeFs, WrongOwnerIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give a directory away";
  const fs::path d = base_ / "theirs";
  ASSERT_EQ(::mkdir(d.c_str(), 0700), 0);
  ASSERT_EQ(::chown(d.c_str(), 65534, 65534), 0);
  std::string why = error_text(check_private_dir(d.string()));
  EXPECT_NE(why.find("owned by uid 65534"), std::string::npos) << why;
  EXPECT_NE(error_text(make_private_dir(d.string())), "");
  // And a directory of ours inside one that belongs to someone else.
  const fs::path inner = d / "run";
  ASSERT_EQ(::mkdir(inner.c_str(), 0700), 0);
  why = error_text(check_private_dir(inner.string()));
  EXPECT_NE(why.find("owned by uid 65534"), std::string::npos) << why;
}

TEST_F(SafeFs, NoFollowWritesRefuseAPlantedSymlink) {
  const fs::path planted = base_ / "vm.qemu.log";
  fs::create_symlink(target_, planted);
  int fd = open_nofollow(planted.string(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  EXPECT_LT(fd, 0);
  EXPECT_EQ(errno, ELOOP);
  FILE* f = fopen_nofollow(planted.string(), "w");
  EXPECT_EQ(f, nullptr);
  EXPECT_EQ(slurp(target_), "keep me\n");
  // Atomic writes replace the link itself and leave its target alone.
  ASSERT_EQ(error_text(write_file_atomic(planted.string(), "new\n", 0600)), "");
  EXPECT_EQ(slurp(target_), "keep me\n");
  EXPECT_FALSE(fs::is_symlink(planted));
  EXPECT_EQ(slurp(planted), "new\n");
  struct stat st {};
  ASSERT_EQ(::stat(planted.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // A plain file is written normally.
  const fs::path plain = base_ / "plain.csv";
  f = fopen_nofollow(plain.string(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("a,b\n", f);
  std::fclose(f);
  EXPECT_EQ(slurp(plain), "a,b\n");
}
