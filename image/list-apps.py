#!/usr/bin/env python3
"""list-apps.py KERNEL: the apps linked into a blimp kernel image, one `NAME<TAB>SUMMARY` line
each, in link order (the order app=? lists them).

Read from the image itself, not from a hand-kept list: the linker gathers one pointer per
BLIMP_APP (apps/app.h) between __start_blimp_apps and __stop_blimp_apps (kernel/linker.ld), each
to a blimp::App {const char* name; const char* summary; main}; symbols and strings are found
through the section headers (an image without its symbol table cannot be listed). Python's
standard library only."""
import struct
import sys


def sections(elf):
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise SystemExit("list-apps.py: not a little-endian ELF64 image")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    out = []
    for i in range(shnum):
        name, stype, _flags, addr, off, size = struct.unpack_from("<IIQQQQ", elf,
                                                                  shoff + i * shentsize)
        out.append([name, stype, addr, off, size])
    strtab_off = out[shstrndx][3]
    for s in out:
        end = elf.index(b"\0", strtab_off + s[0])
        s[0] = elf[strtab_off + s[0]:end].decode()
    return out


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: list-apps.py KERNEL")
    with open(sys.argv[1], "rb") as f:
        elf = f.read()
    secs = sections(elf)
    # Allocated sections with contents (SHT_NOBITS = 8 has none): virtual address -> file offset.
    loaded = [s for s in secs if s[2] and s[1] != 8]

    def offset(addr):
        for _name, _type, base, off, size in loaded:
            if base <= addr < base + size:
                return off + addr - base
        raise SystemExit(f"list-apps.py: address {addr:#x} is in no section of {sys.argv[1]}")

    def cstring(addr):
        start = offset(addr)
        return elf[start:elf.index(b"\0", start)].decode()

    symbols = {}
    for _name, stype, _addr, off, size in secs:
        if stype != 2:  # SHT_SYMTAB; its string table is the section named .strtab
            continue
        strtab = next(s[3] for s in secs if s[0] == ".strtab")
        for i in range(off, off + size, 24):
            name, _info, _other, _shndx, value, _size = struct.unpack_from("<IBBHQQ", elf, i)
            symbols[elf[strtab + name:elf.index(b"\0", strtab + name)]] = value
    try:
        start, stop = symbols[b"__start_blimp_apps"], symbols[b"__stop_blimp_apps"]
    except KeyError:
        raise SystemExit(f"list-apps.py: {sys.argv[1]} has no __start_blimp_apps/"
                         "__stop_blimp_apps symbols (stripped?)")
    for addr in range(start, stop, 8):
        app, = struct.unpack_from("<Q", elf, offset(addr))
        name_ptr, summary_ptr = struct.unpack_from("<QQ", elf, offset(app))
        print(f"{cstring(name_ptr)}\t{cstring(summary_ptr)}")


if __name__ == "__main__":
    main()
