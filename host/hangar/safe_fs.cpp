#include "safe_fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace hangar {

namespace {

std::string mode_text(mode_t m) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
    return buf;
}

}  // namespace

ErrorOr<void> check_private_dir(const std::string& path) {
    if (path.empty()) return Error{"empty path"};
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return Error{path + ": " + std::strerror(errno)};
    if (S_ISLNK(st.st_mode)) return Error{path + " is a symlink (give the directory it points to, if it is yours)"};
    if (!S_ISDIR(st.st_mode)) return Error{path + " is not a directory"};
    const uid_t me = ::geteuid();
    if (st.st_uid != me)
        return Error{path + " is owned by uid " + std::to_string(st.st_uid) + ", not by uid " + std::to_string(me) +
                     " (hangar's)"};
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return Error{path + " is writable by " + ((st.st_mode & S_IWOTH) ? "everyone" : "its group") + " (mode " +
                     mode_text(st.st_mode) + "; chmod go-w, or let hangar create a fresh directory)"};
    // The directories above: another user who may rename entries there could swap ours.
    char* real = ::realpath(path.c_str(), nullptr);
    if (!real) return Error{path + ": " + std::strerror(errno)};
    std::filesystem::path p(real);
    std::free(real);
    for (auto dir = p.parent_path(); !dir.empty(); dir = dir.parent_path()) {
        struct stat ds {};
        if (::stat(dir.c_str(), &ds) != 0) return Error{dir.string() + ": " + std::strerror(errno)};
        if (ds.st_uid != 0 && ds.st_uid != me)
            return Error{path + " is inside " + dir.string() + ", which is owned by uid " + std::to_string(ds.st_uid)};
        if ((ds.st_mode & (S_IWGRP | S_IWOTH)) && !(ds.st_mode & S_ISVTX))
            return Error{path + " is inside " + dir.string() +
                         ", which others may write to without the sticky bit (mode " + mode_text(ds.st_mode) + ")"};
        if (dir == dir.root_path()) break;
    }
    return {};
}

ErrorOr<void> make_private_dir(const std::string& path, mode_t mode) {
    if (path.empty()) return Error{"empty path"};
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
        if (errno != ENOENT) return Error{path + ": " + std::strerror(errno)};
        std::filesystem::path p(path);
        std::error_code ec;
        if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
        if (ec) return Error{"cannot create " + p.parent_path().string() + ": " + ec.message()};
        if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST)
            return Error{"cannot create " + path + ": " + std::strerror(errno)};
    }
    return check_private_dir(path);
}

int open_nofollow(const std::string& path, int flags, mode_t mode) {
    return ::open(path.c_str(), flags | O_NOFOLLOW | O_CLOEXEC, mode);
}

FILE* fopen_nofollow(const std::string& path, const char* mode, mode_t perm) {
    int flags = O_WRONLY | O_CREAT;
    if (mode[0] == 'a')
        flags |= O_APPEND;
    else
        flags |= O_TRUNC;
    int fd = open_nofollow(path, flags, perm);
    if (fd < 0) return nullptr;
    FILE* f = ::fdopen(fd, mode);
    if (!f) {
        int e = errno;
        ::close(fd);
        errno = e;
    }
    return f;
}

ErrorOr<void> write_file_atomic(const std::string& path, const std::string& content, mode_t perm) {
    std::string tmp = path + ".XXXXXX";
    // mkstemp: O_EXCL, mode 0600, a name nobody could have planted.
    int fd = ::mkstemp(tmp.data());
    if (fd < 0) return Error{"cannot create a temporary file beside " + path + ": " + std::strerror(errno)};
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    size_t off = 0;
    while (off < content.size()) {
        ssize_t n = ::write(fd, content.data() + off, content.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            Error error{"writing " + tmp + ": " + std::strerror(errno)};
            ::close(fd);
            ::unlink(tmp.c_str());
            return error;
        }
        off += static_cast<size_t>(n);
    }
    if (::fchmod(fd, perm) != 0 || ::fsync(fd) != 0 || ::close(fd) != 0) {
        Error error{"writing " + tmp + ": " + std::strerror(errno)};
        ::unlink(tmp.c_str());
        return error;
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        Error error{"cannot rename " + tmp + " to " + path + ": " + std::strerror(errno)};
        ::unlink(tmp.c_str());
        return error;
    }
    return {};
}

}  // namespace hangar
