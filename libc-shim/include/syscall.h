// Stand-in for glibc's <syscall.h>, pulled in by libstdc++'s futex-based atomic wait.
// The guest has no futexes; nothing here is ever called.
#pragma once
