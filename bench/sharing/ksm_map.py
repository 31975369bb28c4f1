"""Which guest pages of a running QEMU are merged by KSM (pagemap + kpageflags; root).

guest_ram(pid, size) finds the mapping that backs guest RAM (the anonymous mapping of exactly the
VM's RAM size: pc.ram / q35's ram, guest-physical address 0 at its start for VMs of at most 2 GiB,
where all RAM sits below the PCI hole) and ksm_gpfns(pid, size) returns the guest page frame
numbers whose host page is a KSM page. runs(pfns) folds them into (first, count) runs.

Used by first_seconds.py and bench_sharing.py (--map) to compare what blind and targeted KSM merge,
page by page, in guest RAM and beside it.
"""
import re
from array import array

PAGE = 4096
_PFN_MASK = (1 << 55) - 1
_KPF_KSM = 1 << 21
_KPF_ZERO_PAGE = 1 << 24  # the shared zero page or the huge zero page (kernel's kpageflags ABI)
_MAP_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ (\d+)\s*(.*)$")


def guest_ram(pid, size):
    """(start, end) of the anonymous mapping of exactly `size` bytes (guest RAM), or None."""
    best = None
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            m = _MAP_RE.match(line.strip())
            if not m:
                continue
            s, e = int(m.group(1), 16), int(m.group(2), 16)
            if e - s == size and m.group(4) == "0" and not m.group(5):
                best = (s, e)
    return best


def ram_span(pid, size):
    """(start, end) of guest RAM in QEMU's address space. QEMU splits the mapping into several
    VMAs when parts are madvised (targeted mode): /proc/PID/maps then shows pieces, so this falls
    back to the pieces' span."""
    return guest_ram(pid, size) or _ram_from_pieces(pid, size)


def ksm_gpfns(pid, size):
    """Guest PFNs (of a VM with `size` bytes of RAM below 4 GiB) backed by a KSM page."""
    return [i for i, _ in ksm_frames_in(pid, *ram_span(pid, size))]


def _pagemap(pid, start, end):
    """The pagemap entries of [start, end) of a process (root: PFNs are hidden otherwise)."""
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        pm.seek(start // PAGE * 8)
        ent = array("Q")
        ent.frombytes(pm.read((end - start) // PAGE * 8))
    return ent


def ksm_frames_in(pid, start, end):
    """[(page index from start, host PFN)] of the pages in [start, end) backed by a KSM page."""
    ent = _pagemap(pid, start, end)
    present = [(i, e & _PFN_MASK) for i, e in enumerate(ent) if e >> 63 and e & _PFN_MASK]
    out = []
    with open("/proc/kpageflags", "rb") as kf:
        for i, hpfn in present:
            kf.seek(hpfn * 8)
            fl = int.from_bytes(kf.read(8), "little")
            if fl & _KPF_KSM:
                out.append((i, hpfn))
    return out


def outside_ram(pid, size, vmas):
    """The VMAs of `vmas` ([(start, end)], e.g. ksm.mergeable_vmas) that are not guest RAM, each
    as (bytes, [host PFNs of its KSM pages]): under mem-merge=on QEMU marks every RAM block
    mergeable, its ROMs too (firmware, ACPI tables and the fw_cfg blobs beside them)."""
    ram = ram_span(pid, size)
    return [(e - s, [h for _, h in ksm_frames_in(pid, s, e)])
            for s, e in vmas if e <= ram[0] or s >= ram[1]]


def zero_mapped(pids, size):
    """Per process of `pids`, how many guest RAM pages map the host's shared zero page (or the
    huge zero page). A read of untouched memory maps it, and so does the split of a huge page:
    its zero-filled subpages go back to the zero page and their memory is freed (Linux 6.12+),
    which KSM's counters never show. The change of this count over a run is memory the run
    saved beside KSM's merges."""
    per_vm = []
    for pid in pids:
        pfns = {}
        for e in _pagemap(pid, *ram_span(pid, size)):
            if e >> 63 and e & _PFN_MASK:
                p = e & _PFN_MASK
                pfns[p] = pfns.get(p, 0) + 1
        per_vm.append(pfns)
    # The zero pages are mapped many times over: look up the flags of shared frames only.
    shared = {p for vm in per_vm for p, n in vm.items() if n > 1}
    zero = set()
    with open("/proc/kpageflags", "rb") as kf:
        for p in shared:
            kf.seek(p * 8)
            if int.from_bytes(kf.read(8), "little") & _KPF_ZERO_PAGE:
                zero.add(p)
    return [sum(n for p, n in vm.items() if p in zero) for vm in per_vm]


def guest_pages(pid, size, first, count):
    """The bytes of guest pages [first, first + count) of a running QEMU (/proc/PID/mem; root).
    Pages the host never backed read as zeros, as the guest sees them."""
    ram = ram_span(pid, size)
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(ram[0] + first * PAGE)
        return mem.read(count * PAGE)


def alike(pids, size, first, count):
    """Guest PFNs in [first, first + count) whose content is the same in every VM of `pids`,
    and those of them that are all zero: ([pfn], [pfn]). Blind KSM can merge exactly the
    former across the VMs; the pages that differ are what no hint could make shareable."""
    images = [guest_pages(p, size, first, count) for p in pids]
    same, zero = [], []
    z = bytes(PAGE)
    for i in range(count):
        pages = {img[i * PAGE:(i + 1) * PAGE] for img in images}
        if len(pages) == 1:
            same.append(first + i)
            if z in pages:
                zero.append(first + i)
    return same, zero


def _ram_from_pieces(pid, size):
    """The span of adjacent anonymous VMAs adding up to `size` bytes (a madvised RAM mapping)."""
    vmas = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            m = _MAP_RE.match(line.strip())
            if m and m.group(4) == "0" and not m.group(5):
                vmas.append((int(m.group(1), 16), int(m.group(2), 16)))
    for i in range(len(vmas)):
        s, e = vmas[i]
        j = i
        while e - s < size and j + 1 < len(vmas) and vmas[j + 1][0] == e:
            j += 1
            e = vmas[j][1]
        if e - s == size:
            return (s, e)
    raise RuntimeError(f"pid {pid}: no mapping of {size} bytes (guest RAM) found")


def runs(pfns):
    """Sorted PFNs -> [(first, count)] of consecutive runs."""
    out = []
    for p in sorted(pfns):
        if out and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out
