/* Which loader entered the kernel; shared by entry.S and C++. */
#pragma once
#define BOOT_PROTOCOL_UNKNOWN 0
#define BOOT_PROTOCOL_PVH 1
#define BOOT_PROTOCOL_MULTIBOOT2 2
