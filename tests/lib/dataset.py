"""The `dataset` app (apps/dataset.cpp) as the sharing tests run it: one data set size, its zero
part, and the page counts KSM should show for it; the lines the app prints.

    from dataset import DATA_PAGES, NONZERO_PAGES, data_set_args, last_verify
    BlimpVM(build, app="dataset", args=["seed=42", *data_set_args("2s")], ...)
"""
import os
import re
import struct

PAGE = 4096
SIZE_MIB = 16
ZERO_MIB = 1
DATA_PAGES = SIZE_MIB * 256
ZERO_PAGES = ZERO_MIB * 256
# Pages with content. The zero run is hinted and marked too, but the host kernel maps zero-filled
# pages to its shared zero page (split THPs' zero subpages on Linux >= 6.12; KSM's
# use_zero_pages), so they never show up in KSM's counters: only the non-zero pages are counted.
NONZERO_PAGES = DATA_PAGES - ZERO_PAGES

VERIFY_RE = r"dataset: verify n=(\d+) ok=(\d+) bad=(\d+)"


def data_set_args(verify):
    """The app's arguments for the data set above, verified every `verify` (e.g. "2s")."""
    return [f"size={SIZE_MIB}M", f"zero={ZERO_MIB}M", f"verify={verify}"]


def verify_rounds(output):
    """Every `dataset: verify` line of an output, as (n, ok, bad) tuples."""
    return [tuple(int(x) for x in m) for m in re.findall(VERIFY_RE, output)]


def last_verify(output):
    """The last verify round of an output, (n, ok, bad), or None."""
    rounds = verify_rounds(output)
    return rounds[-1] if rounds else None


def kernel_readonly_pages(build):
    """Pages of the kernel image that are never written (the read-only PT_LOAD segments of
    build/blimp.elf): what sharing=all hints besides the data set, and what KSM may merge across
    any VMs booted from the same image. Read from the image, so it follows the image's size."""
    return _load_pages(build, writable=False)


def _load_pages(build, writable):
    """Pages of build/blimp.elf's PT_LOAD segments with (writable) or without PF_W."""
    with open(os.path.join(build, "blimp.elf"), "rb") as f:
        elf = f.read()
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    pages = 0
    for i in range(phnum):
        p_type, p_flags, _off, vaddr, _paddr, _filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", elf, phoff + i * phentsize)
        if p_type == 1 and bool(p_flags & 2) == writable:  # PT_LOAD, PF_W as asked
            pages += ((vaddr % PAGE) + memsz + PAGE - 1) // PAGE
    return pages


def kernel_candidate_pages(build, memory_mib):
    """Pages a guest of `memory_mib` MiB hints as WRITABLE merge candidates with sharing=all
    (docs/sharing.md): its writable image (.data and .bss, the PT_LOAD segments with PF_W of
    build/blimp.elf), the page metadata (16 bytes a page, rounded up; a little more than the
    managed pages need) and the 64 pages of firmware shadow in [0xc0000, 0x100000); an upper
    bound, as the guest leaves the zero-filled ones out."""
    metadata = (memory_mib * 256 * 16 + PAGE - 1) // PAGE
    return _load_pages(build, writable=True) + metadata + 64
